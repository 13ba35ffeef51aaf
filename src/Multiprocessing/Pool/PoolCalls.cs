using Multiprocessing.Serialization;

namespace Multiprocessing.Pool;

/// <summary>A chunk of a call, queued or running on a worker.</summary>
internal readonly record struct ChunkRef(PoolCall Call, int Chunk);

/// <summary>One outcome of one item: a value or the remote failure.</summary>
internal readonly record struct Outcome<T>(T Value, Exception? Error);

/// <summary>
/// One Map, IMap or Apply call: the function it runs (registered once per worker) and its chunks. All members are
/// called under the pool's lock; what reaches user code (callbacks, progress) is posted to the result thread.
/// </summary>
/// <summary>Lets a thread that waits synchronously on a result do the work that delivers it.</summary>
internal interface IWaitAssist
{
    /// <summary>Works toward <paramref name="done"/> for a short while; true once it is ready.</summary>
    bool WaitBriefly(ICompletion done);
}

/// <summary>Something a caller waits on; <see cref="Ready"/> once it completed.</summary>
internal interface ICompletion
{
    bool Ready { get; }
}

internal abstract class PoolCall(ProcessPool pool, int id, int funcId, ReadOnlyMemory<byte> function)
{
    internal int Id { get; } = id;

    internal int FuncId { get; } = funcId;

    /// <summary>The serialized function, or, with a <see cref="Template"/>, only its target's state.</summary>
    internal ReadOnlyMemory<byte> Function { get; } = function;

    /// <summary>The shape of the function, when each chunk carries the state of its own closure.</summary>
    internal DelegateTemplate? Template { get; init; }

    internal ProcessPool Pool { get; } = pool;

    /// <summary>The worker last handed a chunk of this call (guarded by the pool's lock).</summary>
    internal WorkerHandle? SentTo { get; set; }

    /// <summary>Chunks handed to the pool and not yet answered.</summary>
    internal int Outstanding { get; set; }

    /// <summary>How long one item may run, in Stopwatch ticks; 0 for no limit.</summary>
    internal long TimeoutTicks { get; set; }

    internal TimeSpan? Timeout { get; set; }

    /// <summary>The caller gave a token that can be cancelled: its workers watch for that.</summary>
    internal bool Cancellable { get; set; }

    /// <summary>The caller cancelled the call: its result has failed, and answers still due are dropped.</summary>
    internal bool Cancelled { get; set; }

    /// <summary>The call's registration on the caller's token, ended when the call is over.</summary>
    internal CancellationTokenRegistration Registration { get; set; }

    /// <summary>Whether a chunk of this call is written at once. An Apply task for a busy worker may wait for its
    /// next answer and share that write; a map-type chunk may not (its worker would run dry meanwhile).</summary>
    internal virtual bool WrittenAtOnce => true;

    /// <summary>How many items a chunk holds (its time limit is that many times the per-task one).</summary>
    internal virtual int ChunkItems(int chunk) => 1;

    /// <summary>No more chunks will be added and none is outstanding.</summary>
    internal abstract bool Finished { get; }

    /// <summary>Writes the chunk's item count and items.</summary>
    internal abstract void Encode(int chunk, WireWriter writer);

    /// <summary>Reads the chunk's outcomes.</summary>
    internal abstract void Complete(int chunk, WireReader reader);

    /// <summary>The whole chunk failed: its worker died, the pool was terminated, or its items could not be encoded.</summary>
    internal abstract void Fail(int chunk, Exception error);

    /// <summary>The pool was terminated: everything not yet delivered fails.</summary>
    internal abstract void Abort(Exception error);

    /// <summary>The caller cancelled: the result fails with <paramref name="error"/> now; no chunk is completed
    /// after this.</summary>
    internal abstract void Cancel(OperationCanceledException error);

    /// <summary>The consumer stopped early: no more chunks will come.</summary>
    internal virtual void Abandon()
    {
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    protected static Outcome<T> ReadOutcome<T>(WireReader reader)
    {
        if (reader.Byte() == PoolProtocol.ItemOk) return new(ItemCodec<T>.Read(reader), null);
        return new(default!, PoolProtocol.ReadError(reader));
    }
}

/// <summary>Map, StarMap and their Async forms: the input is materialized (as Python does) and results land in
/// place.</summary>
internal sealed class MapCall<T, TResult> : PoolCall
{
    private readonly T[] _items;
    private readonly int _chunksize;
    private readonly TResult[] _results;
    private readonly AsyncResult<List<TResult>> _result;
    private readonly Action<List<TResult>>? _callback;
    private readonly Action<Exception>? _errorCallback;
    private readonly IProgress<MapProgress>? _progress;
    private Exception? _firstError;
    private int _firstErrorIndex = int.MaxValue;
    private long _done;

