using Multiprocessing.Platform;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// A barrier for a fixed number of parties across processes, Python's <c>multiprocessing.Barrier</c>: each Wait
/// blocks until <see cref="Parties"/> callers have arrived, then all are released together. Create with
/// <see cref="Mp.Barrier"/>.
/// </summary>
/// <remarks>
/// Process-safe and thread-safe. The optional action runs once per pass, in the process of the last arrival,
/// before anyone is released; it travels with the barrier to other processes, so it must be able to travel like a
/// process target. The barrier breaks (every waiter gets <see cref="BrokenBarrierException"/>) on
/// <see cref="Abort"/>, on <see cref="Reset"/> while parties wait, when a wait times out, when the action throws,
/// or when a process that uses the barrier dies while others wait, so a dead party never hangs the rest.
/// </remarks>
public sealed unsafe class ProcessBarrier : IProcessShared, IDisposable, IAsyncDisposable
{
    private const int Users = 64;
    internal const int Size = 64 + Users * 4;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private readonly FutexMutex _mutex;
    private readonly Action? _action;
    private readonly TimeSpan? _defaultTimeout;
    private int _disposed;

    private ProcessBarrier(SharedSegment segment, Action? action, TimeSpan? timeout)
    {
        _segment = segment;
        segment.AddUser();
        _p = segment.Pointer;
        _mutex = new FutexMutex(_p, reentrant: false);
        _action = action;
        _defaultTimeout = timeout;
        Attach();
        ExitHooks.Register(this, Detach);
    }

