using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Multiprocessing.Bench;

/// <summary>The pipe and queue workloads, measured as bench/python/bench_pipe_queue.py measures them. Apart from the
/// 80 MB transfer, one child serves a warm-up and <c>runs</c> timed repetitions after it has said it is ready, so
/// child start is not timed; every repetition checks what arrived.</summary>
internal static class PipeQueueBench
{
    private const int PingPongRounds = 10_000;
    private const int BlobCount = 200;
    private const int BlobSize = 1 << 20;
    private const int QueueInts = 100_000;
    private const int QueueBlobs = 10_000;
    private const int QueueBlobSize = 1024;
    private const int Doubles = 10_000_000;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    internal static Dictionary<string, double> Run(int runs)
    {
        var result = new Dictionary<string, double>
        {
            ["pipe_ping_pong_us"] = PingPongUs(runs),
            ["pipe_bytes_1mib_mib_per_s"] = PipeBlobsMibPerSecond(runs),
        };

        using (var queue = Mp.Queue<int>())
        using (var go = Mp.Semaphore(0))
        {
            result["queue_100k_ints_per_s"] = QueueInts / IntTransferSeconds(runs, go, timeout => queue.Get(timeout), () => IntProducer(queue, go, runs + 1));
        }

        using (var queue = Mp.SimpleQueue<int>())
        using (var go = Mp.Semaphore(0))
        {
            result["simple_queue_100k_ints_per_s"] = QueueInts / IntTransferSeconds(runs, go, timeout => queue.Get(timeout), () => IntProducer(queue, go, runs + 1));
        }

        double seconds = QueueBlobSeconds(runs);
        result["queue_1kib_msgs_per_s"] = QueueBlobs / seconds;
        result["queue_1kib_mib_per_s"] = (double)QueueBlobs * QueueBlobSize / (1 << 20) / seconds;
        result["pipe_80mb_child_send_parent_sum_ms"] = PoolBench.Median(runs, DoublesThroughPipeMs);
        return result;
    }

    private static double PingPongUs(int runs)
    {
        var (mine, theirs) = Mp.Pipe<int>();
        using (mine)
        using (var child = Mp.Process(() => Echo(theirs)))
        {
            child.Start();
            theirs.Close();
            AwaitReady(mine.Recv(Patience) == -1);
            var samples = new double[runs + 1];
            for (int r = 0; r < samples.Length; r++)
            {
                long total = 0;
                long start = Stopwatch.GetTimestamp();
                for (int i = 0; i < PingPongRounds; i++)
                {
                    mine.Send(i);
                    total += mine.Recv();
                }

                samples[r] = Stopwatch.GetElapsedTime(start).TotalMicroseconds / PingPongRounds;
                long expected = (long)PingPongRounds * (PingPongRounds + 1) / 2;
                if (total != expected) throw new InvalidOperationException($"ping-pong replies summed to {total}, not {expected}");
            }

            mine.Send(-1);
            Finish(child);
            return PoolBench.MedianOf(samples[1..]);
        }
    }

    private static void Echo(Connection<int> conn)
    {
        conn.Send(-1);
        while (true)
        {
            int x = conn.Recv();
            if (x < 0) return;
            conn.Send(x + 1);
        }
    }

    private static double PipeBlobsMibPerSecond(int runs)
    {
        var (mine, theirs) = Mp.Pipe<int>();
        using (mine)
        using (var child = Mp.Process(() => BlobSender(theirs)))
        {
            child.Start();
            theirs.Close();
            AwaitReady(mine.Recv(Patience) == -1);
            var samples = new double[runs + 1];
            for (int r = 0; r < samples.Length; r++)
            {
                long bytes = 0, stamps = 0;
                int badTails = 0;
                long start = Stopwatch.GetTimestamp();
                mine.Send(r);
                for (int i = 0; i < BlobCount; i++)
                {
                    var message = mine.RecvBytes();
                    bytes += message.Length;
                    stamps += BinaryPrimitives.ReadInt32LittleEndian(message);
                    if (message[^1] != unchecked((byte)(BlobSize - 1))) badTails++;
                }

                samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
                Check(bytes, (long)BlobCount * BlobSize, stamps, (long)BlobCount * (BlobCount - 1) / 2, badTails);
            }

            mine.Send(-1);
            Finish(child);
            return (double)BlobCount * BlobSize / (1 << 20) / PoolBench.MedianOf(samples[1..]);
        }
    }

    private static void BlobSender(Connection<int> conn)
    {
        var payload = new byte[BlobSize];
        for (int k = 0; k < payload.Length; k++) payload[k] = unchecked((byte)k);
        conn.Send(-1);
        while (conn.Recv() >= 0)
        {
            for (int i = 0; i < BlobCount; i++)
            {
                BinaryPrimitives.WriteInt32LittleEndian(payload, i);
                conn.SendBytes(payload);
            }
        }
    }