    internal MapCall(ProcessPool pool, int id, int funcId, ReadOnlyMemory<byte> function, T[] items, int chunksize, AsyncResult<List<TResult>> result,
        Action<List<TResult>>? callback, Action<Exception>? errorCallback, IProgress<MapProgress>? progress)
        : base(pool, id, funcId, function)
    {
        _items = items;
        _chunksize = chunksize;
        _results = new TResult[items.Length];
        _result = result;
        _callback = callback;
        _errorCallback = errorCallback;
        _progress = progress;
        ChunkCount = (items.Length + chunksize - 1) / chunksize;
    }

    internal int ChunkCount { get; }

    internal override bool Finished => Outstanding == 0;

    internal override int ChunkItems(int chunk) => Math.Min(_chunksize, _items.Length - chunk * _chunksize);

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal override void Encode(int chunk, WireWriter writer)
    {
        int start = chunk * _chunksize;
        int count = Math.Min(_chunksize, _items.Length - start);
        writer.Int32(count);
        ItemCodec<T>.WriteMany(writer, _items.AsSpan(start, count));
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal override void Complete(int chunk, WireReader reader)
    {
        int start = chunk * _chunksize;
        int count = reader.Int32();
        if (reader.Byte() == PoolProtocol.Bulk)
        {
            ItemCodec<TResult>.ReadMany(reader, _results.AsSpan(start, count));
        }
        else
        {
            for (int i = start; i < start + count; i++)
            {
                var outcome = ReadOutcome<TResult>(reader);
                if (outcome.Error is null) _results[i] = outcome.Value;
                else Record(i, outcome.Error);
            }
        }

        Advance(count);
    }

    internal override void Fail(int chunk, Exception error)
    {
        int start = chunk * _chunksize;
        int count = Math.Min(_chunksize, _items.Length - start);
        Record(start, error);
        Advance(count);
    }

    internal override void Abort(Exception error)
    {
        Record(-1, error);
        Finish();
    }

    internal override void Cancel(OperationCanceledException error)
    {
        if (_errorCallback is { } onError) Pool.Post(() => onError(error), () => _result.SetCanceled(error));
        else _result.SetCanceled(error);
    }

    /// <summary>Completes at once when there is nothing to run.</summary>
    internal void FinishIfEmpty()
    {
        if (ChunkCount == 0) Finish();
    }

    private void Record(int index, Exception error)
    {
        // Python raises the failure of the earliest item; a termination trumps everything.
        if (index < _firstErrorIndex)
        {
            _firstErrorIndex = index;
            _firstError = error;
        }
    }

    private void Advance(int count)
    {
        _done += count;
        if (_progress is { } progress)
        {
            var report = new MapProgress(_done, _items.Length);
            Pool.Post(() => progress.Report(report));
        }

        if (Outstanding == 0) Finish();
    }

    private void Finish()
    {
        // With a callback or progress sink, the result becomes ready on the result thread after them, so a
        // caller that gets the result has seen every report and the callback has run (as in Python).
        bool viaResultThread = _progress is not null;
        if (_firstError is { } error)
        {
            if (_errorCallback is { } onError) Pool.Post(() => onError(error), () => _result.SetException(error));
            else if (viaResultThread) Pool.Post(static () => { }, () => _result.SetException(error));
            else _result.SetException(error);
            return;
        }

        var list = new List<TResult>(_results);
        if (_callback is { } onResult) Pool.Post(() => onResult(list), () => _result.SetResult(list));
        else if (viaResultThread) Pool.Post(static () => { }, () => _result.SetResult(list));
        else _result.SetResult(list);
    }
}

/// <summary>Apply and ApplyAsync: one chunk without items.</summary>
internal sealed class ApplyCall<TResult>(ProcessPool pool, int id, int funcId, ReadOnlyMemory<byte> function, AsyncResult<TResult> result,
    Action<TResult>? callback, Action<Exception>? errorCallback)
    : PoolCall(pool, id, funcId, function), IWaitAssist
{
    /// <summary>A caller waiting on this task reads its worker's answers itself for a while.</summary>
    public bool WaitBriefly(ICompletion done) => Pool.WaitReading(this, done);

    // Per-task members of a generic type are compiled fully optimised at once (AggressiveOptimization), as
    // ApplyAsync itself: an instantiation over a value type has no precompiled code, and ApplyAsync in a loop spent
    // its first second in unoptimised, then instrumented, copies of them.
    internal override bool WrittenAtOnce
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        get => false;
    }

    internal override bool Finished
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        get => Outstanding == 0;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal override void Encode(int chunk, WireWriter writer) => writer.Int32(0);

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal override void Complete(int chunk, WireReader reader)
    {
        reader.Int32();
        reader.Byte();
        var outcome = ReadOutcome<TResult>(reader);
        if (outcome.Error is null) Succeed(outcome.Value);
        else Fail(chunk, outcome.Error);
    }

