using System.Buffers;
using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Multiprocessing.Processes;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing.Queues;

/// <summary>
/// The engine under every queue: a byte ring in one shared segment, with one lock for producers and one for
/// consumers around a single-producer single-consumer ring. An item is copied in by the producer's own call, so
/// it is in shared memory when <c>Put</c> returns: there is no feeder thread, nothing to flush at exit, and an item
/// that cannot be serialized fails in the caller. Sleeping uses futex words with waiter counts, so a busy queue
/// makes no system calls at all.
/// </summary>
/// <remarks>
/// Messages up to the ring's capacity are published whole. Longer ones stream through the ring while both sides
/// hold their locks. A process killed while holding either lock is noticed by the next one to take it (the locks
/// record their owner's pid): a half-read message is skipped, a half-written one is cut off, and the queue goes on.
/// </remarks>
internal sealed unsafe class QueueRing
{
    internal const long DefaultCapacity = 1 << 20;
    private const int Header = 4096;

    private readonly SharedSegment _segment;
    private readonly byte* _p;
    private readonly byte* _data;
    private readonly long _capacity;
    private readonly long _mask;
    private readonly FutexMutex _put;
    private readonly FutexMutex _get;
    private readonly AdaptiveSpin _dataSpin = new();
    private readonly AdaptiveSpin _spaceSpin = new();

    private QueueRing(SharedSegment segment)
    {
        _segment = segment;
        _p = segment.Pointer;
        _capacity = *(long*)(_p + 280);
        _mask = _capacity - 1;
        _data = _p + Header;
        _put = new FutexMutex(_p, reentrant: false);
        _get = new FutexMutex(_p + 64, reentrant: false);
    }

    internal SharedSegment Segment => _segment;

    private long* Tail => (long*)(_p + 128);

    private int* DataSeq => (int*)(_p + 136);

    private int* DataWaiters => (int*)(_p + 140);

    private long* Head => (long*)(_p + 192);

    private int* SpaceSeq => (int*)(_p + 200);

    private int* SpaceWaiters => (int*)(_p + 204);

    private int* CountWord => (int*)(_p + 256);

    private int* Reserved => (int*)(_p + 260);

    private int* SlotSeq => (int*)(_p + 264);

    private int* SlotWaiters => (int*)(_p + 268);

    internal int MaxSize => *(int*)(_p + 272);

    /// <summary>Bytes of a streamed message the consumer holding the lock has yet to take.</summary>
    private long* ReadRemaining => (long*)(_p + 288);

    /// <summary>Ring position + 1 where a dead producer's streamed message was cut off; 0 for none.</summary>
    private long* AbortMark => (long*)(_p + 296);

    /// <summary>Bytes of a streamed message the producer holding the lock has yet to write.</summary>
    private long* WriteRemaining => (long*)(_p + 304);

    private int* Unfinished => (int*)(_p + 320);

    private int* UnfinishedSeq => (int*)(_p + 324);

    private int* UnfinishedWaiters => (int*)(_p + 328);

    internal int Count => Math.Max(0, Volatile.Read(ref *CountWord));

    internal bool IsFull => MaxSize > 0 && Volatile.Read(ref *Reserved) >= MaxSize;

    internal int UnfinishedTasks => Volatile.Read(ref *Unfinished);

    internal static QueueRing Create(int maxSize, long capacity, string label)
    {
        var segment = SharedSegment.Create(Header + capacity, label);
        *(int*)(segment.Pointer + 272) = maxSize;
        *(long*)(segment.Pointer + 280) = capacity;
        return new QueueRing(segment);
    }

    internal static QueueRing Open(SharedSegment segment) => new(segment);

    // ---- producer ----

