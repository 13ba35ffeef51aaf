using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// A flag that processes wait on, Python's <c>multiprocessing.Event</c>: Set wakes every waiter, Clear resets it.
/// Create with <see cref="Mp.Event"/>.
/// </summary>
/// <remarks>Process-safe and thread-safe.</remarks>
public sealed unsafe class ProcessEvent : IProcessShared, IDisposable, IAsyncDisposable
{
    internal const int Size = 12;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private readonly Func<bool> _isSet;
    private int _disposed;

    internal ProcessEvent(SharedSegment segment)
    {
        _segment = segment;
        segment.AddUser();
        _p = segment.Pointer;
        _isSet = () => Volatile.Read(ref *Flag) != 0;
    }

    private int* Flag => (int*)_p;

    private int* Seq => (int*)(_p + 4);

    private int* Waiters => (int*)(_p + 8);

    /// <summary>Whether the flag is set, as Python's <c>is_set()</c>.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool IsSet
    {
        get
        {
            ThrowIfDisposed();
            return Volatile.Read(ref *Flag) != 0;
        }
    }

    /// <summary>Sets the flag and wakes every process and thread waiting for it.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Set()
    {
        ThrowIfDisposed();
        Interlocked.Exchange(ref *Flag, 1);
        Blocking.Wake(Seq, Waiters, int.MaxValue);
        GC.KeepAlive(_segment);
    }

    /// <summary>Clears the flag; later waiters block until the next <see cref="Set"/>.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void Clear()
    {
        ThrowIfDisposed();
        Interlocked.Exchange(ref *Flag, 0);
    }

    /// <summary>Waits until the flag is set or <paramref name="timeout"/> passes (null: forever).</summary>
    /// <returns>The flag at return: true if set, false on timeout.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public bool Wait(TimeSpan? timeout = null)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        bool set = _isSet() || Blocking.Wait(Seq, Waiters, deadline, _isSet, check: null);
        GC.KeepAlive(_segment);
        return set;
    }

    /// <summary>Waits for the flag without blocking a thread-pool thread.</summary>
    /// <returns>A task that completes when the flag is set.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public Task WaitAsync(CancellationToken cancellationToken = default) => WaitAsync(Timeout.InfiniteTimeSpan, cancellationToken);

    /// <summary>Waits for the flag at most <paramref name="timeout"/> without blocking a thread-pool thread.</summary>
    /// <returns>True if the flag was set, false on timeout.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public Task<bool> WaitAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        long deadline = Blocking.Deadline(timeout);
        if (_isSet()) return Task.FromResult(true);
        return Blocking.OffThread(ct => Blocking.Wait(Seq, Waiters, deadline, _isSet, check: null, ct), () => Blocking.Nudge(Seq), cancellationToken);
    }

    /// <summary>Stops using the event in this process; the shared state goes when every process has let go.</summary>
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

    /// <summary>Describes the event.</summary>
    /// <returns>"ProcessEvent(set)" or "ProcessEvent(unset)".</returns>
    public override string ToString() => Volatile.Read(ref *Flag) != 0 ? "ProcessEvent(set)" : "ProcessEvent(unset)";

    void IProcessShared.WriteHandle(WireWriter writer) => _segment.Write(writer);

    internal static ProcessEvent ReadHandle(WireReader reader) => new(SharedSegment.Read(reader));

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