    internal override void Fail(int chunk, Exception error)
    {
        if (errorCallback is null) result.SetException(error);
        else PostFailure(error);
    }

    internal override void Abort(Exception error) => Fail(0, error);

    internal override void Cancel(OperationCanceledException error)
    {
        if (errorCallback is null) result.SetCanceled(error);
        else PostCancellation(error);
    }

    // The callback paths live in their own methods: a lambda capturing a parameter makes its closure on entry to the
    // method that declares it, so a task without callbacks would pay for one anyway.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private void Succeed(TResult value)
    {
        if (callback is null) result.SetResult(value);
        else PostResult(value);
    }

    private void PostResult(TResult value) => Pool.Post(() => callback!(value), () => result.SetResult(value));

    private void PostFailure(Exception error) => Pool.Post(() => errorCallback!(error), () => result.SetException(error));

    private void PostCancellation(OperationCanceledException error) => Pool.Post(() => errorCallback!(error), () => result.SetCanceled(error));
}

/// <summary>
/// IMap and IMapUnordered: the consumer's thread pulls the source lazily, at most <see cref="PoolOptions.MaxReadAhead"/>
/// items ahead of what it has consumed, and waits on <see cref="Signal"/> for outcomes. Outcomes are handed over a
/// chunk at a time, so the consumer takes the pool's lock once per chunk, not once per item.
/// </summary>
internal sealed class StreamCall<T, TResult>(ProcessPool pool, int id, int funcId, ReadOnlyMemory<byte> function, int chunksize, bool ordered,
    long? total, IProgress<MapProgress>? progress)
    : PoolCall(pool, id, funcId, function)
{
    private readonly Dictionary<int, T[]> _unsent = [];
    private readonly Dictionary<int, int> _sizes = [];
    private readonly Dictionary<int, Outcome<TResult>[]> _byChunk = [];
    private readonly Queue<Outcome<TResult>[]> _arrived = new();
    private int _nextChunk;
    private long _done;
    private Exception? _aborted;

    /// <summary>Released whenever outcomes arrive.</summary>
    internal SemaphoreSlim Signal { get; } = new(0);

    internal long Taken { get; private set; }

    /// <summary>Items handed to the consumer (whole chunks; it may not have iterated them all yet).</summary>
    internal long Yielded { get; private set; }

    internal bool SourceDone { get; set; }

    /// <summary>What the input threw when it was read, if it did; the stream ends with it.</summary>
    internal System.Runtime.ExceptionServices.ExceptionDispatchInfo? SourceError { get; set; }

    internal int Chunks { get; private set; }

    internal int Chunksize => chunksize;

    internal override int ChunkItems(int chunk) => chunksize;

    internal override bool Finished => SourceDone && Outstanding == 0;

    internal bool Exhausted => _aborted is null && SourceDone && Yielded == Taken;

    internal override void Abandon() => SourceDone = true;

    /// <summary>The pool was terminated: the stream ends with that error.</summary>
    internal bool Aborted => _aborted is not null;

    /// <summary>Adds a chunk of items pulled from the source; returns its index.</summary>
    internal int Add(T[] items)
    {
        int chunk = Chunks++;
        _unsent[chunk] = items;
        _sizes[chunk] = items.Length;
        Taken += items.Length;
        return chunk;
    }

    internal override void Encode(int chunk, WireWriter writer)
    {
        // Kept until answered: a chunk taken back from a worker that died before starting it is sent again.
        var items = _unsent[chunk];
        writer.Int32(items.Length);
        ItemCodec<T>.WriteMany(writer, items);
    }

    internal override void Complete(int chunk, WireReader reader)
    {
        _unsent.Remove(chunk);
        int count = reader.Int32();
        var outcomes = new Outcome<TResult>[count];
        if (reader.Byte() == PoolProtocol.Bulk)
        {
            var values = new TResult[count];
            ItemCodec<TResult>.ReadMany(reader, values);
            for (int i = 0; i < count; i++) outcomes[i] = new(values[i], null);
        }
        else
        {
            for (int i = 0; i < count; i++) outcomes[i] = ReadOutcome<TResult>(reader);
        }

        Deliver(chunk, outcomes);
    }

    internal override void Fail(int chunk, Exception error)
    {
        _unsent.Remove(chunk);
        var outcomes = new Outcome<TResult>[_sizes[chunk]];
        Array.Fill(outcomes, new(default!, error));
        Deliver(chunk, outcomes);
    }

    internal override void Abort(Exception error)
    {
        _aborted = error;
        Signal.Release();
    }

    internal override void Cancel(OperationCanceledException error)
    {
        SourceDone = true;
        Abort(error);
    }

    /// <summary>Takes the next chunk of outcomes the consumer may see, in input order or in arrival order.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal Outcome<TResult>[]? TryTake()
    {
        if (_aborted is { } error) return [new(default!, error)];
        Outcome<TResult>[]? outcomes;
        if (ordered)
        {
            if (!_byChunk.Remove(_nextChunk, out outcomes)) return null;
            _nextChunk++;
        }
        else if (!_arrived.TryDequeue(out outcomes))
        {
            return null;
        }

        Yielded += outcomes.Length;
        return outcomes;
    }

    private void Deliver(int chunk, Outcome<TResult>[] outcomes)
    {
        _sizes.Remove(chunk);
        if (ordered) _byChunk[chunk] = outcomes;
        else _arrived.Enqueue(outcomes);
        _done += outcomes.Length;
        if (progress is { } sink)
        {
            var report = new MapProgress(_done, SourceDone ? Taken : total);
            Pool.Post(() => sink.Report(report));
        }

        Signal.Release();
    }
}

/// <summary>
/// The consumer's side of IMap and IMapUnordered. Like Python's iterator, and unlike a C# iterator block, a failed
/// item throws from <c>MoveNext</c> and the next call goes on with the following results; only a terminated pool
/// or a cancelled call ends the stream at its error, and an input that throws ends it with that exception once the
/// items read before it are yielded. Enumerable once.
/// </summary>
internal sealed class StreamResults<T, TResult>(StreamCall<T, TResult> call, IEnumerator<T> source, CancellationToken cancellationToken)
    : IEnumerable<TResult>, IEnumerator<TResult>, IAsyncEnumerable<TResult>, IAsyncEnumerator<TResult>
{
    /// <summary>The token given to <c>GetAsyncEnumerator</c> (<c>WithCancellation</c>); it cancels the call too.</summary>
    private CancellationToken _enumeratorToken;
    private CancellationTokenRegistration _enumeratorRegistration;
    private Outcome<TResult>[]? _batch;
    private int _index;
    private bool _done;
    private int _taken;
    private int _closed;

    public TResult Current { get; private set; } = default!;

    object? System.Collections.IEnumerator.Current => Current;

    public IEnumerator<TResult> GetEnumerator() => Take();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => Take();

    public IAsyncEnumerator<TResult> GetAsyncEnumerator(CancellationToken cancellationToken = default)
    {
        Take();
        _enumeratorToken = cancellationToken;
        _enumeratorRegistration = call.Pool.Watch(call, cancellationToken);
        return this;
    }

    // Waits need no token: cancelling the call aborts it, which releases the signal.
    // The parent's per-item paths are compiled fully optimised at first use: for a value-type instantiation there is
    // no precompiled code, and tiering cost IMap with chunks of 1000 a third of its throughput over the few calls a
    // program makes. (The worker's side is precompiled for common types instead; see PrecompiledInstantiations.)
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public bool MoveNext()
    {
        while (true)
        {
            if (TryNext()) return true;
            if (_done) return false;
            call.Signal.Wait();
        }
    }

    public async ValueTask<bool> MoveNextAsync()
    {
        while (true)
        {
            if (TryNext()) return true;
            if (_done) return false;
            await call.Signal.WaitAsync().ConfigureAwait(false);
        }
    }

    public void Reset() => throw new NotSupportedException("a pool's result stream cannot be restarted");

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _enumeratorRegistration.Unregister();
        call.Pool.CloseStream(call, source);
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    private StreamResults<T, TResult> Take()
    {
        if (Interlocked.Exchange(ref _taken, 1) != 0) throw new InvalidOperationException("a pool's result stream can be enumerated only once");
        return this;
    }

    /// <summary>Moves to the next outcome if one is there: true with a value, throws a failed item's error, false
    /// when the caller must wait (or the stream is over, with <see cref="_done"/> set).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private bool TryNext()
    {
        // Once a token is cancelled the stream ends there, even with results already in hand (the .NET rule).
        if (!_done && (cancellationToken.IsCancellationRequested || _enumeratorToken.IsCancellationRequested))
        {
            Finish();
            var token = cancellationToken.IsCancellationRequested ? cancellationToken : _enumeratorToken;
            throw new OperationCanceledException("The call was cancelled.", token);
        }

        while (true)
        {
            if (_batch is not null && _index < _batch.Length)
            {
                var outcome = _batch[_index++];
                if (outcome.Error is { } error)
                {
                    if (call.Aborted) Finish();
                    throw error;
                }

                Current = outcome.Value;
                return true;
            }

            if (_done) return false;
            if (!call.Pool.NextOutcomes(call, source, out var outcomes))
            {
                Finish();
                call.SourceError?.Throw();
                return false;
            }

            if (outcomes is null) return false;
            _batch = outcomes;
            _index = 0;
        }
    }

    private void Finish()
    {
        _done = true;
        Dispose();
    }
}