    /// <summary>Adds one message. False if the deadline passed before any of it was written.</summary>
    internal bool Put(ReadOnlySpan<byte> payload, long deadline, bool joinable, CancellationToken cancellationToken)
    {
        bool slot = false, counted = false, done = false;
        try
        {
            if (MaxSize > 0)
            {
                if (!TakeSlot(deadline, cancellationToken)) return false;
                slot = true;
            }

            if (joinable)
            {
                // Counted before the item can be seen, so a fast consumer's TaskDone never runs ahead of it.
                Interlocked.Increment(ref *Unfinished);
                counted = true;
            }

            if (!AcquirePut(deadline, cancellationToken)) return false;
            try
            {
                long total = 4L + payload.Length;
                Span<byte> header = stackalloc byte[4];
                BinaryPrimitives.WriteInt32LittleEndian(header, payload.Length);
                if (total <= _capacity)
                {
                    if (Free < total && !WaitForSpace(total, deadline, cancellationToken)) return false;
                    long tail = *Tail;
                    Copy(tail, header);
                    Copy(tail + 4, payload);
                    Interlocked.Exchange(ref *Tail, tail + total);
                }
                else
                {
                    if (Free < 4 && !WaitForSpace(4, deadline, cancellationToken)) return false;
                    Stream(header, payload, total);
                }

                Interlocked.Increment(ref *CountWord);
                done = true;
            }
            finally
            {
                _put.Release("queue producer lock");
            }

            Blocking.Wake(DataSeq, DataWaiters, int.MaxValue);
            return true;
        }
        finally
        {
            if (!done)
            {
                if (slot) GiveSlot();
                if (counted) Interlocked.Decrement(ref *Unfinished);
            }

            GC.KeepAlive(_segment);
        }
    }

    private long Free => _capacity - (*Tail - Volatile.Read(ref *Head));

    private bool WaitForSpace(long bytes, long deadline, CancellationToken cancellationToken) =>
        WaitFor(() => Free >= bytes, SpaceSeq, SpaceWaiters, deadline, null, cancellationToken, _spaceSpin);

    private bool HasMessageStart => Volatile.Read(ref *Tail) - *Head >= 4;

    private bool WaitForMessageStart(long deadline, CancellationToken cancellationToken) =>
        WaitFor(() => HasMessageStart, DataSeq, DataWaiters, deadline, null, cancellationToken, _dataSpin);

    private void Stream(ReadOnlySpan<byte> header, ReadOnlySpan<byte> payload, long total)
    {
        // Once the first bytes are out the message must be finished whatever the deadline: a consumer is
        // already reading it.
        Volatile.Write(ref *WriteRemaining, total);
        long written = 0;
        while (written < total)
        {
            long room = Free;
            if (room == 0)
            {
                WaitForSpace(1, long.MaxValue, CancellationToken.None);
                continue;
            }

            long n = Math.Min(room, total - written);
            long tail = *Tail;
            long at = written;
            long left = n;

            // The first four bytes come from the header, the rest from the payload.
            while (left > 0)
            {
                if (at < 4)
                {
                    int k = (int)Math.Min(4 - at, left);
                    Copy(tail, header.Slice((int)at, k));
                    tail += k;
                    at += k;
                    left -= k;
                }
                else
                {
                    int k = (int)Math.Min(left, int.MaxValue);
                    Copy(tail, payload.Slice((int)(at - 4), k));
                    tail += k;
                    at += k;
                    left -= k;
                }
            }

            written += n;
            Volatile.Write(ref *WriteRemaining, total - written);
            Interlocked.Exchange(ref *Tail, tail);
            Blocking.Wake(DataSeq, DataWaiters, int.MaxValue);
        }
    }

    private bool AcquirePut(long deadline, CancellationToken cancellationToken)
    {
        try
        {
            return _put.Acquire(deadline, cancellationToken);
        }
        catch (AbandonedLockException ex)
        {
            CutOffDeadProducer(ex.Pid);
            return true;
        }
    }

    /// <summary>Holding the producer lock of a producer that died mid-message: mark where its message ends.</summary>
    private void CutOffDeadProducer(int pid)
    {
        if (Volatile.Read(ref *WriteRemaining) == 0) return;
        Volatile.Write(ref *WriteRemaining, 0);
        Interlocked.Exchange(ref *AbortMark, *Tail + 1);
        Blocking.Wake(DataSeq, DataWaiters, int.MaxValue);
        ProcessRuntime.Logger.LogWarning("process {Pid} died while putting a large item on a queue; the partial item is dropped", pid);
    }

