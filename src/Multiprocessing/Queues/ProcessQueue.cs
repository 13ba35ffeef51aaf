using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using Multiprocessing.Queues;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// A first-in first-out queue shared by processes, Python's <c>multiprocessing.Queue</c>. Create with
/// <see cref="Mp.Queue{T}(int, QueueOptions)"/>; pass it to children and pool tasks by capturing it.
/// </summary>
/// <typeparam name="T">The items; library objects inside them (locks, queues, connections) travel as handles.</typeparam>
/// <remarks>
/// Process-safe and thread-safe. Unlike Python's queue there is no feeder thread: <see cref="Put"/> serializes the
/// item and copies it into shared memory before it returns, so an item that cannot be serialized fails right
/// there, an item put just before a process exits is never lost, and a process never has to flush anything at
/// exit. Items from one producer arrive in the order it put them. Memory is an anonymous shared segment that
/// vanishes with the last process using the queue. A process killed while using the queue never deadlocks it.
/// </remarks>
public class ProcessQueue<T> : IProcessShared, IDisposable, IAsyncDisposable
{
    [ThreadStatic]
    private static WireWriter? _scratch;

    private readonly bool _joinable;
    private int _closed;

    private protected ProcessQueue(QueueRing ring, bool joinable)
    {
        Ring = ring;
        _joinable = joinable;
        ring.Segment.AddUser();
    }

    private protected QueueRing Ring { get; }

    /// <summary>The most items the queue holds (0: unbounded), Python's <c>maxsize</c>.</summary>
    public int MaxSize => Ring.MaxSize;

    /// <summary>How many items are in the queue now, Python's <c>qsize()</c>; other processes may change it at once.</summary>
    public int Count => Ring.Count;

    /// <summary>Whether the queue holds no items now, Python's <c>empty()</c>.</summary>
    public bool IsEmpty => Ring.Count == 0;

    /// <summary>Whether a bounded queue is at <see cref="MaxSize"/>, Python's <c>full()</c>.</summary>
    public bool IsFull => Ring.IsFull;

    /// <summary>Adds an item, waiting at most <paramref name="timeout"/> for room (null: forever).</summary>
    /// <param name="item">The item.</param>
    /// <param name="timeout">How long to wait while the queue is full or its buffer has no room.</param>
    /// <exception cref="TimeoutException">The queue stayed full (Python's <c>queue.Full</c>).</exception>
    /// <exception cref="NotSupportedException">The item cannot be serialized; the queue is unchanged.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public void Put(T item, TimeSpan? timeout = null)
    {
        if (!PutCore(item, Blocking.Deadline(timeout), CancellationToken.None))
            throw new TimeoutException($"the queue is full ({Describe()}); no room came within {timeout}");
    }

    /// <summary>Adds an item if there is room now; never waits.</summary>
    /// <param name="item">The item.</param>
    /// <returns>False if the queue is full (Python's <c>put_nowait</c> raising <c>Full</c>).</returns>
    /// <exception cref="NotSupportedException">The item cannot be serialized; the queue is unchanged.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public bool TryPut(T item) => PutCore(item, 0, CancellationToken.None);

    /// <summary>Adds an item without blocking a thread-pool thread while the queue is full.</summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Stops waiting for room; the item is then not added.</param>
    /// <returns>A task that completes when the item is in the queue.</returns>
    /// <exception cref="NotSupportedException">The item cannot be serialized.</exception>
    /// <exception cref="OperationCanceledException">Cancelled before there was room.</exception>
    public Task PutAsync(T item, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled(cancellationToken);
        try
        {
            if (TryPut(item)) return Task.CompletedTask;
        }
        catch (Exception ex)
        {
            return Task.FromException(ex);
        }

        return Blocking.OffThread(ct => PutCore(item, long.MaxValue, ct), Ring.NudgeAll, cancellationToken);
    }

    /// <summary>Removes and returns the oldest item, waiting at most <paramref name="timeout"/> (null: forever).</summary>
    /// <param name="timeout">How long to wait while the queue is empty.</param>
    /// <returns>The item.</returns>
    /// <exception cref="TimeoutException">The queue stayed empty (Python's <c>queue.Empty</c>).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public T Get(TimeSpan? timeout = null)
    {
        if (!GetCore(Blocking.Deadline(timeout), CancellationToken.None, out var item))
            throw new TimeoutException($"the queue is empty; nothing arrived within {timeout}");
        return item;
    }

    /// <summary>Removes and returns the oldest item if there is one; never waits.</summary>
    /// <param name="item">The item, or default.</param>
    /// <returns>False if the queue is empty (Python's <c>get_nowait</c> raising <c>Empty</c>).</returns>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public bool TryGet([MaybeNullWhen(false)] out T item) => GetCore(0, CancellationToken.None, out item);

