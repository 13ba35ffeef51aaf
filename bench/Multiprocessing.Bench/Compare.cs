using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Multiprocessing;

namespace Multiprocessing.Bench;

/// <summary>Runs each workload here and in Python's multiprocessing in the same run, and prints both with their
/// ratio. Figures move 10-70% between runs on a shared 2-core VM; only ratios from one run are comparable.</summary>
internal static class Compare
{
    private const int Runs = 20;

    internal static int Run(string[] args)
    {
        int runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : Runs;
        var scratch = Directory.CreateTempSubdirectory("mp-bench-").FullName;
        try
        {
            var ours = new Dictionary<string, double>
            {
                ["start_join_spawn_ms"] = StartJoinMs(StartMethod.Spawn, runs),
                ["start_join_prespawn_ms"] = StartJoinMs(StartMethod.Prespawn, runs),
                ["idle_child_mib"] = IdleChildMib(scratch),
            };
            Mp.SetStartMethod(StartMethod.Spawn);

            var python = RunPython("bench_process.py", [runs.ToString(CultureInfo.InvariantCulture), scratch]);
            var pool = PoolBench.Run(5);
            var pythonPool = RunPython("bench_pool.py", ["5"]);
            var sync = SyncBench.Run(5);
            var pythonSync = RunPython("bench_sync.py", ["5"]);
            var pipes = PipeQueueBench.Run(5);
            var pythonPipes = RunPython("bench_pipe_queue.py", ["5"]);
            double Py(string key) => pythonPool.GetProperty(key).GetDouble();
            double PySync(string key) => pythonSync.GetProperty(key).GetDouble();
            var rows = new List<Row>
            {
                new("Process start()+join(), empty target: ours Spawn vs Python spawn", ours["start_join_spawn_ms"], python.GetProperty("start_join_spawn_ms").GetDouble(), "ms", "<= 0.5x"),
                new("Process start()+join(), empty target: ours Spawn vs Python forkserver", ours["start_join_spawn_ms"], python.GetProperty("start_join_forkserver_ms").GetDouble(), "ms", "-"),
                new("Process start()+join(), empty target: ours Prespawn vs Python spawn", ours["start_join_prespawn_ms"], python.GetProperty("start_join_spawn_ms").GetDouble(), "ms", "<= 0.5x"),
                new("Process start()+join(), empty target: ours Prespawn vs Python forkserver", ours["start_join_prespawn_ms"], python.GetProperty("start_join_forkserver_ms").GetDouble(), "ms", "-"),
                new("Idle child resident memory: ours vs Python spawn", ours["idle_child_mib"], python.GetProperty("idle_child_spawn_mib").GetDouble(), "MiB", "-"),
                new("Pool(2) created, map over 2 items, Close+Join", pool["pool_create_map_teardown_ms"], Py("pool_create_map_teardown_ms"), "ms", "<= 0.5x"),
                new("Pool(2) created ..., ours Prespawn vs Python spawn", pool["pool_create_map_teardown_prespawn_ms"], Py("pool_create_map_teardown_ms"), "ms", "<= 0.5x"),
                new("Pool(2) created ..., ours Prespawn vs Python forkserver", pool["pool_create_map_teardown_prespawn_ms"], Py("pool_create_map_teardown_forkserver_ms"), "ms", "-"),
                new("Pool.Map 200,000 ints, default chunksize", pool["map_200k_default"], Py("map_200k_default"), "tasks/s", ">= 3x"),
                new("Pool.Map 20,000 ints, chunksize 1", pool["map_20k_cs1"], Py("map_20k_cs1"), "tasks/s", ">= 10x"),
                new("Pool.IMap 20,000 ints, chunksize 1", pool["imap_20k_cs1"], Py("imap_20k_cs1"), "tasks/s", ">= 10x"),
                new("Pool.IMapUnordered 20,000 ints, chunksize 1", pool["imap_unordered_20k_cs1"], Py("imap_unordered_20k_cs1"), "tasks/s", ">= 10x"),
                new("Pool.Map 200,000 ints, chunksize 1000", pool["map_200k_cs1000"], Py("map_200k_cs1000"), "tasks/s", ">= 3x"),
                new("Pool.IMap 200,000 ints, chunksize 1000", pool["imap_200k_cs1000"], Py("imap_200k_cs1000"), "tasks/s", ">= 3x"),
                new("Pool.IMapUnordered 200,000 ints, chunksize 1000", pool["imap_unordered_200k_cs1000"], Py("imap_unordered_200k_cs1000"), "tasks/s", ">= 3x"),
                new("20,000 x ApplyAsync, then Get all", pool["apply_async_20k"], Py("apply_async_20k"), "tasks/s", ">= 10x"),
                new("Apply round trip, median of 2,000", pool["apply_round_trip_us"], Py("apply_round_trip_us"), "us", "<= 0.1x"),
                new("CPU-bound speedup of Pool(2) over serial, 100 x ~20 ms", pool["cpu_speedup"], Py("cpu_speedup"), "x", ">= 1.9 (ours)"),
                new("The same work on 2 threads of one process (the machine's ceiling; no Python figure)", pool["cpu_speedup_threads"], double.NaN, "x", "-"),
                new("Lock Acquire+Release, one process, uncontended", sync["lock_pairs_per_s"], PySync("lock_pairs_per_s"), "pairs/s", ">= 2x"),
                new("2 processes x 50,000 (lock; value += 1), final value checked", sync["contended_ops_per_s"], PySync("contended_ops_per_s"), "ops/s", ">= 2x"),
                new("Event ping-pong between two processes, 10,000 rounds", sync["event_ping_pong_us"], PySync("event_ping_pong_us"), "us", "-"),
                new("80 MB of doubles: allocated, filled by a new child, summed by the parent", sync["array_80mb_child_fill_parent_sum_ms"], PySync("array_80mb_child_fill_parent_sum_ms"), "ms", "<= 0.5x"),
                new("80 MB of doubles: allocation alone", sync["array_80mb_alloc_ms"], PySync("array_80mb_alloc_ms"), "ms", "-"),
            };
            rows.AddRange(PipeQueueRows(pipes, pythonPipes));
            Print(rows, python.GetProperty("python").GetString()!, runs);
            Save(rows);
            return 0;
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    /// <summary>`... -- pipes [runs]`: only the pipe and queue workloads, both sides, in the same table.</summary>
    internal static int RunPipes(string[] args)
    {
        int runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 5;
        Mp.SetStartMethod(StartMethod.Spawn);
        var pipes = PipeQueueBench.Run(runs);
        var python = RunPython("bench_pipe_queue.py", [runs.ToString(CultureInfo.InvariantCulture)]);
        var rows = PipeQueueRows(pipes, python);
        Print(rows, python.GetProperty("python").GetString()!, runs, warmUps: 1);
        Save(rows, "latest-pipes.json");
        return 0;
    }

    private static List<Row> PipeQueueRows(Dictionary<string, double> ours, JsonElement python)
    {
        double Py(string key) => python.GetProperty(key).GetDouble();
        return
        [
            new("Pipe ping-pong of a small int, 10,000 round trips", ours["pipe_ping_pong_us"], Py("pipe_ping_pong_us"), "us", "<= 0.2x"),
            new("Pipe SendBytes/RecvBytes 200 x 1 MiB, child to parent", ours["pipe_bytes_1mib_mib_per_s"], Py("pipe_bytes_1mib_mib_per_s"), "MiB/s", ">= 3x"),
            new("Queue: a child puts 100,000 small ints, parent gets them", ours["queue_100k_ints_per_s"], Py("queue_100k_ints_per_s"), "msgs/s", ">= 10x"),
            new("Queue: a child puts 10,000 x 1 KiB byte arrays, parent gets them", ours["queue_1kib_msgs_per_s"], Py("queue_1kib_msgs_per_s"), "msgs/s", "-"),
            new("Queue: a child puts 10,000 x 1 KiB byte arrays, parent gets them", ours["queue_1kib_mib_per_s"], Py("queue_1kib_mib_per_s"), "MiB/s", "-"),
            new("SimpleQueue: a child puts 100,000 small ints, parent gets them", ours["simple_queue_100k_ints_per_s"], Py("simple_queue_100k_ints_per_s"), "msgs/s", "-"),
            new("80 MB of doubles: made by a new child, sent through a Pipe as bytes, summed by the parent", ours["pipe_80mb_child_send_parent_sum_ms"], Py("pipe_80mb_child_send_parent_sum_ms"), "ms", "<= 0.5x"),
        ];
    }

    private static double StartJoinMs(StartMethod method, int runs)
    {
        Mp.SetStartMethod(method);
        for (int i = 0; i < 3; i++) StartJoin();
        var samples = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            var clock = Stopwatch.StartNew();
            StartJoin();
            samples[i] = clock.Elapsed.TotalMilliseconds;
        }

        return Median(samples);
    }

    private static void StartJoin()
    {
        var p = Mp.Process(Empty);
        p.Start();
        p.Join();
        if (p.ExitCode != 0) throw new InvalidOperationException($"benchmark child exited with {p.ExitCode}");
    }

    private static void Empty()
    {
    }

    private static double IdleChildMib(string scratch)
    {
        Mp.SetStartMethod(StartMethod.Spawn);
        var ready = Path.Combine(scratch, "cs-ready");
        var p = Mp.Process(() =>
        {
            File.WriteAllText(ready, "ready");
            Thread.Sleep(Timeout.Infinite);
        });
        p.Start();
        var deadline = Stopwatch.StartNew();
        while (!File.Exists(ready))
        {
            if (deadline.Elapsed > TimeSpan.FromSeconds(30)) throw new TimeoutException("idle child never became ready");
            Thread.Sleep(5);
        }

        try
        {
            return RssMib(p.Pid!.Value);
        }
        finally
        {
            p.Kill();
            p.Join();
        }
    }

    internal static double RssMib(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024;
        }

        return double.NaN;
    }