    private static double IntTransferSeconds(int runs, ProcessSemaphore go, Func<TimeSpan?, int> get, Action produce)
    {
        using var child = Mp.Process(produce);
        child.Start();
        AwaitReady(get(Patience) == -1);
        var samples = new double[runs + 1];
        for (int r = 0; r < samples.Length; r++)
        {
            long total = 0;
            long start = Stopwatch.GetTimestamp();
            go.Release();
            for (int i = 0; i < QueueInts; i++) total += get(null);
            samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            long expected = (long)QueueInts * (QueueInts - 1) / 2;
            if (total != expected) throw new InvalidOperationException($"the queue's items summed to {total}, not {expected}");
        }

        Finish(child);
        return PoolBench.MedianOf(samples[1..]);
    }

    private static void IntProducer(ProcessQueue<int> queue, ProcessSemaphore go, int reps)
    {
        queue.Put(-1);
        for (int r = 0; r < reps; r++)
        {
            go.Acquire();
            for (int i = 0; i < QueueInts; i++) queue.Put(i);
        }
    }

    private static void IntProducer(SimpleProcessQueue<int> queue, ProcessSemaphore go, int reps)
    {
        queue.Put(-1);
        for (int r = 0; r < reps; r++)
        {
            go.Acquire();
            for (int i = 0; i < QueueInts; i++) queue.Put(i);
        }
    }

    private static double QueueBlobSeconds(int runs)
    {
        using var queue = Mp.Queue<byte[]>();
        using var go = Mp.Semaphore(0);
        using var child = Mp.Process(() => BlobProducer(queue, go, runs + 1));
        child.Start();
        AwaitReady(queue.Get(Patience).Length == 0);
        var samples = new double[runs + 1];
        for (int r = 0; r < samples.Length; r++)
        {
            long bytes = 0, stamps = 0;
            int badTails = 0;
            long start = Stopwatch.GetTimestamp();
            go.Release();
            for (int i = 0; i < QueueBlobs; i++)
            {
                var item = queue.Get();
                bytes += item.Length;
                stamps += BinaryPrimitives.ReadInt32LittleEndian(item);
                if (item[^1] != unchecked((byte)(QueueBlobSize - 1))) badTails++;
            }

            samples[r] = Stopwatch.GetElapsedTime(start).TotalSeconds;
            Check(bytes, (long)QueueBlobs * QueueBlobSize, stamps, (long)QueueBlobs * (QueueBlobs - 1) / 2, badTails);
        }

        Finish(child);
        return PoolBench.MedianOf(samples[1..]);
    }

    private static void BlobProducer(ProcessQueue<byte[]> queue, ProcessSemaphore go, int reps)
    {
        var pattern = new byte[QueueBlobSize];
        for (int k = 0; k < pattern.Length; k++) pattern[k] = unchecked((byte)k);
        queue.Put([]);
        for (int r = 0; r < reps; r++)
        {
            go.Acquire();
            for (int i = 0; i < QueueBlobs; i++)
            {
                // A fresh array each time, as Python's side makes a fresh bytes object.
                var item = (byte[])pattern.Clone();
                BinaryPrimitives.WriteInt32LittleEndian(item, i);
                queue.Put(item);
            }
        }
    }

    private static double DoublesThroughPipeMs()
    {
        long start = Stopwatch.GetTimestamp();
        var (mine, theirs) = Mp.Pipe<int>();
        byte[] data;
        using (mine)
        using (var child = Mp.Process(() => MakeAndSendDoubles(theirs)))
        {
            child.Start();
            theirs.Close();
            data = mine.RecvBytes(timeout: Patience);
            double sum = SyncBench.Sum(MemoryMarshal.Cast<byte, double>(data));
            Finish(child);
            double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            if (data.Length != Doubles * sizeof(double) || sum != Doubles)
                throw new InvalidOperationException($"received {data.Length} bytes summing to {sum}, not {Doubles * sizeof(double)} bytes summing to {Doubles}");
            return ms;
        }
    }

    private static void MakeAndSendDoubles(Connection<int> conn)
    {
        var values = new double[Doubles];
        values.AsSpan().Fill(1.0);
        conn.SendBytes(MemoryMarshal.AsBytes(values.AsSpan()));
    }

    private static void AwaitReady(bool ready)
    {
        if (!ready) throw new InvalidOperationException("the benchmark child's first message was not its ready signal");
    }

    private static void Finish(ChildProcess child)
    {
        if (!child.Join(Patience)) throw new TimeoutException("the benchmark child did not exit");
        if (child.ExitCode != 0) throw new InvalidOperationException($"benchmark child exited with {child.ExitCode}");
    }

    private static void Check(long bytes, long expectedBytes, long stamps, long expectedStamps, int badTails)
    {
        if (bytes != expectedBytes || stamps != expectedStamps || badTails != 0)
            throw new InvalidOperationException($"received {bytes} bytes (expected {expectedBytes}), stamps summing to {stamps} (expected {expectedStamps}), {badTails} messages with a wrong last byte");
    }
}
