using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Multiprocessing.Pipes;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>What a manager server process needs to start; travels to it inside the start closure.</summary>
internal sealed class ManagerServerConfig
{
    public string Address { get; set; } = string.Empty;

    public byte[] AuthKey { get; set; } = [];

    public bool Trusted { get; set; }

    public long MaxMessageSize { get; set; }

    public TimeSpan HandshakeTimeout { get; set; }

    public List<Registration> Registrations { get; set; } = [];
}

/// <summary>
/// The manager's server: runs in its own process, holds every managed object, and serves each client connection
/// on its own thread (a blocking call such as a queue get or a lock acquire holds only that connection).
/// </summary>
/// <remarks>
/// The server never decodes a client's values: it stores the bytes and compares them bytewise (dictionary keys,
/// list search), so no payload can make it instantiate a type. Only user types registered by the owner at start
/// are ever created, and their arguments are decoded as the registered interface declares them.
/// Clients of one process share a session; when its last connection closes, its references are dropped and the
/// locks it held are released, so a dead client neither leaks objects nor deadlocks others.
/// </remarks>
internal sealed class ManagerServer
{
    private static ILogger Log => ProcessRuntime.Logger;

    private readonly object _gate = new();
    private readonly Dictionary<long, ServerObject> _objects = [];
    private readonly Dictionary<Guid, Session> _sessions = [];
    private readonly Dictionary<long, (long Id, long Expires)> _leases = [];
    private readonly Dictionary<string, Registration> _registry;
    private readonly ManagerServerConfig _config;
    private readonly ConnectionListener<byte[]> _listener;
    private readonly ManualResetEventSlim _stopped = new();
    private long _nextId;
    private long _nextLease;

    private ManagerServer(ManagerServerConfig config, ConnectionListener<byte[]> listener)
    {
        _config = config;
        _listener = listener;
        _registry = config.Registrations.ToDictionary(r => r.Name);
    }

    internal bool Trusted => _config.Trusted;

    internal ValueCodecs Codecs => _config.Trusted ? ValueCodecs.Trusted : ValueCodecs.Untrusted;

    /// <summary>The server process's body: listens, reports where, and serves until shut down or orphaned.</summary>
    internal static void Run(ManagerServerConfig config, Connection<string> ready)
    {
        ConnectionListener<byte[]> listener;
        try
        {
            listener = new ConnectionListener<byte[]>(EndpointText.Parse(config.Address), config.AuthKey, 128,
                new ConnectionOptions { MaxMessageSize = config.MaxMessageSize, HandshakeTimeout = config.HandshakeTimeout });
        }
        catch (Exception ex)
        {
            // The owner turns this back into the exception: a socket error keeps its code.
            ready.Send("!" + (ex is SocketException socket ? (int)socket.SocketErrorCode : -1) + "|" + ex.Message);
            ready.Close();
            return;
        }

        var server = new ManagerServer(config, listener);
        var acceptor = new Thread(server.AcceptLoop) { IsBackground = true, Name = "manager accept" };
        acceptor.Start();
        ready.Send(EndpointText.Format(listener.Address));
        ready.Close();
        server._stopped.Wait();
        listener.Dispose();
    }

    private void AcceptLoop()
    {
        while (!_stopped.IsSet)
        {
            Socket socket;
            try
            {
                socket = _listener.AcceptSocket();
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                Log.LogWarning(ex, "manager accept failed");
                continue;
            }

            var thread = new Thread(() => Serve(socket)) { IsBackground = true, Name = "manager client" };
            thread.Start();
        }
    }

