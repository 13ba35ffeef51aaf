using Multiprocessing.Platform;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// A counting semaphore shared by processes, Python's <c>multiprocessing.Semaphore</c> and (with a bound)
/// <c>BoundedSemaphore</c>. Create with <see cref="Mp.Semaphore"/> or <see cref="Mp.BoundedSemaphore"/>.
/// </summary>
/// <remarks>
/// Process-safe and thread-safe. Each process's slots are counted in the shared state: when a process is killed
/// holding slots, the next waiter gets <see cref="AbandonedLockException"/> within about 100 ms and holds one of
/// them (the rest return to the count). A process that exits normally is taken to have consumed what it took, as
/// in the signalling use of semaphores, so its slots are forgotten rather than returned. Up to 64 processes at a
/// time are tracked; acquisitions beyond that still count but are not recovered.
/// </remarks>
public sealed unsafe class ProcessSemaphore : IProcessLock, IProcessShared, IAsyncDisposable
{
    private const int Slots = 64;
    internal const int Size = 16 + Slots * 8;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private readonly Func<bool> _tryAcquire;
    private readonly Action _checkAbandoned;
    private int _slot = -1;
    private int _disposed;

    internal ProcessSemaphore(SharedSegment segment)
    {
        _segment = segment;
        segment.AddUser();
        _p = segment.Pointer;
        _tryAcquire = TryTake;
        _checkAbandoned = CheckAbandoned;
        ExitHooks.Register(this, ForgetMySlots);
    }

    internal static ProcessSemaphore Create(int initial, int? bound)
    {
        if (initial < 0) throw new ArgumentOutOfRangeException(nameof(initial), initial, "a semaphore's initial value cannot be negative");
        var segment = SharedSegment.Create(Size, "semaphore");
        *(int*)segment.Pointer = initial;
        ((int*)segment.Pointer)[3] = bound ?? int.MaxValue;
        return new ProcessSemaphore(segment);
    }

    private int* Count => (int*)_p;

    private int* Seq => (int*)(_p + 4);

    private int* Waiters => (int*)(_p + 8);

    private int Bound => ((int*)_p)[3];

    private int* HolderPid(int i) => (int*)(_p + 16 + i * 8);

    private int* HolderCount(int i) => (int*)(_p + 20 + i * 8);

    /// <summary>The current count, as Python's <c>get_value()</c>.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public int Value
    {
        get
        {
            ThrowIfDisposed();
            return Volatile.Read(ref *Count);
        }
    }

    /// <summary>Whether this is a bounded semaphore (releasing past the initial value throws).</summary>
    public bool IsBounded => Bound != int.MaxValue;

    /// <inheritdoc/>
    public LockReleaser Acquire()
    {
        Acquire(null);
        return new LockReleaser(this);
    }

