using Multiprocessing.SharedMemory;
using Multiprocessing.Serialization;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// What <see cref="ProcessLock"/>, <see cref="ProcessRLock"/>, <see cref="ProcessSemaphore"/> and
/// <see cref="ProcessCondition"/> share: acquire with a timeout, release, scoped use with <c>using</c>.
/// </summary>
/// <remarks>Implementations are safe to use from any thread of any process that holds them.</remarks>
public interface IProcessLock : IDisposable
{
    /// <summary>Blocks until acquired and returns a key whose disposal releases, for <c>using (l.Acquire())</c>.</summary>
    /// <exception cref="AbandonedLockException">The holder died; the caller now holds the lock.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    LockReleaser Acquire();

    /// <summary>Acquires, waiting at most <paramref name="timeout"/> (null: forever), as Python's
    /// <c>acquire(timeout=...)</c>.</summary>
    /// <returns>True if acquired, false on timeout.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="AbandonedLockException">The holder died; the caller now holds the lock.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    bool Acquire(TimeSpan? timeout);

    /// <summary>Acquires only if that needs no waiting. Never blocks.</summary>
    /// <returns>True if acquired.</returns>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    bool TryAcquire();

    /// <summary>Releases once.</summary>
    /// <exception cref="InvalidOperationException">Nothing to release (see each type).</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    void Release();

    /// <summary>Acquires without blocking a thread-pool thread; the returned key releases when disposed.</summary>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="AbandonedLockException">The holder died; the caller now holds the lock.</exception>
    Task<LockReleaser> AcquireAsync(CancellationToken cancellationToken = default);

    /// <summary>Acquires within <paramref name="timeout"/> without blocking a thread-pool thread.</summary>
    /// <returns>True if acquired, false on timeout.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="AbandonedLockException">The holder died; the caller now holds the lock.</exception>
    Task<bool> AcquireAsync(TimeSpan timeout, CancellationToken cancellationToken = default);
}

/// <summary>Releases what <see cref="IProcessLock.Acquire()"/> took when disposed, for <c>using</c> scopes. It
/// converts to <c>true</c>, so <c>Assert.True(lck.Acquire())</c> reads as Python's <c>acquire()</c>.</summary>
/// <remarks>Dispose it once: each disposal releases once.</remarks>
public readonly struct LockReleaser : IDisposable
{
    private readonly IProcessLock? _lock;

    internal LockReleaser(IProcessLock lck) => _lock = lck;

    internal static async Task<LockReleaser> After(Task<bool> acquiring, IProcessLock lck)
    {
        await acquiring.ConfigureAwait(false);
        return new LockReleaser(lck);
    }

    /// <summary>Releases the lock this key came from.</summary>
    /// <exception cref="InvalidOperationException">The lock was already released.</exception>
    public void Dispose() => _lock?.Release();

    /// <summary>True for a key that holds something.</summary>
    /// <param name="releaser">The key.</param>
    public static implicit operator bool(LockReleaser releaser) => releaser._lock is not null;
}

/// <summary>
/// The machinery <see cref="ProcessLock"/> and <see cref="ProcessRLock"/> share; see those types for semantics.
/// </summary>
/// <remarks>Process-safe and thread-safe.</remarks>
public abstract class ProcessLockBase : IProcessLock, IProcessShared, IAsyncDisposable
{
    private readonly SharedSegment _segment;
    private readonly FutexMutex _mutex;
    private readonly string _kind;
    private int _disposed;

    private protected unsafe ProcessLockBase(SharedSegment segment, bool reentrant, string kind)
    {
        _segment = segment;
        _kind = kind;
        segment.AddUser();
        _mutex = new FutexMutex(segment.Pointer, reentrant);
    }

    /// <summary>Whether some process or thread holds the lock now.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Locked
    {
        get
        {
            ThrowIfDisposed();
            return _mutex.Locked;
        }
    }

    /// <summary>Whether the calling thread of this process holds the lock.</summary>
    public bool IsOwnedByCurrentThread => _mutex.IsMine;

    internal FutexMutex Mutex => _mutex;

