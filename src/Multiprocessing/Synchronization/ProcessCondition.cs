using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// A condition variable shared by processes, Python's <c>multiprocessing.Condition</c>: tied to a lock (an RLock
/// unless one is given), Wait releases it while sleeping, Notify(n) wakes up to n waiters. Create with
/// <see cref="Mp.Condition"/>.
/// </summary>
/// <remarks>
/// Process-safe and thread-safe. Notify hands out exactly as many wake-ups as it promises, so a waiter whose
/// sleep ends by timeout never takes a notification meant for another. Wait and Notify require the lock, as in
/// Python.
/// </remarks>
public sealed unsafe class ProcessCondition : IProcessLock, IProcessShared, IAsyncDisposable
{
    internal const int Size = 16;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private readonly Func<bool> _signalled;
    private int _disposed;

    internal ProcessCondition(SharedSegment segment, ProcessLockBase lck)
    {
        _segment = segment;
        segment.AddUser();
        _p = segment.Pointer;
        Lock = lck;
        _signalled = () => Volatile.Read(ref *Signals) > 0;
    }

    /// <summary>The lock this condition is tied to.</summary>
    public ProcessLockBase Lock { get; }

    private int* Seq => (int*)_p;

    private int* Waiters => (int*)(_p + 4);

    private int* Sleepers => (int*)(_p + 8);

    private int* Signals => (int*)(_p + 12);

    private string LockKind => Lock is ProcessRLock ? "RLock" : "lock";

    /// <inheritdoc/>
    public LockReleaser Acquire()
    {
        Lock.Acquire();
        return new LockReleaser(this);
    }

    /// <inheritdoc/>
    public bool Acquire(TimeSpan? timeout) => Lock.Acquire(timeout);

    /// <inheritdoc/>
    public bool TryAcquire() => Lock.TryAcquire();

    /// <inheritdoc/>
    public void Release() => Lock.Release();

    /// <inheritdoc/>
    public Task<LockReleaser> AcquireAsync(CancellationToken cancellationToken = default) =>
        LockReleaser.After(Lock.AcquireAsync(Timeout.InfiniteTimeSpan, cancellationToken), this);

    /// <inheritdoc/>
    public Task<bool> AcquireAsync(TimeSpan timeout, CancellationToken cancellationToken = default) => Lock.AcquireAsync(timeout, cancellationToken);

    /// <summary>Releases the lock, sleeps until notified or until <paramref name="timeout"/> passes (null: forever),
    /// then takes the lock back, as Python's <c>wait(timeout)</c>.</summary>
    /// <returns>False if the timeout passed without a notification.</returns>
    /// <exception cref="InvalidOperationException">The calling thread does not hold the lock.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Wait(TimeSpan? timeout = null)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        int saved = Lock.Mutex.ReleaseAll(LockKind);
        return WaitReleased(saved, Blocking.OwnerId, deadline, CancellationToken.None);
    }

    /// <summary>Waits without blocking a thread-pool thread. The lock is released at once and taken back for the
    /// calling thread's identity, so release it from the thread that called this.</summary>
    /// <returns>False if the timeout passed without a notification.</returns>
    /// <exception cref="InvalidOperationException">The calling thread does not hold the lock.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled; the lock is
    /// held again before this is thrown.</exception>
    public Task<bool> WaitAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        int saved = Lock.Mutex.ReleaseAll(LockKind);
        long me = Blocking.OwnerId;
        return Blocking.OffThread(ct => WaitReleased(saved, me, deadline, ct), () => Blocking.Nudge(Seq), cancellationToken);
    }

    /// <summary>Waits until <paramref name="predicate"/> is true, re-checking after each notification, as Python's
    /// <c>wait_for(predicate, timeout)</c>.</summary>
    /// <returns>The predicate's last value.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="predicate"/> is null.</exception>
    /// <exception cref="InvalidOperationException">The calling thread does not hold the lock.</exception>
    public bool WaitFor(Func<bool> predicate, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(predicate);
        return Blocking.WaitFor(predicate, timeout, t => Wait(t));
    }

    /// <summary>Wakes up to <paramref name="n"/> of the processes and threads waiting now.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="n"/> is negative.</exception>
    /// <exception cref="InvalidOperationException">The calling thread does not hold the lock.</exception>
    public void Notify(int n = 1)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (!Lock.Mutex.IsMine) throw new InvalidOperationException($"cannot notify on a condition whose {LockKind} this thread does not hold");

        // Under the lock no one enters or leaves the wait, so these counts are exact.
        int available = Volatile.Read(ref *Sleepers) - Volatile.Read(ref *Signals);
        int wake = Math.Min(n, available);
        if (wake <= 0) return;
        Interlocked.Add(ref *Signals, wake);
        Blocking.Nudge(Seq);
        GC.KeepAlive(_segment);
    }

    /// <summary>Wakes every process and thread waiting now.</summary>
    /// <exception cref="InvalidOperationException">The calling thread does not hold the lock.</exception>
    public void NotifyAll() => Notify(int.MaxValue);

    /// <summary>Stops using the condition (not its lock) in this process.</summary>
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

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        _segment.Write(writer);
        SharedHandles.Write(writer, Lock);
    }

    internal static ProcessCondition ReadHandle(WireReader reader)
    {
        var segment = SharedSegment.Read(reader);
        var lck = (ProcessLockBase)SharedHandles.Read(reader, typeof(ProcessLockBase));
        return new ProcessCondition(segment, lck);
    }

    private bool WaitReleased(int saved, long me, long deadline, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref *Sleepers);
        bool counted = true;
        try
        {
            while (true)
            {
                Exception? cancelled = null;
                try
                {
                    Blocking.Wait(Seq, Waiters, deadline, _signalled, check: null, cancellationToken);
                }
                catch (OperationCanceledException ex)
                {
                    cancelled = ex;
                }

                Lock.Mutex.RestoreAs(me, saved);
                if (cancelled is not null) throw cancelled;

                // Holding the lock again: take a wake-up if one is left, else it went to another waiter.
                if (Volatile.Read(ref *Signals) > 0)
                {
                    Interlocked.Decrement(ref *Signals);
                    Interlocked.Decrement(ref *Sleepers);
                    counted = false;
                    return true;
                }

                if (deadline <= System.Diagnostics.Stopwatch.GetTimestamp()) return false;
                saved = Lock.Mutex.ReleaseAllAs(me, LockKind);
            }
        }
        finally
        {
            if (counted) Interlocked.Decrement(ref *Sleepers);
            GC.KeepAlive(_segment);
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
