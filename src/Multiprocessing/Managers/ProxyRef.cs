using System.Reflection;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing.Managers;

/// <summary>What every proxy has: the manager it talks to and the id of its object there.</summary>
internal interface IManagedProxy
{
    ProxyRef Ref { get; }
}

/// <summary>
/// One proxy's hold on a managed object. Disposing it (or its being collected) gives the hold back; the server
/// frees the object when no process holds it and no other managed value refers to it.
/// </summary>
internal sealed class ProxyRef
{
    private int _released;

    internal ProxyRef(ManagerClient client, long id)
    {
        Client = client;
        Id = id;
    }

    ~ProxyRef()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) Client.Release(Id, finalizing: true);
    }

    internal ManagerClient Client { get; }

    internal long Id { get; }

    internal bool Released => _released != 0;

    internal void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        GC.SuppressFinalize(this);
        Client.Release(Id, finalizing: false);
    }

    internal WireWriter Begin(string method, object owner)
    {
        ObjectDisposedException.ThrowIf(_released != 0, owner);
        return Client.Begin(Id, method);
    }

    internal WireReader Call(string method, object owner) => Client.Send(Begin(method, owner));

    internal Slot Encode<T>(T value) => Client.Codecs.Encode(value, Client);

    internal T GetAt<T>(int index, object owner)
    {
        var request = Begin("get", owner);
        request.Int32(index);
        return Decode<T>(Client.Send(request));
    }

    internal void SetAt<T>(int index, T value, object owner)
    {
        var v = Encode(value);
        var request = Begin("set", owner);
        request.Int32(index);
        v.Write(request);
        Client.Send(request);
    }

    /// <summary>Sends one request that carries a list of values (extend, replace).</summary>
    internal void SendAll<T>(string method, IEnumerable<T> items, object owner)
    {
        ArgumentNullException.ThrowIfNull(items);
        var slots = items.Select(Encode).ToList();
        var request = Begin(method, owner);
        SlotLists.Write(request, slots);
        Client.Send(request);
    }

    internal byte[] Key<T>(T key) => Client.Codecs.Key(key, Client);

    /// <summary>Reads a stored value from a reply; proxies inside it become live proxies of this manager.</summary>
    internal T Decode<T>(WireReader reply)
    {
        var data = reply.Bytes();
        int refs = reply.Int32();
        for (int i = 0; i < refs; i++) reply.Int64();
        return Client.Codecs.Decode<T>(data, Client);
    }

    internal List<T> DecodeList<T>(WireReader reply)
    {
        int n = reply.Int32();
        var list = new List<T>(n);
        for (int i = 0; i < n; i++) list.Add(Decode<T>(reply));
        return list;
    }

    /// <summary>A handle that travels in a closure or a message: inside a value stored in the same manager it is
    /// only the id (the container keeps the object alive); anywhere else it carries the address, the key, and a
    /// lease that keeps the object alive until the receiving process takes it over.</summary>
    internal void WriteHandle(WireWriter writer)
    {
        if (ReferenceEquals(ValueCodecs.StoreClient, Client))
        {
            writer.Byte(0);
            writer.Int64(Id);
            ValueCodecs.NoteStoredRef(Id);
            return;
        }

        ObjectDisposedException.ThrowIf(_released != 0, this);
        writer.Byte(1);
        writer.String(Client.Address);
        writer.Bytes(Client.AuthKey);
        writer.Bool(Client.Trusted);
        writer.Int64(Id);
        writer.Int64(Client.Lease(Id));
    }

    internal static ProxyRef ReadHandle(WireReader reader)
    {
        if (reader.Byte() == 0)
        {
            long id = reader.Int64();
            var client = ValueCodecs.LoadClient ?? throw new InvalidDataException("a managed object's id arrived outside a manager reply");
            client.Adopt(id);
            return new ProxyRef(client, id);
        }

        string address = reader.String() ?? throw new InvalidDataException("a managed object handle without an address");
        var key = reader.Bytes().ToArray();
        bool trusted = reader.Bool();
        long objectId = reader.Int64();
        long token = reader.Int64();
        var owner = ManagerClient.For(address, key, trusted);
        owner.Claim(token, objectId);
        return new ProxyRef(owner, objectId);
    }

    internal static object CreateProxy(Type type, ManagerClient client, long id) =>
        Activator.CreateInstance(type, BindingFlags.NonPublic | BindingFlags.Instance, null, [new ProxyRef(client, id)], null)
        ?? throw new InvalidOperationException($"{type} has no proxy constructor");

    public override string ToString() => $"object {Id} of the manager at {Client.Address.Replace("\0", "@", StringComparison.Ordinal)}";
}

/// <summary>Runs a blocking manager call in slices off the caller's thread, so an async twin can be cancelled:
/// the server cannot be interrupted mid-wait, but a slice ends within a fraction of a second.</summary>
internal static class ManagedAsync
{
    private static readonly TimeSpan Slice = TimeSpan.FromMilliseconds(200);

    internal static async Task<bool> Until(Func<TimeSpan, bool> attempt, TimeSpan? timeout, CancellationToken cancellationToken)
    {
        long deadline = Synchronization.Blocking.Deadline(timeout);
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var remaining = Synchronization.Blocking.Remaining(deadline);
            if (remaining != Timeout.InfiniteTimeSpan && remaining < TimeSpan.Zero) remaining = TimeSpan.Zero;
            var slice = remaining == Timeout.InfiniteTimeSpan || remaining > Slice ? Slice : remaining;
            if (await Task.Run(() => attempt(slice), cancellationToken).ConfigureAwait(false)) return true;
            if (deadline != long.MaxValue && Synchronization.Blocking.Remaining(deadline) <= TimeSpan.Zero) return false;
        }
    }
}
