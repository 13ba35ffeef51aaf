using System.Collections.Concurrent;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Multiprocessing.Pipes;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>
/// This process's link to one manager server: a pool of authenticated connections (one per thread that is in a
/// call, so a blocking call never holds up another thread), and the count of proxies this process holds per object.
/// </summary>
/// <remarks>
/// The server counts references per client process (a session). Locally, any number of proxies for one object
/// share one server reference: the first proxy takes it, the last one to go gives it back. Proxies collected by the
/// GC give theirs back on this process's next call; a process that exits gives back all of them at once.
/// Thread-safe.
/// </remarks>
internal sealed class ManagerClient : IDisposable
{
    private static readonly ConcurrentDictionary<string, ManagerClient> Known = new();

    [ThreadStatic]
    private static WireWriter? t_writer;

    private readonly ConcurrentBag<Link> _idle = [];
    private readonly ConcurrentDictionary<Link, byte> _all = new();
    private readonly Dictionary<long, int> _holds = [];
    private readonly ConcurrentQueue<long> _pendingDecrefs = new();
    private readonly Guid _session = Guid.NewGuid();
    private readonly System.Net.EndPoint _endpoint;
    private readonly byte[] _authKey;
    private readonly ConnectionOptions _options;
    private volatile string? _gone;
    private bool _connectedOnce;
    private int _disposed;

    private ManagerClient(string address, byte[] authKey, bool trusted, ConnectionOptions options)
    {
        Address = address;
        _endpoint = EndpointText.Parse(address);
        _authKey = authKey;
        Trusted = trusted;
        _options = options;
    }

    internal string Address { get; }

    internal byte[] AuthKey => _authKey;

    internal bool Trusted { get; }

    internal ValueCodecs Codecs => Trusted ? ValueCodecs.Trusted : ValueCodecs.Untrusted;

    /// <summary>The one client of this process for a manager address; made on first use.</summary>
    internal static ManagerClient For(string address, byte[] authKey, bool trusted, ConnectionOptions? options = null)
    {
        while (true)
        {
            var client = Known.GetOrAdd(address, a => new ManagerClient(a, authKey, trusted, options ?? DefaultOptions()));
            if (client._disposed == 0) return client;
            Known.TryRemove(new KeyValuePair<string, ManagerClient>(address, client));
        }
    }

    /// <summary>A client of its own, not shared with proxies that arrive from elsewhere (a connect that the
    /// caller disposes).</summary>
    internal static ManagerClient Connect(string address, byte[] authKey, bool trusted, ConnectionOptions options)
    {
        var client = new ManagerClient(address, authKey, trusted, options);
        client.Return(client.Open());
        Known.TryAdd(address, client);
        return client;
    }

    internal static ConnectionOptions DefaultOptions() => new() { MaxMessageSize = ManagerOptions.DefaultMaxMessageSize };

    /// <summary>Starts a request: object id, method, and the calling thread (the owner of any lock it takes).</summary>
    internal WireWriter Begin(long id, string method)
    {
        FlushDecrefs();
        var writer = t_writer ??= new WireWriter(256);
        writer.Reset();
        return Header(writer, id, method);
    }

    /// <summary>Every request starts so: object id, method, calling thread.</summary>
    internal static WireWriter Header(WireWriter writer, long id, string method)
    {
        writer.Int64(id);
        writer.String(method);
        writer.Int32(Environment.CurrentManagedThreadId);
        return writer;
    }

    /// <summary>Sends the request and returns a reader over the reply's payload.</summary>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    internal WireReader Send(WireWriter request)
    {
        ThrowIfGone();
        var link = Rent();
        byte[] reply;
        try
        {
            reply = link.Exchange(request.WrittenSpan);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            Drop(link);
            throw Gone(ex);
        }

        Return(link);
        var reader = new WireReader(reply);
        if (reader.Byte() == 0) return reader;
        string kind = reader.String() ?? string.Empty;
        string message = reader.String() ?? string.Empty;
        throw Fault.ToException(kind, message, reader);
    }