    internal static ProcessBarrier Create(int parties, Action? action, TimeSpan? timeout)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(parties, 1);
        if (timeout is { } t) Blocking.Deadline(t);
        var segment = SharedSegment.Create(Size, "barrier");
        var p = segment.Pointer;
        *(int*)(p + 36) = -1;
        *(int*)(p + 40) = parties;
        return new ProcessBarrier(segment, action, timeout);
    }

    /// <summary>How many parties must arrive for the barrier to open.</summary>
    public int Parties => *(int*)(_p + 40);

    /// <summary>How many parties are waiting now, as Python's <c>n_waiting</c>.</summary>
    public int NWaiting => Volatile.Read(ref *BrokenFlag) != 0 ? 0 : Volatile.Read(ref *Arrived);

    /// <summary>Whether the barrier is broken, as Python's <c>broken</c>.</summary>
    public bool Broken => Volatile.Read(ref *BrokenFlag) != 0;

    private int* Generation => (int*)(_p + 24);

    private int* Arrived => (int*)(_p + 28);

    private int* BrokenFlag => (int*)(_p + 32);

    private int* ResetGeneration => (int*)(_p + 36);

    private int* Seq => (int*)(_p + 44);

    private int* Waiters => (int*)(_p + 48);

    private int* User(int i) => (int*)(_p + 64 + i * 4);

    /// <summary>Arrives and waits for the others, at most <paramref name="timeout"/> (null: the barrier's default,
    /// else forever).</summary>
    /// <returns>The arrival index, 0 for the first through Parties - 1 for the last, as Python returns it.</returns>
    /// <exception cref="BrokenBarrierException">The barrier is or became broken, or the wait timed out (which
    /// breaks it, as in Python).</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public int Wait(TimeSpan? timeout = null) => WaitCore(timeout ?? _defaultTimeout, CancellationToken.None);

    /// <summary>Arrives and waits without blocking a thread-pool thread.</summary>
    /// <returns>The arrival index.</returns>
    /// <exception cref="BrokenBarrierException">The barrier is or became broken, or the wait timed out.</exception>
    /// <exception cref="OperationCanceledException">Cancelled while waiting; this breaks the barrier for the others.</exception>
    public Task<int> WaitAsync(TimeSpan? timeout = null, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        return Blocking.OffThread(ct => WaitCore(timeout ?? _defaultTimeout, ct), () => Blocking.Nudge(Seq), cancellationToken);
    }

    /// <summary>Breaks the barrier: current and future waiters get <see cref="BrokenBarrierException"/> until
    /// <see cref="Reset"/>.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Abort()
    {
        ThrowIfDisposed();
        Locked(() => Break());
    }

    /// <summary>Returns the barrier to its initial state; parties waiting now get <see cref="BrokenBarrierException"/>.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Reset()
    {
        ThrowIfDisposed();
        Locked(() =>
        {
            if (*Arrived > 0)
            {
                *ResetGeneration = *Generation;
                Interlocked.Increment(ref *Generation);
                *Arrived = 0;
            }

            Volatile.Write(ref *BrokenFlag, 0);
            Blocking.Nudge(Seq);
        });
    }

    /// <summary>Stops using the barrier in this process.</summary>
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

    /// <summary>Describes the barrier.</summary>
    /// <returns>For example "ProcessBarrier(parties=3, waiting=1)".</returns>
    public override string ToString() => $"ProcessBarrier(parties={Parties}, waiting={NWaiting}{(Broken ? ", broken" : string.Empty)})";

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        _segment.Write(writer);
        ValueCodec.Write(writer, typeof(Action), _action);
        writer.Int64(_defaultTimeout?.Ticks ?? -1);
    }

    internal static ProcessBarrier ReadHandle(WireReader reader)
    {
        var segment = SharedSegment.Read(reader);
        var action = (Action?)ValueCodec.Read(reader, typeof(Action));
        long ticks = reader.Int64();
        return new ProcessBarrier(segment, action, ticks < 0 ? null : TimeSpan.FromTicks(ticks));
    }

    private int WaitCore(TimeSpan? timeout, CancellationToken cancellationToken)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        int generation;
        int index;
        LockInternal();
        try
        {
            if (*BrokenFlag != 0) throw new BrokenBarrierException("the barrier is broken; Reset() it to use it again");
            generation = *Generation;
            index = (*Arrived)++;
            if (index + 1 == Parties)
            {
                try
                {
                    _action?.Invoke();
                }
                catch
                {
                    // As in Python: the action's own exception reaches the last arrival, the others see a broken barrier.
                    Break();
                    throw;
                }

                *Arrived = 0;
                Interlocked.Increment(ref *Generation);
                Blocking.Nudge(Seq);
                return index;
            }
        }
        finally
        {
            _mutex.Release("barrier lock");
        }

        bool passed;
        try
        {
            passed = Blocking.Wait(
                Seq,
                Waiters,
                deadline,
                () => Volatile.Read(ref *Generation) != generation || Volatile.Read(ref *BrokenFlag) != 0,
                () => CheckParties(generation),
                cancellationToken);
        }
        catch (OperationCanceledException)
        {
            Locked(() => { if (*Generation == generation) Break(); });
            throw;
        }

        if (!passed) Locked(() => { if (*Generation == generation) Break(); });
        if (Volatile.Read(ref *Generation) != generation)
        {
            if (Volatile.Read(ref *ResetGeneration) == generation) throw new BrokenBarrierException("the barrier was reset while this party waited");
            return index;
        }

        throw new BrokenBarrierException(passed ? "the barrier was broken while this party waited" : "timed out waiting at the barrier, which is now broken");
    }

    private void CheckParties(int generation)
    {
        for (int i = 0; i < Users; i++)
        {
            int pid = Volatile.Read(ref *User(i));
            if (pid == 0 || OsShared.IsAlive(pid)) continue;
            Interlocked.CompareExchange(ref *User(i), 0, pid);
            Locked(() => { if (*Generation == generation) Break(); });
        }
    }

    // Called with the internal lock held.
    private void Break()
    {
        Volatile.Write(ref *BrokenFlag, 1);
        Blocking.Nudge(Seq);
    }

    private void Locked(Action body)
    {
        LockInternal();
        try
        {
            body();
        }
        finally
        {
            _mutex.Release("barrier lock");
        }
    }

    private void LockInternal()
    {
        try
        {
            _mutex.Acquire(long.MaxValue);
        }
        catch (AbandonedLockException)
        {
            // A party died inside the barrier's bookkeeping or its action: the state is suspect, so break it.
            Break();
        }
    }

    private void Attach()
    {
        int pid = Blocking.Pid;
        for (int i = 0; i < Users; i++)
        {
            if (Volatile.Read(ref *User(i)) == pid) return;
        }

        for (int i = 0; i < Users; i++)
        {
            if (Interlocked.CompareExchange(ref *User(i), pid, 0) == 0) return;
        }
    }

    private void Detach()
    {
        for (int i = 0; i < Users; i++) Interlocked.CompareExchange(ref *User(i), 0, Blocking.Pid);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