    internal static JsonElement RunPython(string name, string[] args)
    {
        var script = Path.Combine(AppContext.BaseDirectory, "python", name);
        var start = new ProcessStartInfo("python3") { RedirectStandardOutput = true };
        start.ArgumentList.Add(script);
        foreach (var arg in args) start.ArgumentList.Add(arg);
        using var python = System.Diagnostics.Process.Start(start) ?? throw new InvalidOperationException("python3 did not start");
        var output = python.StandardOutput.ReadToEnd();
        python.WaitForExit();
        if (python.ExitCode != 0) throw new InvalidOperationException($"python3 {script} exited with {python.ExitCode}");
        return JsonDocument.Parse(output).RootElement.Clone();
    }

    private static double Median(double[] samples)
    {
        Array.Sort(samples);
        return samples[samples.Length / 2];
    }

    internal sealed record Row(string Workload, double Ours, double Python, string Unit, string Target)
    {
        public double Ratio => Ours / Python;
    }

    internal static void Print(List<Row> rows, string pythonVersion, int runs, int warmUps = 3)
    {
        Console.WriteLine($"Multiprocessing for .NET vs Python {pythonVersion} multiprocessing, median of {runs} after {warmUps} warm-up{(warmUps == 1 ? "" : "s")}, same run");
        Console.WriteLine();
        Console.WriteLine("| workload | ours | Python | unit | ratio (ours/Python) | target |");
        Console.WriteLine("|---|---:|---:|---|---:|---|");
        foreach (var row in rows)
        {
            // NaN: a figure Python has no counterpart for.
            string ratio = double.IsNaN(row.Ratio) ? "-" : string.Create(CultureInfo.InvariantCulture, $"{row.Ratio:F2}x");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {row.Workload} | {Format(row.Ours)} | {Format(row.Python)} | {row.Unit} | {ratio} | {row.Target} |"));
        }
    }