    internal WireReader Call(long id, string method)
    {
        var request = Begin(id, method);
        return Send(request);
    }

    /// <summary>Takes over one server reference the server granted this session (a new object, or an object a
    /// reply's value referred to).</summary>
    internal void Adopt(long id)
    {
        lock (_holds)
        {
            if (_holds.TryGetValue(id, out int count))
            {
                // This process already holds the object: the extra server reference goes back.
                _holds[id] = count + 1;
                _pendingDecrefs.Enqueue(id);
                return;
            }

            _holds[id] = 1;
        }
    }

    /// <summary>A proxy went away. The last one of this process gives the server reference back.</summary>
    internal void Release(long id, bool finalizing)
    {
        lock (_holds)
        {
            if (!_holds.TryGetValue(id, out int count)) return;
            if (count > 1)
            {
                _holds[id] = count - 1;
                return;
            }

            _holds.Remove(id);
        }

        _pendingDecrefs.Enqueue(id);

        // A finalizer must not do I/O; an explicit Dispose gives the object back now, so a count taken right after
        // it is exact.
        if (!finalizing && _gone is null && _disposed == 0) FlushDecrefs();
    }

    /// <summary>Tells the server which references this process gave up since the last call.</summary>
    internal void FlushDecrefs()
    {
        if (_pendingDecrefs.IsEmpty || _gone is not null || _disposed != 0) return;
        var ids = new List<long>();
        while (_pendingDecrefs.TryDequeue(out long id)) ids.Add(id);
        if (ids.Count == 0) return;
        var writer = Header(new WireWriter(32 + 8 * ids.Count), 0, ManagerOps.Decref);
        writer.Int32(ids.Count);
        foreach (long id in ids) writer.Int64(id);
        try
        {
            Send(writer);
        }
        catch (ManagerUnavailableException ex)
        {
            // A server that is gone has freed everything already.
            ProcessRuntime.Logger.LogDebug(ex, "manager gone while giving references back");
        }
    }

    /// <summary>Asks the server to keep an object alive for a handle that is on its way to another process.</summary>
    internal long Lease(long id)
    {
        var request = Begin(0, ManagerOps.Lease);
        request.Int64(id);
        return Send(request).Int64();
    }

    /// <summary>Takes over a leased (or still living) object for a handle that arrived here.</summary>
    internal void Claim(long token, long id)
    {
        var request = Begin(0, ManagerOps.Claim);
        request.Int64(token);
        request.Int64(id);
        Send(request);
        Adopt(id);
    }

    /// <summary>Marks the server gone (its owner shut it down): later calls fail at once.</summary>
    internal void MarkGone(string why) => _gone ??= why;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Known.TryRemove(new KeyValuePair<string, ManagerClient>(Address, this));
        _gone ??= "this manager connection was disposed";
        foreach (var link in _all.Keys) link.Dispose();
        _all.Clear();
    }

    private Link Rent() => _idle.TryTake(out var link) ? link : Open();

    private void Return(Link link)
    {
        if (_disposed != 0)
        {
            Drop(link);
            return;
        }

        _idle.Add(link);
    }

    private void Drop(Link link)
    {
        _all.TryRemove(link, out _);
        link.Dispose();
    }

    private Link Open()
    {
        ThrowIfGone();
        Connection<byte[]> connection;
        try
        {
            connection = ConnectionListener<byte[]>.Connect(_endpoint, _authKey, _options);
        }
        catch (SocketException ex)
        {
            throw Gone(ex);
        }
        catch (System.Security.Authentication.AuthenticationException ex) when (_connectedOnce && ex.InnerException is IOException)
        {
            // The key was right before: a hang-up mid-handshake is the server going away, not a wrong key.
            throw Gone(ex);
        }

        _connectedOnce = true;
        var link = new Link(connection);
        _all[link] = 0;
        var hello = Header(new WireWriter(64), 0, ManagerOps.Hello);
        hello.Raw(_session.ToByteArray());
        hello.Int32(Environment.ProcessId);
        try
        {
            if (new WireReader(link.Exchange(hello.WrittenSpan)).Byte() != 0) throw new InvalidDataException("the manager refused this process's hello");
            if (Trusted) link.UseRings();
        }
        catch (Exception ex) when (ex is IOException or SocketException)
        {
            Drop(link);
            throw Gone(ex);
        }

        return link;
    }

    private void ThrowIfGone()
    {
        if (_gone is { } why) throw new ManagerUnavailableException(Address, why, null);
    }

    private ManagerUnavailableException Gone(Exception cause)
    {
        _gone ??= "the connection to the manager broke: " + cause.Message;
        return new ManagerUnavailableException(Address, _gone, cause);
    }
}

