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

            var python = RunPython(runs, scratch);
            var rows = new List<Row>
            {
                new("Process start()+join(), empty target: ours Spawn vs Python spawn", ours["start_join_spawn_ms"], python.GetProperty("start_join_spawn_ms").GetDouble(), "ms", "<= 0.5x"),
                new("Process start()+join(), empty target: ours Spawn vs Python forkserver", ours["start_join_spawn_ms"], python.GetProperty("start_join_forkserver_ms").GetDouble(), "ms", "-"),
                new("Process start()+join(), empty target: ours Prespawn vs Python spawn", ours["start_join_prespawn_ms"], python.GetProperty("start_join_spawn_ms").GetDouble(), "ms", "<= 0.5x"),
                new("Process start()+join(), empty target: ours Prespawn vs Python forkserver", ours["start_join_prespawn_ms"], python.GetProperty("start_join_forkserver_ms").GetDouble(), "ms", "-"),
                new("Idle child resident memory: ours vs Python spawn", ours["idle_child_mib"], python.GetProperty("idle_child_spawn_mib").GetDouble(), "MiB", "-"),
            };
            Print(rows, python.GetProperty("python").GetString()!, runs);
            Save(rows);
            return 0;
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
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

    private static JsonElement RunPython(int runs, string scratch)
    {
        var script = Path.Combine(AppContext.BaseDirectory, "python", "bench_process.py");
        var start = new ProcessStartInfo("python3") { RedirectStandardOutput = true };
        start.ArgumentList.Add(script);
        start.ArgumentList.Add(runs.ToString(CultureInfo.InvariantCulture));
        start.ArgumentList.Add(scratch);
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

    private sealed record Row(string Workload, double Ours, double Python, string Unit, string Target)
    {
        public double Ratio => Ours / Python;
    }

    private static void Print(List<Row> rows, string pythonVersion, int runs)
    {
        Console.WriteLine($"Multiprocessing for .NET vs Python {pythonVersion} multiprocessing, median of {runs} after 3 warm-ups, same run");
        Console.WriteLine();
        Console.WriteLine("| workload | ours | Python | unit | ratio (ours/Python) | target |");
        Console.WriteLine("|---|---:|---:|---|---:|---|");
        foreach (var row in rows)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {row.Workload} | {row.Ours:F1} | {row.Python:F1} | {row.Unit} | {row.Ratio:F2}x | {row.Target} |"));
        }
    }

    private static void Save(List<Row> rows)
    {
        var dir = Path.Combine(AppContext.BaseDirectory, "results");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "latest.json");
        File.WriteAllText(path, JsonSerializer.Serialize(rows.Select(r => new { r.Workload, r.Ours, r.Python, r.Unit, r.Ratio, r.Target })));
        Console.WriteLine();
        Console.WriteLine($"results written to {path}");
    }
}
