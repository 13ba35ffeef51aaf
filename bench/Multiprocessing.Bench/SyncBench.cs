using System.Diagnostics;

namespace Multiprocessing.Bench;

/// <summary>The synchronization and shared-memory workloads, measured as bench/python/bench_sync.py measures them.</summary>
internal static class SyncBench
{
    private const int Doubles = 10_000_000;

    internal static Dictionary<string, double> Run(int runs)
    {
        var result = new Dictionary<string, double>();

        using (var lck = Mp.Lock())
        {
            const int n = 10_000_000;
            for (int i = 0; i < 100_000; i++)
            {
                lck.Acquire();
                lck.Release();
            }

            var clock = Stopwatch.StartNew();
            for (int i = 0; i < n; i++)
            {
                lck.Acquire();
                lck.Release();
            }

            result["lock_pairs_per_s"] = n / clock.Elapsed.TotalSeconds;
        }

        result["contended_ops_per_s"] = 100_000 / PoolBench.Median(runs, ContendedIncrements);
        result["event_ping_pong_us"] = EventPingPong(10_000) * 1e6;

        var alloc = new double[runs];
        var total = new double[runs];
        for (int r = 0; r < runs; r++)
        {
            var clock = Stopwatch.StartNew();
            using var arr = Mp.RawArray<double>(Doubles);
            alloc[r] = clock.Elapsed.TotalMilliseconds;
            using (var child = Mp.Process(() => arr.AsSpan().Fill(1.0)))
            {
                child.Start();
                child.Join();
            }

            double sum = Sum(arr.AsSpan());
            total[r] = clock.Elapsed.TotalMilliseconds;
            if (sum != Doubles) throw new InvalidOperationException($"the child's fill summed to {sum}");
        }

        result["array_80mb_child_fill_parent_sum_ms"] = PoolBench.MedianOf(total);
        result["array_80mb_alloc_ms"] = PoolBench.MedianOf(alloc);
        return result;
    }

    private static double ContendedIncrements()
    {
        // The same form as Python's side: a raw value and a plain lock.
        using var value = Mp.RawValue(0);
        using var lck = Mp.Lock();
        using var go = Mp.Event();
        using var done = Mp.Semaphore(0);
        var children = Enumerable.Range(0, 2).Select(_ => Mp.Process(() =>
        {
            go.Wait();
            for (int i = 0; i < 50_000; i++)
            {
                using (lck.Acquire()) value.Value += 1;
            }

            done.Release();
        })).ToList();
        children.ForEach(c => c.Start());
        var clock = Stopwatch.StartNew();
        go.Set();
        done.Acquire();
        done.Acquire();
        double seconds = clock.Elapsed.TotalSeconds;
        children.ForEach(c => c.Join());
        if (value.Value != 100_000) throw new InvalidOperationException($"lost updates: {value.Value}");
        return seconds;
    }

    private static double EventPingPong(int rounds)
    {
        using var ping = Mp.Event();
        using var pong = Mp.Event();
        using var child = Mp.Process(() =>
        {
            for (int i = 0; i < rounds; i++)
            {
                ping.Wait();
                ping.Clear();
                pong.Set();
            }
        });
        child.Start();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < rounds; i++)
        {
            ping.Set();
            pong.Wait();
            pong.Clear();
        }

        double perRound = clock.Elapsed.TotalSeconds / rounds;
        child.Join();
        return perRound;
    }

    internal static double Sum(ReadOnlySpan<double> values)
    {
        // Four independent vector sums: a single running total waits on each add's latency.
        var vectors = System.Runtime.InteropServices.MemoryMarshal.Cast<double, System.Numerics.Vector<double>>(values);
        System.Numerics.Vector<double> a = default, b = default, c = default, d = default;
        int i = 0;
        for (; i + 4 <= vectors.Length; i += 4)
        {
            a += vectors[i];
            b += vectors[i + 1];
            c += vectors[i + 2];
            d += vectors[i + 3];
        }

        for (; i < vectors.Length; i++) a += vectors[i];
        double total = System.Numerics.Vector.Sum(a + b + c + d);
        for (int k = vectors.Length * System.Numerics.Vector<double>.Count; k < values.Length; k++) total += values[k];
        return total;
    }
}
