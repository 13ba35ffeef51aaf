using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

using Multiprocessing.Managers;

namespace Multiprocessing;

/// <summary>What managed locks, semaphores and conditions share: Python's <c>acquire(block, timeout)</c> and
/// <c>release()</c> as a request to the manager, with the same overloads as <see cref="ProcessLockBase"/>.</summary>
/// <remarks>Process-safe. Disposing the proxy gives up the process's hold on the object, never the lock.</remarks>
public abstract class ManagedLockBase : IProcessLock, IManagedProxy, IProcessShared, IAsyncDisposable
{
    private protected ManagedLockBase(ProxyRef reference) => Ref = reference;

    ProxyRef IManagedProxy.Ref => Ref;

    private protected ProxyRef Ref { get; }

    /// <summary>Waits until acquired; dispose the key to release.</summary>
    /// <returns>The key.</returns>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    public LockReleaser Acquire()
    {
        Acquire(null);
        return new LockReleaser(this);
    }

    /// <summary>Waits up to a timeout.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>True if acquired.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative timeout.</exception>
    public bool Acquire(TimeSpan? timeout) => AcquireCore(true, timeout);

    /// <summary>Python's <c>acquire(block, timeout)</c>.</summary>
    /// <param name="block">False tries once.</param>
    /// <param name="timeout">With block, null waits forever.</param>
    /// <returns>True if acquired.</returns>
    public bool Acquire(bool block, TimeSpan? timeout = null) => AcquireCore(block, timeout);

    /// <summary>Acquires if that is possible at once; never blocks.</summary>
    /// <returns>True if acquired.</returns>
    public bool TryAcquire() => AcquireCore(false, null);

    /// <summary>Releases once.</summary>
    /// <exception cref="InvalidOperationException">Nothing to release, or (reentrant lock, condition) the caller
    /// does not hold it, or a bounded semaphore would pass its initial value.</exception>
    public virtual void Release() => Ref.Call("release", this);

