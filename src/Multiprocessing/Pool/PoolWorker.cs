using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Multiprocessing.Platform;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;
using Multiprocessing.Synchronization;

namespace Multiprocessing.Pool;

/// <summary>
/// The loop a pool worker runs in its child process: read frames, run chunks in order, write results. Results are
/// flushed when no complete frame is left to run, so a burst of small tasks costs one write for many answers; until
/// then a copy of each answer waits on the worker's <see cref="WorkerBoard"/>, where the pool finds it if the worker
/// dies first.
/// </summary>
internal static class PoolWorker
{
    /// <summary>The function whose chunk runs now (or ran last) in this process; null outside a pool worker.</summary>
    private static volatile Registered? _current;

    /// <summary>The cancellation token of the call whose task runs now in this process.</summary>
    internal static CancellationToken CurrentToken => _current?.Cancellation?.Token ?? CancellationToken.None;

    /// <summary>What a worker's child needs to run <see cref="Run"/>: its board's handle and the initializer.</summary>
    /// <exception cref="System.Runtime.Serialization.SerializationException">The initializer cannot be sent.</exception>
    internal static ReadOnlyMemory<byte> EncodeStart(Action? initializer, WorkerBoard board)
    {
        var writer = new WireWriter(64);
        ((SharedMemory.IProcessShared)board).WriteHandle(writer);
        writer.Bool(initializer is not null);
        if (initializer is not null) writer.Bytes(DelegateSerializer.Serialize(initializer).Span);
        return writer.Written;
    }

    /// <summary>Runs the worker that <see cref="EncodeStart"/> described.</summary>
    internal static void Start(ReadOnlyMemory<byte> encoded)
    {
        var reader = new WireReader(encoded);
        var board = WorkerBoard.ReadHandle(reader);
        var initializer = reader.Bool() ? (Action)DelegateSerializer.Deserialize(reader.Bytes()) : null;
        Run(initializer, board);
    }