    /// <inheritdoc/>
    public LockReleaser Acquire()
    {
        Acquire(null);
        return new LockReleaser(this);
    }

    /// <inheritdoc/>
    public bool Acquire(TimeSpan? timeout)
    {
        ThrowIfDisposed();
        bool acquired = _mutex.Acquire(Blocking.Deadline(timeout));
        GC.KeepAlive(_segment);
        return acquired;
    }

    /// <summary>Python's <c>acquire(block, timeout)</c>: with <paramref name="block"/> false, never waits.</summary>
    /// <returns>True if acquired.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="AbandonedLockException">The holder died; the caller now holds the lock.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Acquire(bool block, TimeSpan? timeout = null) => block ? Acquire(timeout) : TryAcquire();

    /// <inheritdoc/>
    public bool TryAcquire()
    {
        ThrowIfDisposed();
        return _mutex.TryAcquire();
    }

    /// <summary>Releases once (see the derived type for who may).</summary>
    /// <exception cref="InvalidOperationException">The lock is not held, or (RLock) not by this thread.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Release()
    {
        ThrowIfDisposed();
        _mutex.Release(_kind);
        GC.KeepAlive(_segment);
    }

    /// <inheritdoc/>
    public Task<LockReleaser> AcquireAsync(CancellationToken cancellationToken = default) =>
        LockReleaser.After(AcquireAsync(Timeout.InfiniteTimeSpan, cancellationToken), this);

    /// <inheritdoc/>
    public Task<bool> AcquireAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        if (_mutex.TryAcquire()) return Task.FromResult(true);
        long me = Blocking.OwnerId;
        return Blocking.OffThread(ct => _mutex.AcquireAs(me, deadline, ct), _mutex.Nudge, cancellationToken);
    }

    /// <summary>Stops using the lock in this process; the shared state goes when every process has let go.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) _segment.RemoveUser();
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the lock's state.</summary>
    /// <returns>For example "ProcessLock(locked)".</returns>
    public override string ToString() => $"{GetType().Name}({(_mutex.Locked ? "locked" : "unlocked")})";

    void IProcessShared.WriteHandle(WireWriter writer) => _segment.Write(writer);

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}

/// <summary>
/// A lock shared by processes, Python's <c>multiprocessing.Lock</c>: not re-entrant, and any thread or process
/// may release it. Create with <see cref="Mp.Lock"/>; pass it to children by capturing it in a target's closure.
/// </summary>
/// <remarks>
/// Process-safe and thread-safe. The state lives in an anonymous shared segment, so it vanishes with the last
/// process using it, however that process ends. If the holder dies, the next waiter gets
/// <see cref="AbandonedLockException"/> within about 100 ms and holds the lock.
/// </remarks>
public sealed class ProcessLock : ProcessLockBase
{
    internal ProcessLock(SharedSegment segment)
        : base(segment, reentrant: false, "lock")
    {
    }

    internal static ProcessLock ReadHandle(WireReader reader) => new(SharedSegment.Read(reader));
}

/// <summary>
/// A re-entrant lock shared by processes, Python's <c>multiprocessing.RLock</c>: the owning thread may acquire it
/// again, and must release it as many times; only the owner may release it. Create with <see cref="Mp.RLock"/>.
/// </summary>
/// <remarks>
/// Process-safe and thread-safe. Ownership is per thread, as in Python: after
/// <see cref="ProcessLockBase.AcquireAsync(CancellationToken)"/> the owner is the thread that called it, so release
/// it before an <c>await</c> that may resume elsewhere, or use <see cref="ProcessLock"/> in async code. A dead owner
/// makes the next waiter get <see cref="AbandonedLockException"/>.
/// </remarks>
public sealed class ProcessRLock : ProcessLockBase
{
    internal ProcessRLock(SharedSegment segment)
        : base(segment, reentrant: true, "RLock")
    {
    }

    /// <summary>How many times the calling thread holds the lock (0 when it does not).</summary>
    public int RecursionCount => Mutex.RecursionCount;

    internal static ProcessRLock ReadHandle(WireReader reader) => new(SharedSegment.Read(reader));
}
