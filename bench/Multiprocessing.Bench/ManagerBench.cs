using System.Diagnostics;
using System.Globalization;
using System.Net;

namespace Multiprocessing.Bench;

/// <summary>The manager workloads, measured as bench/python/bench_manager.py measures them: a child works through
/// proxies and times its own loop (one warm-up, then <c>runs</c> repetitions); the parent checks the result.</summary>
internal static class ManagerBench
{
    private const int DictRounds = 5_000;
    private const int ListAppends = 10_000;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(120);

    internal static int RunComparison(string[] args)
    {
        int runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 5;
        Mp.SetStartMethod(StartMethod.Spawn);
        var ours = Run(runs);
        var python = Compare.RunPython("bench_manager.py", [runs.ToString(CultureInfo.InvariantCulture)]);
        double Py(string key) => python.GetProperty(key).GetDouble();
        List<Compare.Row> rows =
        [
            new("Manager dict: a child does 5,000 x (d[i] = i; d[i])", ours["dict"], Py("dict_set_get_ops_per_s"), "ops/s", ">= 5x"),
            new("Manager list: a child appends 10,000 items", ours["list"], Py("list_append_ops_per_s"), "ops/s", ">= 5x"),
            new("Manager dict over loopback TCP, same workload", ours["dict_tcp"], Py("dict_set_get_ops_per_s_tcp"), "ops/s", "-"),
            new("Manager list over loopback TCP, same workload", ours["list_tcp"], Py("list_append_ops_per_s_tcp"), "ops/s", "-"),
        ];
        Compare.Print(rows, python.GetProperty("python").GetString()!, runs, warmUps: 1);
        Compare.Save(rows, "latest-managers.json");
        return 0;
    }

    internal static Dictionary<string, double> Run(int runs)
    {
        var result = new Dictionary<string, double>();
        using (var local = Mp.Manager())
        {
            RunOn(local, runs, result, string.Empty);
        }

        using (var tcp = Mp.Manager(new IPEndPoint(IPAddress.Loopback, 0), "bench-key"u8.ToArray()))
        {
            RunOn(tcp, runs, result, "_tcp");
        }

        return result;
    }

    private static void RunOn(ProcessManager manager, int runs, Dictionary<string, double> result, string suffix)
    {
        using var d = manager.Dict<int, int>();
        result["dict" + suffix] = 2 * DictRounds / Measure(runs, conn => DictWorker(d, conn, runs + 1));
        if (d.Count != DictRounds) throw new InvalidOperationException("the dict is incomplete");
        using var list = manager.List<int>();
        result["list" + suffix] = ListAppends / Measure(runs, conn => ListWorker(list, conn, runs + 1));
        if (list.Count != ListAppends) throw new InvalidOperationException("the list is incomplete");
    }

    private static double Measure(int runs, Action<Connection<double>> worker)
    {
        var (mine, theirs) = Mp.Pipe<double>();
        using (mine)
        using (var child = Mp.Process(() => worker(theirs)))
        {
            child.Start();
            theirs.Close();
            var samples = new double[runs + 1];
            for (int i = 0; i < samples.Length; i++) samples[i] = mine.Recv(Patience);
            if (!child.Join(Patience) || child.ExitCode != 0) throw new InvalidOperationException($"the benchmark child failed ({child.ExitCode})");
            return PoolBench.MedianOf(samples[1..]);
        }
    }

    private static void DictWorker(ManagedDict<int, int> d, Connection<double> conn, int reps)
    {
        for (int r = 0; r < reps; r++)
        {
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < DictRounds; i++)
            {
                d[i] = i;
                if (d[i] != i) throw new InvalidOperationException("wrong value");
            }

            conn.Send(Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
    }

    private static void ListWorker(ManagedList<int> list, Connection<double> conn, int reps)
    {
        for (int r = 0; r < reps; r++)
        {
            list.Clear();
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < ListAppends; i++) list.Add(i);
            conn.Send(Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
    }
}
