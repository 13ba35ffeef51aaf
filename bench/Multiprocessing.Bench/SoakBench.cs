using System.Diagnostics;
using System.Globalization;

namespace Multiprocessing.Bench;

/// <summary>
/// `... -- soak [tasks]`: a million tiny tasks through IMapUnordered with chunksize 1 and maxTasksPerChild 1000 on
/// Pool(2), so about a thousand workers come and go. Samples the parent's working set, managed heap, open
/// descriptors, memory mappings, threads and unreaped children as it goes; all must stay flat, and no zombie may remain.
/// </summary>
internal static class SoakBench
{
    private const int MaxTasksPerChild = 1000;

    internal static int Run(string[] args)
    {
        long tasks = args.Length > 0 ? long.Parse(args[0], CultureInfo.InvariantCulture) : 1_000_000;
        long every = Math.Max(1, tasks / 10);
        Mp.SetStartMethod(StartMethod.Spawn);
        Console.WriteLine($"Soak: {tasks:N0} tasks, IMapUnordered chunksize 1, Pool(2), maxTasksPerChild {MaxTasksPerChild}, {Environment.ProcessorCount} cores");
        Console.WriteLine();
        Console.WriteLine("| tasks done | elapsed s | tasks/s | working set MiB | managed heap MiB (live / committed) | open fds | mappings | threads | zombies | live children |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");

        var pool = Mp.Pool(2, maxTasksPerChild: MaxTasksPerChild);

        // Warm-up: the first workers, the JIT, the first serializers; the baseline is taken after it.
        if (pool.IMapUnordered(Square, Sequence(10 * MaxTasksPerChild)).Sum() != SumOfSquares(10 * MaxTasksPerChild))
            throw new InvalidOperationException("warm-up lost results");
        var clock = Stopwatch.StartNew();
        Print(0, clock);

        long done = 0, sum = 0;
        foreach (var square in pool.IMapUnordered(Square, Sequence(tasks)))
        {
            sum += square;
            if (++done % every == 0) Print(done, clock);
        }

        var elapsed = clock.Elapsed;
        long expected = SumOfSquares(tasks);
        if (done != tasks || sum != expected) throw new InvalidOperationException($"the soak lost results: {done} of {tasks}, sum {sum} (expected {expected})");

        pool.Close();
        pool.Join();
        pool.Dispose();
        Console.WriteLine();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{tasks:N0} tasks in {elapsed.TotalSeconds:F1} s ({tasks / elapsed.TotalSeconds:N0} tasks/s), every result checked"));
        var after = Sample.Take();
        Console.WriteLine($"after Close+Join: {after.Fds} open fds, {after.Zombies} zombies, {after.Children} live children, working set {after.WorkingSetMib:F1} MiB");
        return 0;
    }

    private static long Square(long x) => x * x;

    private static IEnumerable<long> Sequence(long count)
    {
        for (long i = 0; i < count; i++) yield return i;
    }

    // Wraps past 2^63 like the running sum does.
    private static long SumOfSquares(long n) => (long)((Int128)(n - 1) * n * (2 * n - 1) / 6);

    private static void Print(long done, Stopwatch clock)
    {
        var s = Sample.Take();
        double seconds = clock.Elapsed.TotalSeconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {done:N0} | {seconds:F1} | {(seconds > 0 ? done / seconds : 0):N0} | {s.WorkingSetMib:F1} | {s.HeapMib:F1} / {s.CommittedMib:F1} | {s.Fds} | {s.Mappings} | {s.Threads} | {s.Zombies} | {s.Children} |"));
    }

    private readonly record struct Sample(double WorkingSetMib, double HeapMib, double CommittedMib, int Fds, int Mappings, int Threads, int Zombies, int Children)
    {
        internal static Sample Take()
        {
            // A full collection first, so that the heap figure is what is live, not what is pending collection.
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            int self = Environment.ProcessId, zombies = 0, children = 0;
            foreach (var dir in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
                string stat;
                try
                {
                    stat = File.ReadAllText(Path.Combine(dir, "stat"));
                }
                catch (IOException)
                {
                    continue;
                }

                // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(fields[1], CultureInfo.InvariantCulture) != self) continue;
                if (fields[0] == "Z") zombies++;
                else children++;
            }

            using var me = Process.GetCurrentProcess();
            return new Sample(
                Compare.RssMib(self),
                GC.GetTotalMemory(forceFullCollection: false) / (1024.0 * 1024),
                GC.GetGCMemoryInfo().TotalCommittedBytes / (1024.0 * 1024),
                Directory.GetFiles("/proc/self/fd").Length,
                File.ReadLines("/proc/self/maps").Count(),
                me.Threads.Count,
                zombies,
                children);
        }
    }
}