/// <summary>
/// One connection to the server. With a private (trusted) manager, requests and replies move through two rings of
/// shared memory once the socket has authenticated the client: a waiting side spins on memory instead of on
/// system calls, which halves a round trip. The socket stays open: the server blocks nowhere on it, so it becoming
/// readable means the other side hung up.
/// </summary>
internal sealed class Link(Connection<byte[]> socket) : IDisposable
{
    internal const long RingCapacity = 1 << 16;
    private static readonly TimeSpan HangUpCheck = TimeSpan.FromMilliseconds(100);

    private Queues.QueueRing? _requests;
    private Queues.QueueRing? _replies;

    internal Connection<byte[]> Socket { get; } = socket;

    internal byte[] Exchange(ReadOnlySpan<byte> request)
    {
        if (_requests is null || _replies is null)
        {
            Socket.SendBytes(request);
            return Socket.RecvBytesWhole(int.MaxValue, long.MaxValue);
        }

        Put(_requests, request, Socket);
        return Take(_replies, Socket);
    }

    /// <summary>Adds a message to a ring, noticing a peer that hung up while the ring stays full.</summary>
    internal static void Put(Queues.QueueRing ring, ReadOnlySpan<byte> message, Connection<byte[]> socket)
    {
        while (!ring.Put(message, Synchronization.Blocking.Deadline(HangUpCheck), joinable: false, CancellationToken.None))
        {
            if (socket.Poll()) throw new EndOfStreamException("the other end of the manager connection hung up");
        }
    }

    /// <summary>Waits for the next message on a ring, noticing a peer that hung up (its socket turns readable).</summary>
    internal static byte[] Take(Queues.QueueRing ring, Connection<byte[]> socket)
    {
        while (true)
        {
            if (ring.Get(Synchronization.Blocking.Deadline(HangUpCheck), CancellationToken.None) is { } message)
            {
                var bytes = message.Buffer.AsSpan(0, message.Length).ToArray();
                System.Buffers.ArrayPool<byte>.Shared.Return(message.Buffer);
                return bytes;
            }

            if (socket.Poll()) throw new EndOfStreamException("the other end of the manager connection hung up");
        }
    }

    /// <summary>Moves this connection onto shared-memory rings.</summary>
    internal void UseRings()
    {
        var requests = Queues.QueueRing.Create(0, RingCapacity, "manager-requests");
        var replies = Queues.QueueRing.Create(0, RingCapacity, "manager-replies");
        var writer = ManagerClient.Header(new WireWriter(128), 0, ManagerOps.Rings);
        requests.Segment.Write(writer);
        replies.Segment.Write(writer);
        var reply = new WireReader(Exchange(writer.WrittenSpan));
        if (reply.Byte() != 0)
        {
            requests.Segment.RemoveUser();
            replies.Segment.RemoveUser();
            return;
        }

        (_requests, _replies) = (requests, replies);
    }

    public void Dispose()
    {
        Socket.Dispose();
        _requests?.Segment.RemoveUser();
        _replies?.Segment.RemoveUser();
    }
}