    /// <summary>Takes one slot, waiting at most <paramref name="timeout"/> (null: forever).</summary>
    /// <returns>True if taken, false on timeout.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="AbandonedLockException">A holder died; the caller now holds one of its slots.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Acquire(TimeSpan? timeout)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        bool taken = TryTake()
            || (deadline > System.Diagnostics.Stopwatch.GetTimestamp()
                && (Blocking.Spin(_tryAcquire) || Blocking.Wait(Seq, Waiters, deadline, _tryAcquire, _checkAbandoned)));
        GC.KeepAlive(_segment);
        return taken;
    }

    /// <summary>Python's <c>acquire(block, timeout)</c>: with <paramref name="block"/> false, never waits.</summary>
    /// <returns>True if taken.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="AbandonedLockException">A holder died; the caller now holds one of its slots.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Acquire(bool block, TimeSpan? timeout = null) => block ? Acquire(timeout) : TryAcquire();

    /// <inheritdoc/>
    public bool TryAcquire()
    {
        ThrowIfDisposed();
        return TryTake();
    }

    /// <summary>Returns one slot; any process may, and an unbounded semaphore may grow past its initial value.</summary>
    /// <exception cref="InvalidOperationException">A bounded semaphore would exceed its initial value.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Release() => Release(1);

    /// <summary>Returns <paramref name="count"/> slots at once.</summary>
    /// <param name="count">How many; at least 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is less than 1.</exception>
    /// <exception cref="InvalidOperationException">A bounded semaphore would exceed its initial value.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Release(int count)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        int bound = Bound;
        while (true)
        {
            int v = Volatile.Read(ref *Count);
            if ((long)v + count > bound)
                throw new InvalidOperationException(bound == int.MaxValue ? "the semaphore's count would overflow" : $"a bounded semaphore cannot be released past its initial value {bound}");
            if (Interlocked.CompareExchange(ref *Count, v + count, v) == v) break;
        }

        NoteReturned(count);
        Blocking.Wake(Seq, Waiters, count);
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
        if (TryTake()) return Task.FromResult(true);
        return Blocking.OffThread(ct => Blocking.Wait(Seq, Waiters, deadline, _tryAcquire, _checkAbandoned, ct), () => Blocking.Nudge(Seq), cancellationToken);
    }

    /// <summary>Stops using the semaphore in this process; the shared state goes when every process has let go.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        ExitHooks.Unregister(this);
        _segment.RemoveUser();
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the semaphore.</summary>
    /// <returns>For example "ProcessSemaphore(value=2)".</returns>
    public override string ToString() => $"ProcessSemaphore(value={Volatile.Read(ref *Count)}{(IsBounded ? $", bound={Bound}" : string.Empty)})";

    void IProcessShared.WriteHandle(WireWriter writer) => _segment.Write(writer);

    internal static ProcessSemaphore ReadHandle(WireReader reader) => new(SharedSegment.Read(reader));

    private bool TryTake()
    {
        while (true)
        {
            int v = Volatile.Read(ref *Count);
            if (v <= 0) return false;
            if (Interlocked.CompareExchange(ref *Count, v - 1, v) == v) break;
        }

        int slot = MySlot();
        if (slot >= 0) Interlocked.Increment(ref *HolderCount(slot));
        return true;
    }

    private int MySlot()
    {
        int pid = Blocking.Pid;
        if (_slot >= 0 && Volatile.Read(ref *HolderPid(_slot)) == pid) return _slot;
        for (int i = 0; i < Slots; i++)
        {
            if (Volatile.Read(ref *HolderPid(i)) == pid) return _slot = i;
        }

        for (int i = 0; i < Slots; i++)
        {
            if (Interlocked.CompareExchange(ref *HolderPid(i), pid, 0) == 0) return _slot = i;
        }

        // Full: take over a slot whose process is gone and holds nothing.
        for (int i = 0; i < Slots; i++)
        {
            int other = Volatile.Read(ref *HolderPid(i));
            if (Volatile.Read(ref *HolderCount(i)) == 0 && !OsShared.IsAlive(other)
                && Interlocked.CompareExchange(ref *HolderPid(i), pid, other) == other) return _slot = i;
        }

        return -1;
    }

    private void NoteReturned(int count)
    {
        // Prefer our own slots; a release by a process that took nothing returns someone else's (signalling).
        int slot = MySlot();
        if (slot >= 0) count -= TakeFrom(slot, count);
        for (int i = 0; i < Slots && count > 0; i++) count -= TakeFrom(i, count);
    }

    private int TakeFrom(int slot, int wanted)
    {
        while (true)
        {
            int held = Volatile.Read(ref *HolderCount(slot));
            if (held <= 0) return 0;
            int take = Math.Min(held, wanted);
            if (Interlocked.CompareExchange(ref *HolderCount(slot), held - take, held) == held) return take;
        }
    }

    private void CheckAbandoned()
    {
        for (int i = 0; i < Slots; i++)
        {
            int pid = Volatile.Read(ref *HolderPid(i));
            if (pid == 0 || pid == Blocking.Pid || Volatile.Read(ref *HolderCount(i)) <= 0 || OsShared.IsAlive(pid)) continue;
            int held = Interlocked.Exchange(ref *HolderCount(i), 0);
            Interlocked.CompareExchange(ref *HolderPid(i), 0, pid);
            if (held <= 0) continue;
            Interlocked.Add(ref *Count, held);
            bool mine = TryTake();
            Blocking.Wake(Seq, Waiters, held);
            if (mine) throw new AbandonedLockException(pid);
        }
    }

    private void ForgetMySlots()
    {
        for (int i = 0; i < Slots; i++)
        {
            if (Volatile.Read(ref *HolderPid(i)) != Blocking.Pid) continue;
            Volatile.Write(ref *HolderCount(i), 0);
            Interlocked.CompareExchange(ref *HolderPid(i), 0, Blocking.Pid);
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