    /// <summary>Waits without blocking the caller's thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The key.</returns>
    /// <exception cref="OperationCanceledException">Cancelled first.</exception>
    public async Task<LockReleaser> AcquireAsync(CancellationToken cancellationToken = default)
    {
        await AcquireAsync(Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
        return new LockReleaser(this);
    }

    /// <summary>Waits up to a timeout without blocking the caller's thread.</summary>
    /// <param name="timeout">How long to wait.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>True if acquired.</returns>
    /// <remarks>The owner of a lock taken this way is the pool thread that took it.</remarks>
    public Task<bool> AcquireAsync(TimeSpan timeout, CancellationToken cancellationToken = default) =>
        ManagedAsync.Until(slice => Acquire(slice), timeout, cancellationToken);

    /// <summary>Gives up this process's hold on the object (not the lock itself).</summary>
    public void Dispose()
    {
        Ref.Release();
        GC.SuppressFinalize(this);
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the proxy.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"{GetType().Name}({Ref})";

    void IProcessShared.WriteHandle(WireWriter writer) => Ref.WriteHandle(writer);

    private bool AcquireCore(bool block, TimeSpan? timeout)
    {
        long ticks = WireTimeout.Encode(timeout);
        var request = Ref.Begin("acquire", this);
        request.Bool(block);
        request.Int64(ticks);
        return Ref.Client.Send(request).Bool();
    }
}

/// <summary>A lock or reentrant lock that lives in a manager process, Python's <c>manager.Lock()</c> and
/// <c>manager.RLock()</c>. The owner is the calling thread of the calling process.</summary>
/// <remarks>Process-safe. When a process that holds it dies, the manager releases it, so nobody deadlocks (Python's
/// manager keeps it locked forever).</remarks>
public sealed class ManagedLock : ManagedLockBase
{
    internal ManagedLock(ProxyRef reference)
        : base(reference)
    {
    }

    /// <summary>Whether some thread of some process holds the lock.</summary>
    public bool Locked => Ref.Call("locked", this).Bool();

    /// <summary>Whether the calling thread holds it.</summary>
    public bool IsOwnedByCurrentThread => Ref.Call("mine", this).Bool();

    /// <summary>How many times the calling thread holds it (reentrant lock), or 0.</summary>
    public int RecursionCount => Ref.Call("count", this).Int32();

    internal long Id => Ref.Id;

    internal ManagerClient Client => Ref.Client;

    internal static ManagedLock ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>A semaphore or bounded semaphore that lives in a manager process, Python's <c>manager.Semaphore(n)</c>
/// and <c>manager.BoundedSemaphore(n)</c>.</summary>
/// <remarks>Process-safe.</remarks>
public sealed class ManagedSemaphore : ManagedLockBase
{
    internal ManagedSemaphore(ProxyRef reference)
        : base(reference)
    {
    }

    /// <summary>The current count.</summary>
    public int Value => Ref.Call("value", this).Int32();

    /// <summary>Gives one slot back.</summary>
    /// <exception cref="InvalidOperationException">A bounded semaphore would go past its initial value.</exception>
    public override void Release() => Release(1);

    /// <summary>Gives slots back.</summary>
    /// <param name="count">How many; at least 1.</param>
    /// <exception cref="InvalidOperationException">A bounded semaphore would go past its initial value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A count below 1.</exception>
    public void Release(int count)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var request = Ref.Begin("release", this);
        request.Int32(count);
        Ref.Client.Send(request);
    }

    internal static ManagedSemaphore ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>A condition variable that lives in a manager process, Python's <c>manager.Condition(lock)</c>.</summary>
/// <remarks>Process-safe. Its lock is a managed reentrant lock unless one is given.</remarks>
public sealed class ManagedCondition : ManagedLockBase
{
    internal ManagedCondition(ProxyRef reference)
        : base(reference)
    {
    }

    /// <summary>Releases the lock, waits for a notify, and takes the lock again; Python's <c>wait(timeout)</c>.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>False if the timeout passed first.</returns>
    /// <exception cref="InvalidOperationException">The caller does not hold the lock.</exception>
    public bool Wait(TimeSpan? timeout = null)
    {
        long ticks = WireTimeout.Encode(timeout);
        var request = Ref.Begin("wait", this);
        request.Int64(ticks);
        return Ref.Client.Send(request).Bool();
    }

    /// <summary>Waits until a predicate holds, Python's <c>wait_for</c>.</summary>
    /// <param name="predicate">Checked with the lock held.</param>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>The predicate's last result.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="predicate"/> is null.</exception>
    public bool WaitFor(Func<bool> predicate, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        return Blocking.WaitFor(predicate, timeout, t => Wait(t));
    }

    /// <summary>Wakes up to <paramref name="n"/> waiters.</summary>
    /// <param name="n">How many.</param>
    /// <exception cref="InvalidOperationException">The caller does not hold the lock.</exception>
    public void Notify(int n = 1)
    {
        var request = Ref.Begin("notify", this);
        request.Int32(n);
        Ref.Client.Send(request);
    }

    /// <summary>Wakes every waiter.</summary>
    /// <exception cref="InvalidOperationException">The caller does not hold the lock.</exception>
    public void NotifyAll() => Notify(int.MaxValue);

    internal static ManagedCondition ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>An event that lives in a manager process, Python's <c>manager.Event()</c>.</summary>
/// <remarks>Process-safe.</remarks>
public sealed class ManagedEvent : IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedEvent(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>Whether the event is set.</summary>
    public bool IsSet => _ref.Call("isset", this).Bool();

    /// <summary>Sets the event and wakes every waiter.</summary>
    public void Set() => _ref.Call("set", this);

    /// <summary>Clears the event.</summary>
    public void Clear() => _ref.Call("clear", this);

    /// <summary>Waits until the event is set.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>False if the timeout passed first.</returns>
    public bool Wait(TimeSpan? timeout = null)
    {
        long ticks = WireTimeout.Encode(timeout);
        var request = _ref.Begin("wait", this);
        request.Int64(ticks);
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>Waits until the event is set, without blocking the caller's thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>A task that completes when the event is set.</returns>
    public Task WaitAsync(CancellationToken cancellationToken = default) => WaitAsync(Timeout.InfiniteTimeSpan, cancellationToken);

    /// <summary>Waits up to a timeout, without blocking the caller's thread.</summary>
    /// <param name="timeout">How long to wait.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>False if the timeout passed first.</returns>
    public Task<bool> WaitAsync(TimeSpan timeout, CancellationToken cancellationToken = default) =>
        ManagedAsync.Until(slice => Wait(slice), timeout, cancellationToken);

    /// <summary>Gives up this process's hold on the event object.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the proxy.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"ManagedEvent({_ref})";

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedEvent ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>A barrier that lives in a manager process, Python's <c>manager.Barrier(parties, timeout=...)</c>.</summary>
/// <remarks>Process-safe. A party whose process dies while it waits breaks the barrier for the others.</remarks>
public sealed class ManagedBarrier : IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedBarrier(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>How many parties must arrive.</summary>
    public int Parties => _ref.Call("parties", this).Int32();

    /// <summary>How many wait now.</summary>
    public int NWaiting => _ref.Call("nwaiting", this).Int32();

    /// <summary>Whether the barrier is broken.</summary>
    public bool Broken => _ref.Call("broken", this).Bool();

    /// <summary>Waits for every party; returns this party's arrival index (0 to Parties - 1).</summary>
    /// <param name="timeout">Null uses the barrier's default timeout; a timeout breaks the barrier.</param>
    /// <returns>The arrival index.</returns>
    /// <exception cref="BrokenBarrierException">The barrier broke, was reset, or timed out.</exception>
    public int Wait(TimeSpan? timeout = null)
    {
        long ticks = timeout is null ? -2 : WireTimeout.Encode(timeout);
        var request = _ref.Begin("wait", this);
        request.Int64(ticks);
        return _ref.Client.Send(request).Int32();
    }

    /// <summary>Waits for every party without blocking the caller's thread.</summary>
    /// <param name="timeout">Null uses the barrier's default timeout.</param>
    /// <param name="cancellationToken">Not observed once the party has arrived: a party cannot leave a barrier.</param>
    /// <returns>The arrival index.</returns>
    public Task<int> WaitAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        Task.Run(() => Wait(timeout), cancellationToken);

    /// <summary>Breaks the barrier: waiters and later arrivals get <see cref="BrokenBarrierException"/>.</summary>
    public void Abort() => _ref.Call("abort", this);

    /// <summary>Returns the barrier to its first state; current waiters get <see cref="BrokenBarrierException"/>.</summary>
    public void Reset() => _ref.Call("reset", this);

    /// <summary>Gives up this process's hold on the barrier object.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the proxy.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"ManagedBarrier({_ref})";

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedBarrier ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>A queue that lives in a manager process, Python's <c>manager.Queue(maxsize)</c>. Unlike
/// <see cref="ProcessQueue{T}"/> it can be reached over TCP by processes this one did not start.</summary>
/// <typeparam name="T">The item type.</typeparam>
/// <remarks>Process-safe. A full or empty queue is a <see cref="TimeoutException"/>, as for the other queues.</remarks>
public class ManagedQueue<T> : IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private protected readonly ProxyRef _ref;

    internal ManagedQueue(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>How many items are queued.</summary>
    public int Count => _ref.Call("len", this).Int32();

    /// <summary>Whether no item is queued.</summary>
    public bool IsEmpty => Count == 0;

    /// <summary>Whether a bounded queue is at its limit.</summary>
    public bool IsFull => _ref.Call("full", this).Bool();

    /// <summary>The bound, or 0 for none.</summary>
    public int MaxSize => _ref.Call("maxsize", this).Int32();

    /// <summary>Puts an item, waiting for room in a bounded queue.</summary>
    /// <param name="item">The item.</param>
    /// <param name="timeout">Null waits forever.</param>
    /// <exception cref="TimeoutException">The queue stayed full.</exception>
    public void Put(T item, TimeSpan? timeout = null) => PutCore(item, true, timeout);

    /// <summary>Puts an item if there is room; never blocks.</summary>
    /// <param name="item">The item.</param>
    /// <returns>False if the queue is full.</returns>
    public bool TryPut(T item)
    {
        try
        {
            PutCore(item, false, null);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>Puts an item without blocking the caller's thread.</summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Stops waiting for room.</param>
    /// <returns>A task that completes once the item is queued.</returns>
    public async Task PutAsync(T item, CancellationToken cancellationToken = default) =>
        await ManagedAsync.Until(slice => TryPutFor(item, slice), null, cancellationToken).ConfigureAwait(false);

    /// <summary>Takes the next item, waiting for one.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>The item.</returns>
    /// <exception cref="TimeoutException">The queue stayed empty.</exception>
    public T Get(TimeSpan? timeout = null) => GetCore(true, timeout);

    /// <summary>Takes the next item if there is one; never blocks.</summary>
    /// <param name="item">The item.</param>
    /// <returns>False if the queue is empty.</returns>
    public bool TryGet(out T item)
    {
        try
        {
            item = GetCore(false, null);
            return true;
        }
        catch (TimeoutException)
        {
            item = default!;
            return false;
        }
    }

    /// <summary>Takes the next item without blocking the caller's thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The item.</returns>
    public async Task<T> GetAsync(CancellationToken cancellationToken = default)
    {
        T result = default!;
        await ManagedAsync.Until(
            slice =>
            {
                try
                {
                    result = GetCore(true, slice);
                    return true;
                }
                catch (TimeoutException)
                {
                    return false;
                }
            },
            null,
            cancellationToken).ConfigureAwait(false);
        return result;
    }

    /// <summary>Gives up this process's hold on the queue object.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the proxy.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"{GetType().Name.Split('`')[0]}<{typeof(T).Name}>({_ref})";

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedQueue<T> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));

    private bool TryPutFor(T item, TimeSpan slice)
    {
        try
        {
            PutCore(item, true, slice);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    private void PutCore(T item, bool block, TimeSpan? timeout)
    {
        long ticks = WireTimeout.Encode(timeout);
        var v = _ref.Encode(item);
        var request = _ref.Begin("put", this);
        v.Write(request);
        request.Bool(block);
        request.Int64(ticks);
        _ref.Client.Send(request);
    }

    private T GetCore(bool block, TimeSpan? timeout)
    {
        long ticks = WireTimeout.Encode(timeout);
        var request = _ref.Begin("get", this);
        request.Bool(block);
        request.Int64(ticks);
        return _ref.Decode<T>(_ref.Client.Send(request));
    }
}

/// <summary>A managed queue that also counts unfinished items, Python's <c>manager.JoinableQueue()</c>.</summary>
/// <typeparam name="T">The item type.</typeparam>
/// <remarks>Process-safe.</remarks>
public sealed class ManagedJoinableQueue<T> : ManagedQueue<T>
{
    internal ManagedJoinableQueue(ProxyRef reference)
        : base(reference)
    {
    }

    /// <summary>Items put and not yet marked done.</summary>
    public int UnfinishedTasks => _ref.Call("unfinished", this).Int32();

    /// <summary>Marks one item done.</summary>
    /// <exception cref="InvalidOperationException">Called more times than items were put.</exception>
    public void TaskDone() => _ref.Call("taskdone", this);

    /// <summary>Waits until every item put has been marked done.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>False if the timeout passed first.</returns>
    public bool Join(TimeSpan? timeout = null)
    {
        long ticks = WireTimeout.Encode(timeout);
        var request = _ref.Begin("join", this);
        request.Int64(ticks);
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>Waits until every item is done, without blocking the caller's thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>A task that completes when every item is done.</returns>
    public Task JoinAsync(CancellationToken cancellationToken = default) =>
        ManagedAsync.Until(slice => Join(slice), null, cancellationToken);

    internal static new ManagedJoinableQueue<T> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}