    private void Serve(Socket socket)
    {
        Connection<byte[]> connection;
        try
        {
            using (socket) connection = ConnectionListener<byte[]>.Authenticated(socket, _listener.AuthKey, _listener.Options, Handshake.AsServer);
        }
        catch (Exception ex) when (ex is System.Security.Authentication.AuthenticationException or IOException or InvalidDataException or TimeoutException or SocketException)
        {
            // A client with the wrong key, or one that hung up or sent garbage mid-handshake: it is refused and
            // nothing of the server was reachable to it.
            Log.LogInformation("manager refused a client: {Reason}", ex.Message);
            return;
        }

        Session? session = null;
        var reply = new WireWriter(4096);
        Queues.QueueRing? requests = null, replies = null;
        try
        {
            using (connection)
            {
                while (true)
                {
                    byte[] message;
                    try
                    {
                        message = requests is null ? connection.RecvBytesWhole(int.MaxValue, long.MaxValue) : Link.Take(requests, connection);
                    }
                    catch (EndOfStreamException)
                    {
                        return;
                    }

                    reply.Reset();
                    var context = new CallContext(this, connection, session);
                    bool stop = Handle(message, context, reply);
                    session = context.Session;
                    if (replies is null) connection.SendBytes(reply.WrittenSpan);
                    else Link.Put(replies, reply.WrittenSpan, connection);

                    // The reply that accepts the rings still goes through the socket; what follows uses them.
                    if (context.Rings is { } rings) (requests, replies) = rings;
                    if (stop)
                    {
                        _stopped.Set();
                        return;
                    }
                }
            }
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or ObjectDisposedException or ClientGoneException)
        {
            // A broken frame cannot be resynchronised: that client is dropped, the others are served on.
            Log.LogInformation("manager dropped a client: {Reason}", ex.Message);
        }
        catch (EndOfStreamException ex)
        {
            Log.LogInformation("manager client hung up mid-reply: {Reason}", ex.Message);
        }
        finally
        {
            requests?.Segment.RemoveUser();
            replies?.Segment.RemoveUser();
            if (session is not null) EndConnection(session);
        }
    }

    /// <summary>Runs one request and writes its reply; true when the request was a shutdown.</summary>
    private bool Handle(byte[] message, CallContext context, WireWriter reply)
    {
        int start = reply.Length;
        try
        {
            var reader = new WireReader(message);
            long id = reader.Int64();
            string method = reader.String() ?? throw new InvalidDataException("a request without a method name");
            context.Thread = reader.Int32();
            reply.Byte(0);
            if (id == 0) return HandleManager(method, reader, context, reply);
            if (context.Session is null) throw new ManagerFault(Fault.InvalidOperation, "a connection must say hello first");
            ServerObject target;
            lock (_gate)
            {
                if (!_objects.TryGetValue(id, out target!)) throw new ManagerFault(Fault.NoObject, $"object {id} does not exist on the manager (it was freed, or never made)");
            }

            target.Invoke(method, reader, context, reply);
            return false;
        }
        catch (ManagerFault fault)
        {
            WriteFault(reply, start, fault.Kind, fault.Message, fault.Remote);
        }
        catch (InvalidDataException ex)
        {
            WriteFault(reply, start, Fault.Malformed, "malformed request: " + ex.Message, null);
        }
        catch (ClientGoneException)
        {
            throw;
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Anything a server-side object throws is that caller's failure, not the server's.
            WriteFault(reply, start, Fault.Remote, ex.Message, RemoteException.From(ex));
        }

        return false;
    }

    private static void WriteFault(WireWriter reply, int start, string kind, string message, RemoteException? remote)
    {
        reply.Truncate(start);
        reply.Byte(1);
        reply.String(kind);
        reply.String(message);
        if (kind != Fault.Remote) return;
        reply.String(remote?.RemoteTypeName ?? "?");
        reply.String(remote?.RemoteStackTrace ?? string.Empty);
        reply.String(remote?.RemoteDetails ?? string.Empty);
    }

