using Multiprocessing.Platform;

namespace Multiprocessing.Synchronization;

/// <summary>
/// The lock word shared by <see cref="ProcessLock"/>, <see cref="ProcessRLock"/> and the barrier's internal lock.
/// Layout (24 bytes): owner (pid &lt;&lt; 32 | managed thread id, 0 when free) at 0, recursion count at 8, the
/// futex word at 12, the sleeper count at 16, a "wake on its way" flag at 20. Recording the owner's pid is what lets a waiter notice that the
/// holder died.
/// </summary>
internal sealed unsafe class FutexMutex
{
    internal const int Size = 24;

    private readonly byte* _p;
    private readonly bool _reentrant;
    private readonly Func<bool> _tryAcquire;
    private readonly Action _checkAbandoned;

    internal FutexMutex(byte* p, bool reentrant)
    {
        _p = p;
        _reentrant = reentrant;
        _tryAcquire = TryAcquireIfFree;
        _checkAbandoned = CheckAbandoned;
    }

    private long* Owner => (long*)_p;

    private int* Count => (int*)(_p + 8);

    private int* Seq => (int*)(_p + 12);

    private int* Waiters => (int*)(_p + 16);

    private int* WakePending => (int*)(_p + 20);

    internal bool Locked => Volatile.Read(ref *Owner) != 0;

    internal bool IsMine => Volatile.Read(ref *Owner) == Blocking.OwnerId;

    internal int RecursionCount => IsMine ? (_reentrant ? *Count : 1) : 0;

    internal bool TryAcquire() => TryAcquire(Blocking.OwnerId);

    // While waiting, look before compare-and-swap: a failed CAS still takes the cache line away from the holder.
    private bool TryAcquireIfFree() => (Volatile.Read(ref *Owner) == 0 || _reentrant) && TryAcquire(Blocking.OwnerId);

    internal bool TryAcquire(long me)
    {
        if (_reentrant && Volatile.Read(ref *Owner) == me)
        {
            (*Count)++;
            return true;
        }

        if (Interlocked.CompareExchange(ref *Owner, me, 0) != 0) return false;
        if (_reentrant) *Count = 1;
        return true;
    }

    internal bool Acquire(long deadline, CancellationToken cancellationToken = default)
    {
        if (TryAcquire()) return true;
        if (deadline <= System.Diagnostics.Stopwatch.GetTimestamp()) return false;
        if (Blocking.Spin(_tryAcquire)) return true;
        return Blocking.Wait(Seq, Waiters, deadline, _tryAcquire, _checkAbandoned, cancellationToken, WakePending);
    }

    /// <summary>Acquires on behalf of <paramref name="owner"/> (an async caller whose wait runs on another thread).</summary>
    internal bool AcquireAs(long owner, long deadline, CancellationToken cancellationToken)
    {
        if (TryAcquire(owner)) return true;
        return Blocking.Wait(Seq, Waiters, deadline, () => TryAcquire(owner), () => CheckAbandoned(owner), cancellationToken, WakePending);
    }

    internal void Release(string what)
    {
        long me = Blocking.OwnerId;
        if (_reentrant)
        {
            if (Volatile.Read(ref *Owner) != me) throw new InvalidOperationException($"cannot release an {what} that this thread does not hold");
            if (--(*Count) > 0) return;
            Interlocked.Exchange(ref *Owner, 0);
        }
        else
        {
            // Python's Lock may be released by any process or thread, like a binary semaphore.
            while (true)
            {
                long owner = Volatile.Read(ref *Owner);
                if (owner == 0) throw new InvalidOperationException($"cannot release an unlocked {what}");
                if (Interlocked.CompareExchange(ref *Owner, 0, owner) == owner) break;
            }
        }

        Blocking.WakeOne(Seq, Waiters, WakePending);
    }

    /// <summary>Lets go completely (a condition's wait); returns what <see cref="RestoreAs"/> needs.</summary>
    internal int ReleaseAll(string what) => ReleaseAllAs(Blocking.OwnerId, what);

    internal int ReleaseAllAs(long me, string what)
    {
        if (Volatile.Read(ref *Owner) != me) throw new InvalidOperationException($"cannot wait on a condition whose {what} this thread does not hold");
        int count = _reentrant ? *Count : 1;
        Interlocked.Exchange(ref *Owner, 0);
        Blocking.WakeOne(Seq, Waiters, WakePending);
        return count;
    }

    /// <summary>Takes the lock back for <paramref name="me"/> at the recursion level <paramref name="count"/>.</summary>
    internal void RestoreAs(long me, int count)
    {
        try
        {
            AcquireAs(me, long.MaxValue, CancellationToken.None);
        }
        finally
        {
            // An abandoned lock is ours after the exception too; restore the recursion level either way.
            if (_reentrant && Volatile.Read(ref *Owner) == me) *Count = count;
        }
    }

    internal void Nudge() => Blocking.Nudge(Seq);

    /// <summary>Takes the lock if its holder has died; true if this thread now holds it.</summary>
    internal bool TakeOverIfOwnerDead()
    {
        try
        {
            CheckAbandoned(Blocking.OwnerId);
            return false;
        }
        catch (AbandonedLockException)
        {
            return true;
        }
    }

    /// <summary>The pid of the holder, 0 when free.</summary>
    internal int OwnerPid => Blocking.PidOf(Volatile.Read(ref *Owner));

    private void CheckAbandoned() => CheckAbandoned(Blocking.OwnerId);

    private void CheckAbandoned(long me)
    {
        long owner = Volatile.Read(ref *Owner);
        if (owner == 0) return;
        int pid = Blocking.PidOf(owner);
        if (OsShared.IsAlive(pid)) return;
        if (Interlocked.CompareExchange(ref *Owner, me, owner) != owner) return;
        if (_reentrant) *Count = 1;
        throw new AbandonedLockException(pid);
    }
}
