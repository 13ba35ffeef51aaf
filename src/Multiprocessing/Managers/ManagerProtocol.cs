using System.Runtime.InteropServices;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>
/// One stored value on the manager server: the bytes a client encoded, never decoded by the server, plus the ids of
/// managed objects those bytes refer to (a list stored in a dict), which the slot keeps alive.
/// </summary>
internal readonly record struct Slot(byte[] Data, long[]? Refs)
{
    internal static readonly long[] NoRefs = [];

    internal static Slot Read(WireReader reader)
    {
        var data = reader.Bytes().ToArray();
        int n = reader.Int32();
        if (n == 0) return new Slot(data, null);
        if (n < 0 || n > 1 << 20) throw new InvalidDataException($"a value claims {n} object references");
        var refs = new long[n];
        for (int i = 0; i < n; i++) refs[i] = reader.Int64();
        return new Slot(data, refs);
    }

    internal void Write(WireWriter writer)
    {
        writer.Bytes(Data);
        writer.Int32(Refs?.Length ?? 0);
        if (Refs is null) return;
        foreach (var id in Refs) writer.Int64(id);
    }

    internal bool SameBytes(Slot other) => Data.AsSpan().SequenceEqual(other.Data);
}

/// <summary>A dictionary key compared by its encoded bytes: the server never needs the key's type.</summary>
internal readonly struct BlobKey(byte[] data) : IEquatable<BlobKey>
{
    private readonly int _hash = Hash(data);

    internal byte[] Data { get; } = data;

    public bool Equals(BlobKey other) => _hash == other._hash && Data.AsSpan().SequenceEqual(other.Data);

    public override bool Equals(object? obj) => obj is BlobKey other && Equals(other);

    public override int GetHashCode() => _hash;

    private static int Hash(byte[] data)
    {
        var hash = default(HashCode);
        hash.AddBytes(data);
        return hash.ToHashCode();
    }
}

/// <summary>The error kinds a server reply can carry; the client turns each into the matching BCL or library
/// exception, so a missing key is a <see cref="KeyNotFoundException"/> whichever process asked.</summary>
internal static class Fault
{
    internal const string KeyNotFound = "key";
    internal const string Index = "index";
    internal const string Timeout = "timeout";
    internal const string BrokenBarrier = "barrier";
    internal const string InvalidOperation = "invalid";
    internal const string Argument = "argument";
    internal const string NoObject = "noobject";
    internal const string Malformed = "malformed";
    internal const string Remote = "remote";
    internal const string NotRegistered = "unregistered";
    internal const string MissingMember = "member";

    internal static Exception ToException(string kind, string message, WireReader reader) => kind switch
    {
        KeyNotFound => new KeyNotFoundException(message),
        Index => new ArgumentOutOfRangeException("index", message),
        Timeout => new TimeoutException(message),
        BrokenBarrier => new BrokenBarrierException(message),
        InvalidOperation => new InvalidOperationException(message),
        Argument => new ArgumentException(message),
        NoObject => new ObjectDisposedException("managed object", message),
        Malformed => new InvalidDataException(message),
        NotRegistered => new InvalidOperationException(message),
        MissingMember => new MissingMemberException(message),
        Remote => new RemoteException(reader.String() ?? "?", message, reader.String() ?? string.Empty, reader.String() ?? string.Empty),
        _ => new InvalidDataException($"the manager answered with an unknown error kind '{kind}': {message}"),
    };
}

/// <summary>An error the server reports to the caller; the connection and the server go on.</summary>
internal sealed class ManagerFault(string kind, string message) : Exception(message)
{
    internal string Kind { get; } = kind;

    internal RemoteException? Remote { get; init; }
}

/// <summary>Timeouts on the wire: ticks, with -1 for "wait forever".</summary>
internal static class WireTimeout
{
    internal static long Encode(TimeSpan? timeout)
    {
        if (timeout is not { } t || t == Timeout.InfiniteTimeSpan) return -1;
        ArgumentOutOfRangeException.ThrowIfLessThan(t, TimeSpan.Zero, "timeout");
        return t.Ticks;
    }

    /// <summary>The deadline in <see cref="Environment.TickCount64"/> milliseconds, or long.MaxValue.</summary>
    internal static long Deadline(long ticks) =>
        ticks < 0 ? long.MaxValue : Environment.TickCount64 + (long)Math.Ceiling(ticks / (double)TimeSpan.TicksPerMillisecond);
}

/// <summary>Method names of the manager object itself (object id 0).</summary>
internal static class ManagerOps
{
    internal const string Hello = "hello";
    internal const string Create = "create";
    internal const string Decref = "decref";
    internal const string Lease = "lease";
    internal const string Claim = "claim";
    internal const string Count = "count";
    internal const string Shutdown = "shutdown";
    internal const string Rings = "rings";
}

/// <summary>The kinds of object a manager can hold, as named in a create request.</summary>
internal static class Kinds
{
    internal const string Dict = "dict";
    internal const string List = "list";
    internal const string Namespace = "namespace";
    internal const string Value = "value";
    internal const string Array = "array";
    internal const string Queue = "queue";
    internal const string Lock = "lock";
    internal const string Semaphore = "semaphore";
    internal const string Condition = "condition";
    internal const string Event = "event";
    internal const string Barrier = "barrier";
    internal const string Custom = "custom";
}

internal static class SlotLists
{
    internal static List<Slot> Read(WireReader reader)
    {
        int n = reader.Int32();
        if (n < 0 || n > 1 << 26) throw new InvalidDataException($"a request claims {n} values");
        var list = new List<Slot>(Math.Min(n, 1024));
        for (int i = 0; i < n; i++) list.Add(Slot.Read(reader));
        return list;
    }

    internal static void Write(WireWriter writer, IReadOnlyCollection<Slot> slots)
    {
        writer.Int32(slots.Count);
        foreach (var slot in slots) slot.Write(writer);
    }

    internal static ReadOnlySpan<Slot> AsSpan(List<Slot> list) => CollectionsMarshal.AsSpan(list);
}