    private bool HandleManager(string method, WireReader reader, CallContext context, WireWriter reply)
    {
        if (method == ManagerOps.Hello)
        {
            var key = new Guid(reader.Raw(16));
            int pid = reader.Int32();
            lock (_gate)
            {
                if (!_sessions.TryGetValue(key, out var session)) _sessions[key] = session = new Session(key, pid);
                session.Connections++;
                context.Session = session;
            }

            return false;
        }

        var current = context.Session ?? throw new ManagerFault(Fault.InvalidOperation, "a connection must say hello first");

        // Every manager-level request looks at the leases, not only a new lease: an unclaimed one must end even
        // when nobody writes another handle.
        lock (_gate) ExpireLeases();
        switch (method)
        {
            case ManagerOps.Create:
                var created = Create(reader.String() ?? string.Empty, reader, context);
                lock (_gate)
                {
                    created.Id = ++_nextId;
                    _objects[created.Id] = created;
                    created.Refs = 1;
                    current.Hold(created.Id);
                }

                reply.Int64(created.Id);
                return false;
            case ManagerOps.Decref:
                int n = reader.Int32();
                lock (_gate)
                {
                    for (int i = 0; i < n; i++)
                    {
                        long id = reader.Int64();
                        if (current.Unhold(id)) Decref(id);
                    }
                }

                return false;
            case ManagerOps.Lease:
                lock (_gate)
                {
                    long id = reader.Int64();
                    Incref(id);
                    long token = ++_nextLease;
                    _leases[token] = (id, Environment.TickCount64 + (long)LeaseLifetime.TotalMilliseconds);
                    reply.Int64(token);
                }

                return false;
            case ManagerOps.Claim:
                lock (_gate)
                {
                    long token = reader.Int64();
                    long id = reader.Int64();
                    if (_leases.Remove(token, out var lease) && lease.Id == id)
                    {
                        current.Hold(id);
                        return false;
                    }

                    // The lease was already claimed (a closure read by several pool workers) or expired: the
                    // object is still reachable as long as someone else holds it.
                    Incref(id);
                    current.Hold(id);
                }

                return false;
            case ManagerOps.Rings:
                // Only between a parent and its own processes: a handle names a descriptor of the sender's
                // process, which a stranger must never get this server to open.
                if (!Trusted) throw new ManagerFault(Fault.InvalidOperation, "shared-memory rings are only for a private manager");
                var requestRing = Queues.QueueRing.Open(SharedMemory.SharedSegment.Read(reader));
                var replyRing = Queues.QueueRing.Open(SharedMemory.SharedSegment.Read(reader));
                context.Rings = (requestRing, replyRing);
                return false;
            case ManagerOps.Count:
                lock (_gate) reply.Int32(_objects.Count);
                return false;
            case ManagerOps.Shutdown:
                return true;
            default:
                throw new ManagerFault(Fault.InvalidOperation, $"the manager has no method '{method}'");
        }
    }

    /// <summary>How long a proxy written into a message keeps its object alive before some process reads it.</summary>
    internal static TimeSpan LeaseLifetime { get; } = TimeSpan.FromSeconds(60);

    private void ExpireLeases()
    {
        long now = Environment.TickCount64;
        List<long>? expired = null;
        foreach (var (token, lease) in _leases)
        {
            if (lease.Expires <= now) (expired ??= []).Add(token);
        }

        if (expired is null) return;
        foreach (var token in expired)
        {
            _leases.Remove(token, out var lease);
            Decref(lease.Id);
        }
    }

    private ServerObject Create(string kind, WireReader reader, CallContext context) => kind switch
    {
        Kinds.Dict => new DictObject(this, reader),
        Kinds.List => new ListObject(this, SlotLists.Read(reader), fixedLength: false),
        Kinds.Array => new ListObject(this, SlotLists.Read(reader), fixedLength: true),
        Kinds.Namespace => new NamespaceObject(this),
        Kinds.Value => new ValueObject(this, Slot.Read(reader)),
        Kinds.Queue => new QueueObject(this, reader.Int32(), reader.Bool()),
        Kinds.Lock => new LockObject(reader.Bool()),
        Kinds.Semaphore => new SemaphoreObject(reader.Int32(), reader.Int32()),
        Kinds.Condition => NewCondition(reader.Int64(), context),
        Kinds.Event => new EventObject(),
        Kinds.Barrier => new BarrierObject(reader.Int32(), reader.Int64()),
        Kinds.Custom => NewCustom(reader.String() ?? string.Empty),
        _ => throw new ManagerFault(Fault.Argument, $"the manager cannot make a '{kind}'"),
    };

    private ConditionObject NewCondition(long lockId, CallContext context)
    {
        if (lockId == 0) return new ConditionObject(this, new LockObject(reentrant: true), 0);
        lock (_gate)
        {
            if (!_objects.TryGetValue(lockId, out var target) || target is not LockObject lck) throw new ManagerFault(Fault.Argument, $"object {lockId} is not a lock of this manager");
            Incref(lockId);
            return new ConditionObject(this, lck, lockId);
        }
    }

    private CustomObject NewCustom(string name)
    {
        if (!_registry.TryGetValue(name, out var registration)) throw new ManagerFault(Fault.NotRegistered, $"'{name}' is not registered with this manager; register it in ManagerOptions before the manager starts");
        return new CustomObject(this, registration);
    }

    internal void Incref(long id)
    {
        lock (_gate)
        {
            if (!_objects.TryGetValue(id, out var target)) throw new ManagerFault(Fault.NoObject, $"object {id} does not exist on the manager (it was freed)");
            target.Refs++;
        }
    }

