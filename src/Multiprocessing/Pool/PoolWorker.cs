using System.Diagnostics;
using System.Runtime.InteropServices;
using Multiprocessing.Platform;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing.Pool;

/// <summary>
/// The loop a pool worker runs in its child process: read frames, run chunks in order, write results. Results are
/// flushed when no complete frame is left to run, so a burst of small tasks costs one write for many answers.
/// </summary>
internal static class PoolWorker
{
    /// <summary>The target of every pool worker process.</summary>
    internal static void Run(Action? initializer)
    {
        int fd = ChildRuntime.Channel;
        if (fd < 0) throw new InvalidOperationException("a pool worker must be started with its own channel");
        initializer?.Invoke();

        var runners = new Dictionary<int, IChunkRunner>();
        var output = new WireWriter(64 * 1024);
        var input = new byte[64 * 1024];
        int filled = 0;
        var frames = new List<(int Offset, int Length)>();
        var reader = new WireReader(ReadOnlyMemory<byte>.Empty);
        var stats = new WorkerCounters();
        long idleSince = Stopwatch.GetTimestamp();
        long lastFlush = idleSince;

        // Answers go out when nothing is left to run, or at least every millisecond while a long batch runs, so
        // progress, IMap streaming and load balancing stay live without a write per tiny task.
        long flushInterval = Stopwatch.Frequency / 1000;

        // Tell the pool this worker is up: a task's time limit counts from here, not from the process start.
        Flush(fd, output, stats);

        while (true)
        {
            int n = OsProcess.ReadSome(fd, input.AsSpan(filled));

            // End of stream: the pool is gone (even SIGKILLed); there is nobody to answer.
            if (n == 0) OsProcess.ExitNow(0);
            filled += n;
            stats.IdleTicks += Stopwatch.GetTimestamp() - idleSince;

            frames.Clear();
            int consumed = PoolProtocol.CompleteFrames(input.AsSpan(0, filled), frames);
            foreach (var (offset, length) in frames)
            {
                reader.Reset(input.AsMemory(offset, length));
                switch (reader.Byte())
                {
                    case PoolProtocol.Define:
                        int id = reader.Int32();
                        runners[id] = ChunkRunner.Create(DelegateSerializer.Deserialize(reader.Bytes()));
                        break;
                    case PoolProtocol.Forget:
                        runners.Remove(reader.Int32());
                        break;
                    case PoolProtocol.Run:
                        // A chunk with a time limit is timed by the pool from the previous answer: send it now.
                        if (reader.Byte() != 0 && output.Length > 0)
                        {
                            Flush(fd, output, stats);
                            lastFlush = Stopwatch.GetTimestamp();
                        }

                        RunChunk(reader, runners, output, stats);
                        if (Stopwatch.GetTimestamp() - lastFlush > flushInterval)
                        {
                            Flush(fd, output, stats);
                            lastFlush = Stopwatch.GetTimestamp();
                        }

                        break;
                    case PoolProtocol.Shutdown:
                        Flush(fd, output, stats);
                        return;
                    default:
                        throw new InvalidDataException("unknown pool frame");
                }
            }

            // Keep a partial frame; grow for frames larger than the buffer.
            filled -= consumed;
            if (filled > 0) input.AsSpan(consumed, filled).CopyTo(input);
            if (filled == input.Length) Array.Resize(ref input, input.Length * 2);
            if (frames.Count > 0 && filled == 0)
            {
                Flush(fd, output, stats);
                lastFlush = Stopwatch.GetTimestamp();
            }

            idleSince = Stopwatch.GetTimestamp();
        }
    }

    private static void RunChunk(WireReader reader, Dictionary<int, IChunkRunner> runners, WireWriter output, WorkerCounters stats)
    {
        int callId = reader.Int32();
        int chunk = reader.Int32();
        int funcId = reader.Int32();
        int count = reader.Int32();
        int frame = output.BeginFrame(PoolProtocol.Result);
        output.Int32(callId);
        output.Int32(chunk);
        output.Int32(count);
        runners[funcId].Run(reader, count, output, stats);
        output.EndFrame(frame);
        stats.Tasks++;
    }

    private static void Flush(int fd, WireWriter output, WorkerCounters stats)
    {
        int frame = output.BeginFrame(PoolProtocol.Stats);
        output.Int64(stats.Tasks);
        output.Int64(stats.BusyTicks);
        output.Int64(stats.IdleTicks);
        output.Int64(stats.SerializeTicks);
        output.EndFrame(frame);
        OsProcess.WriteAll(fd, output.WrittenSpan);
        output.Reset();
    }
}

/// <summary>What a worker measures about itself, in Stopwatch ticks.</summary>
internal sealed class WorkerCounters
{
    internal long Tasks;
    internal long BusyTicks;
    internal long IdleTicks;
    internal long SerializeTicks;
}

/// <summary>Runs a chunk of items through one registered function.</summary>
internal interface IChunkRunner
{
    void Run(WireReader input, int count, WireWriter output, WorkerCounters stats);
}