    /// <summary>The target of every pool worker process.</summary>
    internal static void Run(Action? initializer, WorkerBoard board)
    {
        int fd = ChildRuntime.Channel;
        if (fd < 0) throw new InvalidOperationException("a pool worker must be started with its own channel");

        // The loop below exits when the channel ends, but a task that runs long reads nothing meanwhile: this
        // thread only polls for the hang-up (leaving the data to the loop), so a dead pool's workers go at once.
        new Thread(() =>
        {
            OsIo.WaitForHangUp(fd);
            OsProcess.ExitNow(0);
        })
        {
            IsBackground = true,
            Name = "Multiprocessing pool lifeline",
        }.Start();
        if (initializer is not null)
        {
            try
            {
                initializer();
            }
            catch (Exception ex)
            {
                // The pool stops rather than start replacements that would fail the same way; the exception then
                // goes on to be printed under the process name, as any child's unhandled exception is.
                var report = new WireWriter(1024);
                int frame = report.BeginFrame(PoolProtocol.InitializerFailed);
                PoolProtocol.WriteError(report, ex);
                report.EndFrame(frame);
                OsProcess.WriteAll(fd, report.WrittenSpan);
                throw;
            }
        }

        var runners = new Dictionary<int, Registered>();
        var templates = new Dictionary<int, DelegateShape>();
        var output = new WireWriter(64 * 1024);
        var input = new byte[64 * 1024];
        int filled = 0;
        var frames = new FrameList();
        var reader = new WireReader(ReadOnlyMemory<byte>.Empty);
        var stats = new WorkerCounters();
        var cancels = new CancelState(board);
        long sequence = 0;
        long idleSince = Stopwatch.GetTimestamp();
        long lastFlush = idleSince;

        // Answers go out when nothing is left to run, or at least every millisecond while a long batch runs, so
        // progress, IMap streaming and load balancing stay live without a write per tiny task.
        long flushInterval = Stopwatch.Frequency / 1000;

        // Tell the pool this worker is up: a task's time limit counts from here, not from the process start.
        Flush(fd, output, stats, board);

        var spin = new ReceiveSpin();
        bool answered = false;
        while (true)
        {
            int n = answered ? spin.Receive(fd, input, filled) : OsProcess.ReadSome(fd, input.AsSpan(filled));

            // End of stream: the pool is gone (even SIGKILLed); there is nobody to answer.
            if (n == 0) OsProcess.ExitNow(0);
            filled += n;
            stats.IdleTicks += Stopwatch.GetTimestamp() - idleSince;

            frames.Clear();
            int consumed = PoolProtocol.CompleteFrames(input.AsSpan(0, filled), frames);
            for (int f = 0; f < frames.Count; f++)
            {
                reader.Reset(input.AsMemory(frames.Offset(f), frames.Length(f)));
                switch (reader.Byte())
                {
                    case PoolProtocol.Define:
                        int id = reader.Int32();
                        runners[id] = new Registered(id, ChunkRunner.Create(DelegateSerializer.Deserialize(reader.Bytes())));
                        break;
                    case PoolProtocol.DefineTemplate:
                        int templateId = reader.Int32();
                        templates[templateId] = DelegateSerializer.ReadShape(reader.Bytes());
                        break;
                    case PoolProtocol.Forget:
                        int forgotten = reader.Int32();
                        runners.Remove(forgotten);
                        cancels.Forget(forgotten);
                        break;
                    case PoolProtocol.Run:
                        byte flags = reader.Byte();

                        // A chunk with a time limit is timed by the pool from the previous answer: send it now.
                        if ((flags & PoolProtocol.Timed) != 0 && output.Length > 0)
                        {
                            Flush(fd, output, stats, board);
                            lastFlush = Stopwatch.GetTimestamp();
                        }

                        bool cancellable = (flags & PoolProtocol.Cancellable) != 0;
                        if (cancellable) cancels.Watch();
                        bool kept = RunChunk(reader, runners, (flags & PoolProtocol.Templated) != 0 ? templates : null, output, stats, board, cancels, cancellable, ++sequence);
                        if (!kept || Stopwatch.GetTimestamp() - lastFlush > flushInterval)
                        {
                            Flush(fd, output, stats, board);
                            lastFlush = Stopwatch.GetTimestamp();
                        }

                        board.EndChunk(sequence);
                        break;
                    case PoolProtocol.Shutdown:
                        Flush(fd, output, stats, board);

                        // As Python's workers leave with os._exit: the runtime's own shutdown would only delay the
                        // pool's Join (by milliseconds per worker); console output is flushed as it is written.
                        ProcessRuntime.RunExitHandler();
                        OsProcess.ExitNow(0);
                        return;
                    default:
                        throw new InvalidDataException("unknown pool frame");
                }
            }

            // Keep a partial frame; grow for frames larger than the buffer.
            filled -= consumed;
            if (filled > 0) input.AsSpan(consumed, filled).CopyTo(input);
            if (filled == input.Length) Array.Resize(ref input, input.Length * 2);
            answered = frames.Count > 0 && filled == 0;
            if (answered)
            {
                Flush(fd, output, stats, board);
                lastFlush = Stopwatch.GetTimestamp();
            }

            idleSince = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Runs one chunk (or skips it, when its call was cancelled) and writes its answer; false when the
    /// answer could not be kept on the board and must be sent now.</summary>
    private static bool RunChunk(WireReader reader, Dictionary<int, Registered> runners, Dictionary<int, DelegateShape>? templates, WireWriter output, WorkerCounters stats,
        WorkerBoard board, CancelState cancels, bool cancellable, long sequence)
    {
        // Recorded before anything of the chunk runs: if this process dies from here on, this chunk did it.
        board.BeginChunk(sequence);
        int callId = reader.Int32();
        int chunk = reader.Int32();
        int funcId = reader.Int32();
        DelegateShape? shape = null;
        ReadOnlyMemory<byte> state = default;
        if (templates is not null)
        {
            shape = templates[reader.Int32()];
            state = reader.Bytes();
        }

        int frame = output.BeginFrame(PoolProtocol.Result);
        output.Int32(callId);
        output.Int32(chunk);
        if (cancels.Skips(funcId))
        {
            // The pool has failed this chunk already; it only needs the answer to keep the order.
            output.Int32(0);
            output.Byte(PoolProtocol.PerItem);
        }
        else
        {
            int count = reader.Int32();
            output.Int32(count);
            if (Resolve(runners, funcId, shape, state, out var failure) is { } registered)
            {
                // Only a call that can be cancelled gives its tasks a token that can be: code may skip work on
                // CanBeCanceled, as it does for CancellationToken.None.
                if (cancellable) registered.Cancellation ??= new CancellationTokenSource();
                if (_current != registered) _current = registered;
                registered.Runner.Run(reader, count, output, stats);
            }
            else
            {
                output.Byte(PoolProtocol.PerItem);
                for (int i = 0; i < count; i++) ChunkRunner.WriteOutcome<object?>(output, null, failure, stats);
            }
        }

        output.EndFrame(frame);
        stats.Tasks++;
        return board.Keep(output.WrittenSpan[frame..]);
    }

    /// <summary>The chunk's function: one defined for its call, or a template bound to the chunk's own state (it
    /// lives for the chunk; the function id still names its call for cancellation). Null, with the error, when the
    /// closure cannot be rebuilt here (a type that fails to load, say): that task fails and the worker goes on.</summary>
    private static Registered? Resolve(Dictionary<int, Registered> runners, int funcId, DelegateShape? shape, ReadOnlyMemory<byte> state, out Exception? failure)
    {
        failure = null;
        if (shape is null) return runners[funcId];
        try
        {
            return new Registered(funcId, ChunkRunner.Create(shape.Bind(state)));
        }
        catch (Exception ex)
        {
            failure = ex;
            return null;
        }
    }

    private static void Flush(int fd, WireWriter output, WorkerCounters stats, WorkerBoard board)
    {
        int frame = output.BeginFrame(PoolProtocol.Stats);
        output.Int64(stats.Tasks);
        output.Int64(stats.BusyTicks);
        output.Int64(stats.IdleTicks);
        output.Int64(stats.SerializeTicks);
        output.EndFrame(frame);
        OsProcess.WriteAll(fd, output.WrittenSpan);
        output.Reset();
        board.Sent();
    }

    /// <summary>A function defined for a call, with the token its tasks see.</summary>
    private sealed class Registered(int funcId, IChunkRunner runner)
    {
        internal int FuncId { get; } = funcId;

        internal IChunkRunner Runner { get; } = runner;

        internal CancellationTokenSource? Cancellation { get; set; }
    }

    /// <summary>
    /// What the worker knows of cancelled calls. The loop looks at the board's generation once per chunk (one
    /// load) and skips chunks of cancelled calls; a watcher thread, started with the first chunk of a call that can
    /// be cancelled, sleeps on the generation and cancels the running task's token.
    /// </summary>
    private sealed class CancelState(WorkerBoard board)
    {
        // Made on the first cancellation: most workers never see one, and a fresh worker would JIT it.
        private HashSet<int>? _cancelled;
        private int _seen;
        private Thread? _watcher;

        internal bool Skips(int funcId)
        {
            int generation = board.Generation;
            if (generation != _seen)
            {
                // Only what is new: a forgotten call must not come back from the ring.
                board.ReadCancelled(_seen, generation, _cancelled ??= []);
                _seen = generation;
            }

            return _cancelled is { Count: > 0 } && _cancelled.Contains(funcId);
        }

        /// <summary>A forgotten call sends no more chunks.</summary>
        internal void Forget(int funcId) => _cancelled?.Remove(funcId);

        internal void Watch()
        {
            if (_watcher is not null) return;
            _watcher = new Thread(WatchLoop) { IsBackground = true, Name = "Multiprocessing pool cancellation" };
            _watcher.Start();
        }

        private void WatchLoop()
        {
            int seen = board.Generation;
            while (true)
            {
                board.WaitForCancellation(seen);
                seen = board.Generation;
                if (_current is not { Cancellation: { } cancellation } current || !board.IsCancelled(current.FuncId)) continue;
                try
                {
                    cancellation.Cancel();
                }
                catch (AggregateException ex)
                {
                    // A callback the task registered on its token threw; the task itself goes on to be stopped.
                    ProcessRuntime.Logger.LogError(ex, "A callback registered on a pool task's cancellation token threw");
                }
            }
        }
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
            // The maker is taken from a delegate to it, not looked up by name: a fresh worker's first GetMethod
            // builds the type's member cache, about 1.5 ms before its first task.
            var definition = type.IsGenericType ? type.GetGenericTypeDefinition() : null;
            Func<Delegate, IChunkRunner> maker = definition == typeof(Func<,>) ? MakeMap<object, object> : definition == typeof(Func<>) ? MakeApply<object>
                : throw new NotSupportedException($"a pool function of type {type} cannot be run");
            factory = maker.Method.GetGenericMethodDefinition()
                .MakeGenericMethod(type.GetGenericArguments())
                .CreateDelegate<Func<Delegate, IChunkRunner>>();
            Factories[type] = factory;
        }

        return factory(function);
    }

    internal static IChunkRunner MakeMap<T, TResult>(Delegate function) => new MapRunner<T, TResult>((Func<T, TResult>)function);

    internal static IChunkRunner MakeApply<TResult>(Delegate function) => new ApplyRunner<TResult>((Func<TResult>)function);

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
        PoolProtocol.WriteError(output, error);
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

/// <summary>
/// A worker that has just answered looks for its next task for a short while before it sleeps in read(2). A caller
/// that waits on each result (Apply in a loop, a lazy IMap) sends the next task within microseconds of the answer,
/// and a worker asleep by then costs a wake-up of a halted CPU, the dearest step of the round trip on a VM. The
/// budget (at most 100 µs) learns as <see cref="AdaptiveSpin"/> does, so a pool left idle spins a few microseconds
/// after its last answer.
/// </summary>
internal sealed class ReceiveSpin
{
    private readonly AdaptiveSpin _spin = new(Stopwatch.Frequency / 10_000);
    private int _fd;
    private byte[] _buffer = [];
    private int _offset;
    private int _received;

    /// <summary>Reads into <paramref name="buffer"/> from <paramref name="offset"/> what arrives within the budget,
    /// else blocks as <see cref="OsProcess.ReadSome"/> does.</summary>
    internal int Receive(int fd, byte[] buffer, int offset)
    {
        (_fd, _buffer, _offset) = (fd, buffer, offset);
        if (_spin.Spin(static self => (self._received = OsIo.TryReceiveNow(self._fd, self._buffer.AsSpan(self._offset))) >= 0, this)) return _received;
        return OsProcess.ReadSome(fd, buffer.AsSpan(offset));
    }
}

/// <summary>
/// Names the pool's generic code for the common item and result types, so that the ReadyToRun compiler builds those
/// instantiations into this assembly: a fresh worker then runs a map of ints or strings without loading the JIT for
/// them (it cost a new worker several milliseconds of its start). Other types are compiled at first use and tier up
/// as usual. Never called.
/// </summary>
internal static class PrecompiledInstantiations
{
    internal static void Name()
    {
        Apply<int>();
        Apply<long>();
        Apply<double>();
        Apply<bool>();
        Apply<string>();
        From<int>();
        From<long>();
        From<double>();
        From<string>();
    }

    private static void From<T>()
    {
        Map<T, int>();
        Map<T, long>();
        Map<T, double>();
        Map<T, bool>();
        Map<T, string>();
    }

    private static void Map<T, TResult>()
    {
        ChunkRunner.MakeMap<T, TResult>(null!).Run(null!, 0, null!, null!);
        ItemCodec<T>.ReadMany(null!, default);
        ItemCodec<TResult>.WriteMany(null!, default);
    }

    private static void Apply<TResult>()
    {
        ChunkRunner.MakeApply<TResult>(null!).Run(null!, 0, null!, null!);
        ChunkRunner.WriteOutcome<TResult>(null!, default!, null, null!);
    }
}