    private bool TakeSlot(long deadline, CancellationToken cancellationToken)
    {
        bool TryTake()
        {
            int seen = Volatile.Read(ref *Reserved);
            return seen < MaxSize && Interlocked.CompareExchange(ref *Reserved, seen + 1, seen) == seen;
        }

        return TryTake() || WaitFor(TryTake, SlotSeq, SlotWaiters, deadline, null, cancellationToken);
    }

    private void GiveSlot()
    {
        Interlocked.Decrement(ref *Reserved);
        Blocking.Wake(SlotSeq, SlotWaiters, 1);
    }

    // ---- consumer ----

    /// <summary>Takes one message into a pooled buffer; null if the deadline passed first.</summary>
    internal (byte[] Buffer, int Length)? Get(long deadline, CancellationToken cancellationToken)
    {
        try
        {
            if (!AcquireGet(deadline, cancellationToken)) return null;
            (byte[], int) message;
            Span<byte> header = stackalloc byte[4];
            try
            {
                while (true)
                {
                    if (!HasMessageStart && !WaitForMessageStart(deadline, cancellationToken)) return null;
                    long head = *Head;
                    CopyOut(head, header);
                    int length = BinaryPrimitives.ReadInt32LittleEndian(header);
                    long total = 4L + length;
                    if (total <= _capacity)
                    {
                        var buffer = ArrayPool<byte>.Shared.Rent(length);
                        CopyOut(head + 4, buffer.AsSpan(0, length));
                        Interlocked.Exchange(ref *Head, head + total);
                        message = (buffer, length);
                        break;
                    }

                    var streamed = ReceiveStream(head, length);
                    if (streamed is { } whole)
                    {
                        message = whole;
                        break;
                    }
                }

                Interlocked.Decrement(ref *CountWord);
            }
            finally
            {
                _get.Release("queue consumer lock");
            }

            Blocking.Wake(SpaceSeq, SpaceWaiters, int.MaxValue);
            if (MaxSize > 0) GiveSlot();
            return message;
        }
        finally
        {
            GC.KeepAlive(_segment);
        }
    }

    /// <summary>Reads a message longer than the ring as it streams in; null if its producer died part-way.</summary>
    private (byte[], int)? ReceiveStream(long head, int length)
    {
        head += 4;
        Interlocked.Exchange(ref *Head, head);
        Volatile.Write(ref *ReadRemaining, length);
        Blocking.Wake(SpaceSeq, SpaceWaiters, int.MaxValue);
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        int got = 0;
        while (got < length)
        {
            if (!WaitForStreamData(head))
            {
                // The dead producer never counted the item, but it did hold a slot and (joinable) a task.
                ArrayPool<byte>.Shared.Return(buffer);
                Volatile.Write(ref *ReadRemaining, 0);
                if (MaxSize > 0) GiveSlot();
                TaskDone();
                return null;
            }

            int n = (int)Math.Min(Volatile.Read(ref *Tail) - head, length - got);
            CopyOut(head, buffer.AsSpan(got, n));
            got += n;
            head += n;
            Volatile.Write(ref *ReadRemaining, length - got);
            Interlocked.Exchange(ref *Head, head);
            Blocking.Wake(SpaceSeq, SpaceWaiters, int.MaxValue);
        }

        return (buffer, length);
    }

    /// <summary>Waits for more of a streamed message; false if its producer died and the rest will never come.</summary>
    private bool WaitForStreamData(long head)
    {
        bool cut = false;
        WaitFor(
            () =>
            {
                if (Volatile.Read(ref *Tail) > head) return true;
                long mark = Volatile.Read(ref *AbortMark);
                if (mark != 0 && mark - 1 == head)
                {
                    Interlocked.CompareExchange(ref *AbortMark, 0, mark);
                    cut = true;
                    return true;
                }

                return false;
            },
            DataSeq,
            DataWaiters,
            long.MaxValue,
            () =>
            {
                // Nobody may come to take over a dead producer's lock; do it here, then let go.
                if (Volatile.Read(ref *WriteRemaining) > 0 && _put.TakeOverIfOwnerDead())
                {
                    int pid = _put.OwnerPid;
                    CutOffDeadProducer(pid);
                    _put.Release("queue producer lock");
                }
            },
            CancellationToken.None);
        return !cut;
    }