internal static class ChunkRunner
{
    /// <summary>Builds the typed runner for a function once, so items are decoded and results encoded without
    /// reflection.</summary>
    private static readonly Dictionary<Type, Func<Delegate, IChunkRunner>> Factories = [];

    internal static IChunkRunner Create(Delegate function)
    {
        var type = function.GetType();
        if (!Factories.TryGetValue(type, out var factory))
        {
            // Reflection once per delegate type; ApplyAsync in a loop defines a new function per task.
            var definition = type.IsGenericType ? type.GetGenericTypeDefinition() : null;
            var maker = definition == typeof(Func<,>) ? nameof(MakeMap) : definition == typeof(Func<>) ? nameof(MakeApply)
                : throw new NotSupportedException($"a pool function of type {type} cannot be run");
            factory = typeof(ChunkRunner).GetMethod(maker, System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic)!
                .MakeGenericMethod(type.GetGenericArguments())
                .CreateDelegate<Func<Delegate, IChunkRunner>>();
            Factories[type] = factory;
        }

        return factory(function);
    }

    private static IChunkRunner MakeMap<T, TResult>(Delegate function) => new MapRunner<T, TResult>((Func<T, TResult>)function);

    private static IChunkRunner MakeApply<TResult>(Delegate function) => new ApplyRunner<TResult>((Func<TResult>)function);

    /// <summary>Writes one item's outcome; a result that cannot be encoded becomes that item's failure.</summary>
    internal static void WriteOutcome<TResult>(WireWriter output, TResult result, Exception? error, WorkerCounters stats)
    {
        long start = Stopwatch.GetTimestamp();
        if (error is null)
        {
            int mark = output.Length;
            try
            {
                output.Byte(PoolProtocol.ItemOk);
                ItemCodec<TResult>.Write(output, result);
                stats.SerializeTicks += Stopwatch.GetTimestamp() - start;
                return;
            }
            catch (Exception ex)
            {
                output.Truncate(mark);
                error = new System.Runtime.Serialization.SerializationException(
                    $"The task's result of type {result?.GetType().FullName ?? typeof(TResult).FullName} cannot be sent back to the parent: {ex.Message}", ex);
            }
        }

        output.Byte(PoolProtocol.ItemFailed);
        output.String(error.GetType().FullName);
        output.String(error.Message);
        output.String(error.StackTrace ?? string.Empty);
        output.String(error.ToString());
        stats.SerializeTicks += Stopwatch.GetTimestamp() - start;
    }
}

internal sealed class MapRunner<T, TResult>(Func<T, TResult> function) : IChunkRunner
{
    private T[] _items = [];
    private TResult[] _results = [];
    private Exception?[] _errors = [];

    public void Run(WireReader input, int count, WireWriter output, WorkerCounters stats)
    {
        if (_items.Length < count)
        {
            _items = new T[count];
            _results = new TResult[count];
            _errors = new Exception?[count];
        }

        long start = Stopwatch.GetTimestamp();
        int decoded = count;
        Exception? decodeError = null;
        if (ItemCodec<T>.Blittable)
        {
            ItemCodec<T>.ReadMany(input, _items.AsSpan(0, count));
        }
        else
        {
            for (int i = 0; i < count; i++)
            {
                try
                {
                    _items[i] = ItemCodec<T>.Read(input);
                }
                catch (Exception ex)
                {
                    // The rest of the chunk cannot be located any more; every remaining item fails with this.
                    decodeError = ex;
                    decoded = i;
                    break;
                }
            }
        }

        long ran = Stopwatch.GetTimestamp();
        stats.SerializeTicks += ran - start;
        int failures = count - decoded;
        for (int i = 0; i < count; i++)
        {
            _errors[i] = i < decoded ? null : decodeError;
            if (i >= decoded) continue;
            try
            {
                _results[i] = function(_items[i]);
            }
            catch (Exception ex)
            {
                _errors[i] = ex;
                failures++;
            }
        }

        long done = Stopwatch.GetTimestamp();
        stats.BusyTicks += done - ran;
        if (failures == 0 && ItemCodec<TResult>.Blittable)
        {
            output.Byte(PoolProtocol.Bulk);
            ItemCodec<TResult>.WriteMany(output, _results.AsSpan(0, count));
            stats.SerializeTicks += Stopwatch.GetTimestamp() - done;
        }
        else
        {
            output.Byte(PoolProtocol.PerItem);
            for (int i = 0; i < count; i++) ChunkRunner.WriteOutcome(output, _results[i], _errors[i], stats);
        }

        // Results are held only for the length of a chunk.
        Array.Clear(_items, 0, count);
        Array.Clear(_results, 0, count);
    }
}

internal sealed class ApplyRunner<TResult>(Func<TResult> function) : IChunkRunner
{
    public void Run(WireReader input, int count, WireWriter output, WorkerCounters stats)
    {
        output.Byte(PoolProtocol.PerItem);
        long start = Stopwatch.GetTimestamp();
        TResult result = default!;
        Exception? error = null;
        try
        {
            result = function();
        }
        catch (Exception ex)
        {
            error = ex;
        }

        stats.BusyTicks += Stopwatch.GetTimestamp() - start;
        ChunkRunner.WriteOutcome(output, result, error, stats);
    }
}