    /// <summary>Removes and returns the oldest item without blocking a thread-pool thread while the queue is empty.</summary>
    /// <param name="cancellationToken">Stops waiting; nothing is removed then.</param>
    /// <returns>The item.</returns>
    /// <exception cref="OperationCanceledException">Cancelled before an item came.</exception>
    public Task<T> GetAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<T>(cancellationToken);
        try
        {
            if (TryGet(out var item)) return Task.FromResult(item);
        }
        catch (Exception ex)
        {
            return Task.FromException<T>(ex);
        }

        return Blocking.OffThread(
            ct =>
            {
                GetCore(long.MaxValue, ct, out var item);
                return item!;
            },
            Ring.NudgeAll,
            cancellationToken);
    }

    /// <summary>Stops using the queue in this process, Python's <c>close()</c>; other processes carry on. Items
    /// already put are in shared memory, so nothing is lost.</summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0) Ring.Segment.RemoveUser();
    }

    /// <summary>Python's <c>join_thread()</c>: returns at once, as there is no feeder thread to wait for.</summary>
    /// <exception cref="InvalidOperationException">The queue is not closed yet (Python asserts the same).</exception>
    public void JoinThread()
    {
        if (_closed == 0) throw new InvalidOperationException("JoinThread() is only valid after Close()");
    }

    /// <summary>Python's <c>cancel_join_thread()</c>: nothing to cancel, as there is no feeder thread.</summary>
    public void CancelJoinThread()
    {
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose()
    {
        Close();
        GC.SuppressFinalize(this);
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the queue.</summary>
    /// <returns>For example "ProcessQueue&lt;Int32&gt;(3 items, max 10)".</returns>
    public override string ToString() => $"{GetType().Name.Split('`')[0]}<{typeof(T).Name}>({Describe()})";

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        ObjectDisposedException.ThrowIf(_closed != 0, this);
        Ring.Segment.Write(writer);
    }

    internal static ProcessQueue<T> Create(int maxSize, QueueOptions? options)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxSize);
        return new(QueueRing.Create(maxSize, (options ?? new QueueOptions()).BufferSize, "queue"), joinable: false);
    }

    internal static ProcessQueue<T> ReadHandle(WireReader reader) => new(QueueRing.Open(SharedSegment.Read(reader)), joinable: false);

    private protected void ThrowIfClosed() => ObjectDisposedException.ThrowIf(_closed != 0, this);

    private string Describe() => $"{Count} items{(MaxSize > 0 ? $", max {MaxSize}" : "")}";

    private bool PutCore(T item, long deadline, CancellationToken cancellationToken)
    {
        ThrowIfClosed();
        var writer = Interlocked.Exchange(ref _scratch, null) ?? new WireWriter(256);
        try
        {
            writer.Reset();
            try
            {
                ItemCodec<T>.Write(writer, item);
            }
            catch (Exception ex) when (ex is not NotSupportedException)
            {
                throw new NotSupportedException($"a {item?.GetType().FullName ?? typeof(T).FullName} cannot be put on a queue: {ex.Message}", ex);
            }

            return Ring.Put(writer.WrittenSpan, deadline, _joinable, cancellationToken);
        }
        finally
        {
            if (writer.Length <= 1 << 20) _scratch = writer;
        }
    }

    private bool GetCore(long deadline, CancellationToken cancellationToken, [MaybeNullWhen(false)] out T item)
    {
        ThrowIfClosed();
        if (Ring.Get(deadline, cancellationToken) is not var (buffer, length))
        {
            item = default;
            return false;
        }

        try
        {
            item = ItemCodec<T>.Read(new WireReader(buffer.AsMemory(0, length)));
            return true;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}

/// <summary>
/// A <see cref="ProcessQueue{T}"/> that counts unfinished tasks, Python's <c>multiprocessing.JoinableQueue</c>:
/// every <see cref="ProcessQueue{T}.Put"/> adds one, <see cref="TaskDone"/> removes one, and <see cref="Join"/>
/// waits for none to be left. Create with <see cref="Mp.JoinableQueue{T}(int, QueueOptions)"/>.
/// </summary>
/// <typeparam name="T">The items.</typeparam>
/// <remarks>Process-safe and thread-safe; the count lives in the queue's shared memory.</remarks>
public sealed class JoinableProcessQueue<T> : ProcessQueue<T>
{
    internal JoinableProcessQueue(QueueRing ring)
        : base(ring, joinable: true)
    {
    }

    /// <summary>How many items have been put and not yet marked done.</summary>
    public int UnfinishedTasks => Ring.UnfinishedTasks;

    /// <summary>Marks one item taken from the queue as processed, Python's <c>task_done()</c>.</summary>
    /// <exception cref="InvalidOperationException">Called more times than items were put (Python's ValueError).</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public void TaskDone()
    {
        ThrowIfClosed();
        if (!Ring.TaskDone()) throw new InvalidOperationException("TaskDone() called more times than there were items put on the queue");
    }

    /// <summary>Waits until every item put has been marked done, Python's <c>join()</c>.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>False on timeout.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public bool Join(TimeSpan? timeout = null)
    {
        ThrowIfClosed();
        return Ring.JoinTasks(Blocking.Deadline(timeout), CancellationToken.None);
    }

    /// <summary>Waits until every item put has been marked done, without blocking a thread-pool thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>A task that completes when no task is unfinished.</returns>
    /// <exception cref="OperationCanceledException">Cancelled first.</exception>
    public Task JoinAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfClosed();
        if (Ring.UnfinishedTasks == 0) return Task.CompletedTask;
        return Blocking.OffThread(ct => Ring.JoinTasks(long.MaxValue, ct), Ring.NudgeAll, cancellationToken);
    }

    internal static new JoinableProcessQueue<T> Create(int maxSize, QueueOptions? options)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxSize);
        return new(QueueRing.Create(maxSize, (options ?? new QueueOptions()).BufferSize, "joinable-queue"));
    }

    internal static new JoinableProcessQueue<T> ReadHandle(WireReader reader) => new(QueueRing.Open(SharedSegment.Read(reader)));
}

