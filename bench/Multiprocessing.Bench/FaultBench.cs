using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Multiprocessing.Bench;

/// <summary>
/// `... -- faults [runs] [guard s]`: a worker SIGKILLs itself under the 4th of 8 tasks (IMap, chunksize 1), here and
/// in Python's multiprocessing.Pool and concurrent.futures.ProcessPoolExecutor (bench/python/bench_faults.py), in
/// one run: the time from the kill to the failed task's exception, the other results delivered, and whether the pool
/// still takes work.
/// </summary>
internal static class FaultBench
{
    private const int Items = 8;
    private const int Victim = 3;
    private const int SigKill = 9;

    internal static int Run(string[] args)
    {
        int runs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 5;
        double guard = args.Length > 1 ? double.Parse(args[1], CultureInfo.InvariantCulture) : 10;
        Mp.SetStartMethod(StartMethod.Spawn);
        var ours = Ours(runs);
        var python = Compare.RunPython("bench_faults.py", [runs.ToString(CultureInfo.InvariantCulture), guard.ToString(CultureInfo.InvariantCulture)]);
        string Py(string key) => python.GetProperty(key).ToString();
        bool PyBool(string key) => python.GetProperty(key).GetBoolean();
        double executorMs = python.GetProperty("executor_latency_ms").GetDouble();

        Console.WriteLine($"A worker SIGKILLed under the 4th of 8 tasks (imap, chunksize 1, 2 workers): ours vs Python {Py("python")}, spawn, median of {runs}, same run");
        Console.WriteLine();
        Console.WriteLine("| | ours | Python Pool | ratio | Python ProcessPoolExecutor | ratio | target |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---|");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| kill to the failed task's exception | {ours.LatencyMs:F1} ms ({ours.Failure}) | {(Py("pool_outcome") == "hung" ? $"hung (guard {guard:F0} s)" : Py("pool_outcome"))} | " +
            $"{(Py("pool_outcome") == "hung" ? $"< {ours.LatencyMs / (guard * 1000):F4}x" : "-")} | {executorMs:F1} ms ({Py("executor_outcome")}) | {ours.LatencyMs / executorMs:F2}x | < 500 ms |"));
        Console.WriteLine($"| other tasks' results delivered | {ours.Delivered} of {Items - 1} | {Py("pool_delivered")} of {Items - 1}, then nothing | - | {Py("executor_delivered")} of {Items - 1}, the rest BrokenProcessPool | - | all |");
        Console.WriteLine($"| pool takes new work afterwards | {Yes(ours.UsableAfter)} | {Yes(PyBool("pool_usable_after"))} (the lost task's result never comes) | - | {Yes(PyBool("executor_usable_after"))} (broken for good) | - | yes |");
        return 0;
    }

    private static string Yes(bool value) => value ? "yes" : "no";

    private sealed record Outcome(double LatencyMs, string Failure, int Delivered, bool UsableAfter);

    private static Outcome Ours(int runs)
    {
        using var pool = Mp.Pool(2);
        using var diedAt = Mp.RawArray<long>(1);
        pool.Map(PoolBench.F, Enumerable.Range(0, 4));
        var latencies = new double[runs];
        string failure = "none";
        int delivered = 0;
        for (int run = 0; run < runs; run++)
        {
            diedAt[0] = 0;
            delivered = 0;
            long? failedAt = null;
            using var results = pool.IMap(x => Task(x, diedAt), Enumerable.Range(0, Items)).GetEnumerator();
            for (int position = 0; position <= Items; position++)
            {
                try
                {
                    if (!results.MoveNext()) break;
                    delivered++;
                }
                catch (WorkerLostException ex)
                {
                    failedAt = Stopwatch.GetTimestamp();
                    failure = $"WorkerLostException, exit code {ex.ExitCode}";
                }
            }

            if (failedAt is null) throw new InvalidOperationException("the victim's task did not fail");
            latencies[run] = Stopwatch.GetElapsedTime(diedAt[0], failedAt.Value).TotalMilliseconds;
        }

        bool usable = pool.Map(PoolBench.F, Enumerable.Range(0, 10)).SequenceEqual(Enumerable.Range(0, 10).Select(PoolBench.F));
        return new Outcome(PoolBench.MedianOf(latencies), failure, delivered, usable);
    }

    private static int Task(int x, SharedArray<long> diedAt)
    {
        if (x == Victim)
        {
            // Both clocks are CLOCK_MONOTONIC, so the parent can subtract this from its own timestamp.
            diedAt[0] = Stopwatch.GetTimestamp();
            Kill(Environment.ProcessId, SigKill);
        }

        return PoolBench.F(x);
    }

    [DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int signal);
}