    /// <summary>Takes a reference for each id a stored value names; all or none.</summary>
    internal void Incref(long[]? ids)
    {
        if (ids is null) return;
        lock (_gate)
        {
            foreach (var id in ids)
            {
                if (!_objects.ContainsKey(id)) throw new ManagerFault(Fault.NoObject, $"a value refers to object {id}, which does not exist on the manager");
            }

            foreach (var id in ids) _objects[id].Refs++;
        }
    }

    internal void Decref(long[]? ids)
    {
        if (ids is null) return;
        lock (_gate)
        {
            foreach (var id in ids) Decref(id);
        }
    }

    internal void Decref(long id)
    {
        lock (_gate)
        {
            if (!_objects.TryGetValue(id, out var target)) return;
            if (--target.Refs > 0) return;
            _objects.Remove(id);
            target.Freed();
        }
    }

    /// <summary>The caller's session now also holds the objects a returned value refers to; its client takes
    /// them over as proxies or gives them back.</summary>
    internal void Grant(CallContext context, long[]? ids)
    {
        if (ids is null) return;
        lock (_gate)
        {
            foreach (var id in ids)
            {
                if (!_objects.TryGetValue(id, out var target)) continue;
                target.Refs++;
                context.Session!.Hold(id);
            }
        }
    }

    private void EndConnection(Session session)
    {
        List<ServerObject> owners;
        lock (_gate)
        {
            if (--session.Connections > 0) return;
            _sessions.Remove(session.Key);
            foreach (var (id, count) in session.Holds)
            {
                for (int i = 0; i < count; i++) Decref(id);
            }

            session.Holds.Clear();
            owners = [.. _objects.Values.Where(o => o is IOwned)];
        }

        // A process that died holding a lock would deadlock everyone else (Python's manager does): release it.
        foreach (var owned in owners) ((IOwned)owned).Abandon(session);
    }
}

/// <summary>One client process, over however many connections it opened.</summary>
internal sealed class Session(Guid key, int pid)
{
    internal Guid Key { get; } = key;

    internal int Pid { get; } = pid;

    internal int Connections { get; set; }

    internal Dictionary<long, int> Holds { get; } = [];

    internal void Hold(long id) => Holds[id] = Holds.GetValueOrDefault(id) + 1;

    internal bool Unhold(long id)
    {
        if (!Holds.TryGetValue(id, out int count)) return false;
        if (count == 1) Holds.Remove(id);
        else Holds[id] = count - 1;
        return true;
    }
}

/// <summary>The caller of one request: its session, its thread (lock ownership), and its connection (so a
/// blocking wait notices the caller hung up).</summary>
internal sealed class CallContext(ManagerServer server, Connection<byte[]> connection, Session? session)
{
    internal ManagerServer Server { get; } = server;

    internal Session? Session { get; set; } = session;

    internal int Thread { get; set; }

    /// <summary>Set when this request moved the connection onto shared-memory rings.</summary>
    internal (Queues.QueueRing Requests, Queues.QueueRing Replies)? Rings { get; set; }

    internal (Guid, int) Owner => (Session!.Key, Thread);

    /// <summary>A client that is waiting for a reply sends nothing, so readable means it hung up.</summary>
    internal bool ClientGone => connection.Poll();
}

/// <summary>The caller hung up while the server waited for it.</summary>
internal sealed class ClientGoneException() : Exception("the client hung up while waiting");

/// <summary>Formats endpoints as text so they travel inside handles and start closures.</summary>
internal static class EndpointText
{
    internal static string Format(EndPoint endpoint) => endpoint switch
    {
        UnixDomainSocketEndPoint unix => "unix:" + AbstractPath(unix.ToString()),
        IPEndPoint ip => "tcp:" + ip,
        _ => throw new ArgumentException($"a manager cannot serve on a {endpoint.GetType().Name}; use an IPEndPoint or a UnixDomainSocketEndPoint", nameof(endpoint)),
    };

    // An abstract socket's name prints with '@' where its leading NUL is.
    private static string AbstractPath(string path) => path.StartsWith('@') ? "\0" + path[1..] : path;

    internal static EndPoint Parse(string text)
    {
        if (text.StartsWith("unix:", StringComparison.Ordinal)) return new UnixDomainSocketEndPoint(text[5..]);
        if (text.StartsWith("tcp:", StringComparison.Ordinal) && IPEndPoint.TryParse(text[4..], out var ip)) return ip;
        throw new ArgumentException($"'{text}' is not a manager address");
    }
}