/// <summary>
/// The plain queue of Python's <c>multiprocessing.SimpleQueue</c>: put, get, empty, close. Create with
/// <see cref="Mp.SimpleQueue{T}"/>.
/// </summary>
/// <typeparam name="T">The items.</typeparam>
/// <remarks>Process-safe and thread-safe; the same engine as <see cref="ProcessQueue{T}"/>, without a size bound.</remarks>
public sealed class SimpleProcessQueue<T> : IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProcessQueue<T> _queue;

    internal SimpleProcessQueue(ProcessQueue<T> queue) => _queue = queue;

    /// <summary>Whether the queue holds no items now, Python's <c>empty()</c>.</summary>
    public bool IsEmpty => _queue.IsEmpty;

    /// <summary>Adds an item.</summary>
    /// <param name="item">The item.</param>
    /// <exception cref="NotSupportedException">The item cannot be serialized; the queue is unchanged.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public void Put(T item) => _queue.Put(item);

    /// <summary>Adds an item without blocking a thread-pool thread while the buffer is full.</summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Stops waiting for room.</param>
    /// <returns>A task that completes when the item is in the queue.</returns>
    /// <exception cref="NotSupportedException">The item cannot be serialized.</exception>
    public Task PutAsync(T item, CancellationToken cancellationToken = default) => _queue.PutAsync(item, cancellationToken);

    /// <summary>Removes and returns the oldest item, waiting at most <paramref name="timeout"/> (null: forever).</summary>
    /// <param name="timeout">How long to wait while the queue is empty.</param>
    /// <returns>The item.</returns>
    /// <exception cref="TimeoutException">The queue stayed empty.</exception>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public T Get(TimeSpan? timeout = null) => _queue.Get(timeout);

    /// <summary>Removes and returns the oldest item if there is one; never waits.</summary>
    /// <param name="item">The item, or default.</param>
    /// <returns>False if the queue is empty.</returns>
    /// <exception cref="ObjectDisposedException">This queue was closed in this process.</exception>
    public bool TryGet([MaybeNullWhen(false)] out T item) => _queue.TryGet(out item);

    /// <summary>Removes and returns the oldest item without blocking a thread-pool thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The item.</returns>
    /// <exception cref="OperationCanceledException">Cancelled before an item came.</exception>
    public Task<T> GetAsync(CancellationToken cancellationToken = default) => _queue.GetAsync(cancellationToken);

    /// <summary>Stops using the queue in this process, Python's <c>close()</c>.</summary>
    public void Close() => _queue.Close();

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => _queue.Dispose();

    /// <summary>Same as <see cref="Close"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync() => _queue.DisposeAsync();

    /// <summary>Describes the queue.</summary>
    /// <returns>For example "SimpleProcessQueue&lt;Int32&gt;(3 items)".</returns>
    public override string ToString() => $"SimpleProcessQueue<{typeof(T).Name}>({_queue.Count} items)";

    void IProcessShared.WriteHandle(WireWriter writer) => ((IProcessShared)_queue).WriteHandle(writer);

    internal static SimpleProcessQueue<T> ReadHandle(WireReader reader) => new(ProcessQueue<T>.ReadHandle(reader));
}