    private bool AcquireGet(long deadline, CancellationToken cancellationToken)
    {
        try
        {
            return _get.Acquire(deadline, cancellationToken);
        }
        catch (AbandonedLockException ex)
        {
            SkipDeadConsumersMessage(ex.Pid);
            return true;
        }
    }

    private void SkipDeadConsumersMessage(int pid)
    {
        long left = Volatile.Read(ref *ReadRemaining);
        if (left == 0) return;
        ProcessRuntime.Logger.LogWarning("process {Pid} died while taking a large item from a queue; the rest of that item is skipped", pid);
        long head = *Head;
        while (left > 0)
        {
            if (!WaitForStreamData(head)) break;
            long n = Math.Min(Volatile.Read(ref *Tail) - head, left);
            head += n;
            left -= n;
            Volatile.Write(ref *ReadRemaining, left);
            Interlocked.Exchange(ref *Head, head);
            Blocking.Wake(SpaceSeq, SpaceWaiters, int.MaxValue);
        }

        Volatile.Write(ref *ReadRemaining, 0);
        Interlocked.Decrement(ref *CountWord);
        if (MaxSize > 0) GiveSlot();
    }

    // ---- joinable ----

    /// <summary>One task is done; false if none was outstanding.</summary>
    internal bool TaskDone()
    {
        while (true)
        {
            int seen = Volatile.Read(ref *Unfinished);
            if (seen <= 0) return false;
            if (Interlocked.CompareExchange(ref *Unfinished, seen - 1, seen) != seen) continue;
            if (seen == 1) Blocking.Wake(UnfinishedSeq, UnfinishedWaiters, int.MaxValue);
            GC.KeepAlive(_segment);
            return true;
        }
    }

    internal bool JoinTasks(long deadline, CancellationToken cancellationToken)
    {
        bool done = WaitFor(() => Volatile.Read(ref *Unfinished) == 0, UnfinishedSeq, UnfinishedWaiters, deadline, null, cancellationToken);
        GC.KeepAlive(_segment);
        return done;
    }

    /// <summary>Wakes every sleeper so async waiters notice cancellation.</summary>
    internal void NudgeAll()
    {
        Blocking.Nudge(DataSeq);
        Blocking.Nudge(SpaceSeq);
        Blocking.Nudge(SlotSeq);
        Blocking.Nudge(UnfinishedSeq);
        _put.Nudge();
        _get.Nudge();
    }

    private static bool WaitFor(Func<bool> ready, int* seq, int* waiters, long deadline, Action? check, CancellationToken cancellationToken, AdaptiveSpin? spin = null)
    {
        if (ready()) return true;
        if (deadline <= System.Diagnostics.Stopwatch.GetTimestamp()) return false;
        if (spin is not null && spin.Spin(static r => r(), ready)) return true;
        return Blocking.Wait(seq, waiters, deadline, ready, check, cancellationToken);
    }

    private void Copy(long position, ReadOnlySpan<byte> source)
    {
        long offset = position & _mask;
        int first = (int)Math.Min(source.Length, _capacity - offset);
        source[..first].CopyTo(new Span<byte>(_data + offset, first));
        if (first < source.Length) source[first..].CopyTo(new Span<byte>(_data, source.Length - first));
    }

    private void CopyOut(long position, Span<byte> target)
    {
        long offset = position & _mask;
        int first = (int)Math.Min(target.Length, _capacity - offset);
        new ReadOnlySpan<byte>(_data + offset, first).CopyTo(target);
        if (first < target.Length) new ReadOnlySpan<byte>(_data, target.Length - first).CopyTo(target[first..]);
    }
}
