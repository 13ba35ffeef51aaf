using Multiprocessing.Platform;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing.Pool;

/// <summary>
/// A small shared segment per pool worker, made by the pool and mapped by both sides, for what the control socket
/// cannot say in time. The worker writes which chunk it runs (by its sequence number among the Run frames it was
/// sent) and keeps a copy of the answers it has not sent yet; after its death the pool reads both, so finished
/// tasks keep their results and only the running one is blamed. The pool writes which calls were cancelled and
/// wakes the worker's watcher through a futex.
/// </summary>
/// <remarks>The worker's stores are plain, one per field per chunk, so the fast path costs a few nanoseconds.
/// The pool reads the worker's fields only from its watchdog and after the worker is gone.</remarks>
internal sealed unsafe class WorkerBoard : IProcessShared, IDisposable
{
    private const int MirrorOffset = 4096;
    private const int MirrorCapacity = 64 * 1024;
    private const int CancelSlots = 16;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private int _disposed;

    private WorkerBoard(SharedSegment segment)
    {
        _segment = segment;
        segment.AddUser();
        _p = segment.Pointer;
    }

    // The pool's words and the worker's words sit on separate cache lines.

    /// <summary>Bumped by the pool for every cancellation it posts; the worker's watcher sleeps on it.</summary>
    private int* CancelGeneration => (int*)_p;

    /// <summary>Function ids of cancelled calls, a ring indexed by the generation.</summary>
    private int* CancelledFunctions => (int*)(_p + 64);

    /// <summary>The sequence number (1, 2, ...) of the last chunk the worker started.</summary>
    private long* Started => (long*)(_p + 256);

    /// <summary>The sequence number of the last chunk whose answer the worker has written (to the socket or to the
    /// mirror).</summary>
    private long* Finished => (long*)(_p + 264);

    /// <summary>Bytes of whole answer frames in the mirror that may not have reached the socket yet.</summary>
    private int* Unsent => (int*)(_p + 272);

    private byte* Mirror => _p + MirrorOffset;

    internal static WorkerBoard Create() => new(SharedSegment.Create(MirrorOffset + MirrorCapacity, "pool-worker"));

    internal static WorkerBoard ReadHandle(WireReader reader) => new(SharedSegment.Read(reader));

    // The pool holds the board until its worker is gone: nothing to keep after sending.
    void IProcessShared.WriteHandle(WireWriter writer) => _segment.Write(writer, keepForReceiver: false);

    // The worker's side.

    internal void BeginChunk(long sequence) => Volatile.Write(ref *Started, sequence);

    /// <summary>Keeps a copy of an answer frame until it is sent; false when it does not fit, and the caller must
    /// send it now.</summary>
    internal bool Keep(ReadOnlySpan<byte> frame)
    {
        int unsent = *Unsent;
        if (frame.Length > MirrorCapacity - unsent) return false;
        frame.CopyTo(new Span<byte>(Mirror + unsent, MirrorCapacity - unsent));
        Volatile.Write(ref *Unsent, unsent + frame.Length);
        return true;
    }

    internal void EndChunk(long sequence) => Volatile.Write(ref *Finished, sequence);

    /// <summary>Everything kept is in the socket now.</summary>
    internal void Sent() => Volatile.Write(ref *Unsent, 0);

    internal int Generation => Volatile.Read(ref *CancelGeneration);

    /// <summary>Adds the function ids of the cancellations posted from generation <paramref name="from"/> to
    /// <paramref name="to"/> to <paramref name="cancelled"/> (all the ring holds, if it has gone round since).</summary>
    internal void ReadCancelled(int from, int to, HashSet<int> cancelled)
    {
        int count = (int)Math.Min((uint)(to - from), CancelSlots);
        for (int i = 0; i < count; i++)
        {
            int id = Volatile.Read(ref CancelledFunctions[(uint)(to - 1 - i) % CancelSlots]);
            if (id != 0) cancelled.Add(id);
        }
    }

    internal bool IsCancelled(int funcId)
    {
        if (funcId == 0) return false;
        for (int i = 0; i < CancelSlots; i++)
        {
            if (Volatile.Read(ref CancelledFunctions[i]) == funcId) return true;
        }

        return false;
    }

    /// <summary>Sleeps until the generation moves on from <paramref name="seen"/>.</summary>
    internal void WaitForCancellation(int seen)
    {
        while (Generation == seen) OsShared.FutexWait(CancelGeneration, seen, Timeout.InfiniteTimeSpan);
        GC.KeepAlive(_segment);
    }

    // The pool's side.

    /// <summary>Tells the worker that the call with <paramref name="funcId"/> is cancelled: it skips that call's
    /// chunks it has not started, and its watcher cancels the running one's token. Called under the pool's lock.</summary>
    internal void Cancel(int funcId)
    {
        int generation = *CancelGeneration;
        Volatile.Write(ref CancelledFunctions[(uint)generation % CancelSlots], funcId);
        Interlocked.Increment(ref *CancelGeneration);
        OsShared.FutexWake(CancelGeneration, 1);
        GC.KeepAlive(_segment);
    }

    /// <summary>The sequence number of the chunk the worker runs now, or 0 when it is between chunks.</summary>
    internal long Running
    {
        get
        {
            // Started first: a chunk that ends between the two reads looks finished, never the other way round.
            long started = Volatile.Read(ref *Started);
            return Volatile.Read(ref *Finished) < started ? started : 0;
        }
    }

    /// <summary>The sequence number of the last chunk the worker started.</summary>
    internal long LastStarted => Volatile.Read(ref *Started);

    /// <summary>A copy of the answer frames the worker kept but may not have sent; read after it is gone.</summary>
    internal byte[] UnsentAnswers()
    {
        int length = Math.Clamp(Volatile.Read(ref *Unsent), 0, MirrorCapacity);
        return new ReadOnlySpan<byte>(Mirror, length).ToArray();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) _segment.RemoveUser();
    }
}
