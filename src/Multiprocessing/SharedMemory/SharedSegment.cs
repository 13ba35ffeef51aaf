using Multiprocessing.Platform;
using Multiprocessing.Serialization;

namespace Multiprocessing.SharedMemory;

/// <summary>
/// One anonymous shared mapping as this process sees it. It travels as (pid, descriptor, inode, size): the
/// receiver reopens it through <c>/proc/PID/fd/N</c> of the sender, so no name is ever published and nothing can
/// leak when every process using it is killed. Each process maps a given segment once.
/// </summary>
/// <remarks>
/// The descriptor is closed when the last library object using the segment in this process is disposed, after
/// which the segment can no longer be sent from here; the mapping itself is removed only when this object is
/// collected, so a thread still inside a wait on the memory can never touch an unmapped page.
/// </remarks>
internal sealed unsafe class SharedSegment
{
    private static readonly Dictionary<long, WeakReference<SharedSegment>> Mapped = [];

    private const long PrefaultThreshold = 4 << 20;

    private readonly long _size;
    private int _fd;
    private int _users;

    private SharedSegment(int fd, nint address, long inode, long size)
    {
        _fd = fd;
        Address = address;
        Inode = inode;
        _size = size;
    }

    ~SharedSegment()
    {
        OsShared.Unmap(Address, _size);
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0) OsShared.Close(fd);
    }

    internal nint Address { get; }

    internal long Inode { get; }

    internal long Size => _size;

    internal byte* Pointer => (byte*)Address;

    /// <summary>Creates a zeroed segment of at least <paramref name="size"/> bytes.</summary>
    internal static SharedSegment Create(long size, string label)
    {
        size = Math.Max(size, 1);
        var (fd, address, inode) = OsShared.CreateSegment(size, label);
        if (size >= PrefaultThreshold) OsShared.PrefaultInBackground(fd, size);
        var segment = new SharedSegment(fd, address, inode, size);
        lock (Mapped) Mapped[inode] = new WeakReference<SharedSegment>(segment);
        return segment;
    }

    /// <summary>Counts one more library object that uses this segment in this process.</summary>
    internal void AddUser() => Interlocked.Increment(ref _users);

    /// <summary>One user is done; the last one closes the descriptor.</summary>
    internal void RemoveUser()
    {
        if (Interlocked.Decrement(ref _users) > 0) return;
        lock (Mapped)
        {
            if (Volatile.Read(ref _users) > 0) return;
            int fd = Interlocked.Exchange(ref _fd, -1);
            if (fd >= 0) OsShared.Close(fd);
            Mapped.Remove(Inode);
        }
    }

    /// <param name="writer">Where the handle goes.</param>
    /// <param name="keepForReceiver">Hold the segment a while after sending (see <see cref="KeepForReceiver"/>);
    /// false for an owner that keeps it open until the receiver is gone anyway.</param>
    internal void Write(WireWriter writer, bool keepForReceiver = true)
    {
        int fd = Volatile.Read(ref _fd);
        if (fd < 0) throw new ObjectDisposedException(nameof(SharedSegment), "a disposed shared object cannot be sent to another process");
        if (keepForReceiver) KeepForReceiver();
        writer.Int32(Environment.ProcessId);
        writer.Int32(fd);
        writer.Int64(Inode);
        writer.Int64(_size);
    }

    // A handle is only good while its sender has the segment open. A sender that drops the object right after
    // sending it (a pool task that returns a new lock, say) would race the receiver's open; holding every sent
    // segment for a while closes that window.
    // Of a reference type: a queue of tuples would be JITted in every fresh child that maps a segment.
    private static readonly Queue<SentSegment> RecentlySent = new();
    private static readonly TimeSpan SendGrace = TimeSpan.FromSeconds(30);

    private void KeepForReceiver()
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        lock (RecentlySent)
        {
            while (RecentlySent.Count > 0 && (RecentlySent.Count > 1024 || System.Diagnostics.Stopwatch.GetElapsedTime(RecentlySent.Peek().Sent, now) > SendGrace))
                RecentlySent.Dequeue();
            RecentlySent.Enqueue(new SentSegment(now, this));
        }
    }

    private sealed record SentSegment(long Sent, SharedSegment Segment);

    internal static SharedSegment Read(WireReader reader)
    {
        int pid = reader.Int32();
        int fd = reader.Int32();
        long inode = reader.Int64();
        long size = reader.Int64();
        lock (Mapped)
        {
            // A segment that comes back (or arrives twice) reuses the mapping: per-process bookkeeping in the
            // segment (semaphore holders, barrier parties) stays keyed to one object, and a pool task that
            // captures a lock does not pay open+mmap per task.
            if (Mapped.TryGetValue(inode, out var weak) && weak.TryGetTarget(out var known) && Volatile.Read(ref known._fd) >= 0) return known;
            var (own, address) = OsShared.OpenSegment(pid, fd, inode, size);
            var segment = new SharedSegment(own, address, inode, size);
            Mapped[inode] = new WeakReference<SharedSegment>(segment);
            return segment;
        }
    }
}

/// <summary>A library object that travels to other processes as a handle to shared state rather than by value.</summary>
internal interface IProcessShared
{
    /// <summary>Writes what another process needs to reopen this object.</summary>
    void WriteHandle(WireWriter writer);
}

/// <summary>Reads handles back into library objects. Each shareable type has a static <c>ReadHandle(WireReader)</c>.</summary>
internal static class SharedHandles
{
    // A plain dictionary under a lock: every pool worker reads a handle (its board) at start, and a
    // ConcurrentDictionary would load System.Collections.Concurrent into it for this alone.
    private static readonly Dictionary<Type, Func<WireReader, object>> Readers = [];

    internal static bool IsShared(Type type) =>
        typeof(IProcessShared).IsAssignableFrom(type) || type == typeof(IProcessLock);

    internal static object Read(WireReader reader, Type declared)
    {
        // The declared type may be an interface (IProcessLock): the concrete type travels first.
        var type = TypeNames.Read(reader);
        if (!declared.IsAssignableFrom(type)) throw new InvalidDataException($"a {type} handle arrived where {declared} was expected");
        return ReaderOf(type)(reader);
    }

    private static Func<WireReader, object> ReaderOf(Type type)
    {
        lock (Readers)
        {
            if (Readers.TryGetValue(type, out var known)) return known;
            var method = type.GetMethod("ReadHandle", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic, [typeof(WireReader)])
                ?? throw new InvalidOperationException($"{type} has no ReadHandle(WireReader)");
            return Readers[type] = method.CreateDelegate<Func<WireReader, object>>();
        }
    }

    internal static void Write(WireWriter writer, IProcessShared value)
    {
        TypeNames.Write(writer, value.GetType());
        value.WriteHandle(writer);
    }
}