    private static string Format(double value) => value switch
    {
        double.NaN => "-",
        >= 1_000_000 => string.Create(CultureInfo.InvariantCulture, $"{value / 1_000_000:F2} M"),
        >= 10_000 => string.Create(CultureInfo.InvariantCulture, $"{value / 1_000:F0} k"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{value:F1}"),
    };

    /// <summary>How results files are written (and read by bench/Chart): NaN stands for "no Python figure".</summary>
    internal static readonly JsonSerializerOptions JsonFormat = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>Writes the rows beside the binary and, when the bench runs from a checkout, to the tracked
    /// bench/results/ as well, which is what bench/Chart draws and what a commit can carry.</summary>
    internal static void Save(List<Row> rows, string fileName = "latest.json")
    {
        var json = JsonSerializer.Serialize(rows.Select(r => new { r.Workload, r.Ours, r.Python, r.Unit, r.Ratio, r.Target }), JsonFormat);
        Console.WriteLine();
        string[] dirs = Checkout.Root() is { } root
            ? [Path.Combine(AppContext.BaseDirectory, "results"), Path.Combine(root, "bench", "results")]
            : [Path.Combine(AppContext.BaseDirectory, "results")];
        foreach (var dir in dirs)
        {
            Directory.CreateDirectory(dir);
            var path = Path.Combine(dir, fileName);
            File.WriteAllText(path, json);
            Console.WriteLine($"results written to {path}");
        }
    }
}
