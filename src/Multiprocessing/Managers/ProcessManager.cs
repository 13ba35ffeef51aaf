using System.Net;
using System.Net.Sockets;
using System.Reflection;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Multiprocessing.Managers;
using Multiprocessing.Pipes;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing;

/// <summary>
/// A manager: a server process that holds shared objects (dict, list, namespace, locks, queues, values, user types)
/// and hands out proxies to them, Python's <c>multiprocessing.Manager()</c> and <c>BaseManager</c>.
/// </summary>
/// <remarks>
/// Made by <see cref="Mp.Manager(ManagerOptions)"/> (a private server for this program's processes),
/// <see cref="Mp.Manager(EndPoint, byte[], ManagerOptions)"/> (a server on an address, reachable by other programs)
/// or <see cref="Mp.ConnectManager(EndPoint, byte[], ManagerOptions)"/> (a client of a server started elsewhere).
/// Proxies travel to child processes and pool tasks inside closures and messages; a proxy stored inside another
/// managed object stays a live proxy. An object is freed when no process holds a proxy to it and no managed value
/// refers to it. Disposing the manager that started the server stops it (Python's <c>with Manager()</c>): proxies
/// then fail with <see cref="ManagerUnavailableException"/>. Thread-safe; a proxy may be used from any thread.
/// </remarks>
public sealed class ProcessManager : IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ManagerClient _client;
    private readonly ChildProcess? _server;
    private readonly bool _ownsClient;
    private int _disposed;

    private ProcessManager(ManagerClient client, ChildProcess? server, EndPoint address, bool ownsClient = true)
    {
        _client = client;
        _server = server;
        _ownsClient = ownsClient;
        Address = address;
    }

    /// <summary>Where the server listens: for TCP with port 0, the port the system chose.</summary>
    public EndPoint Address { get; }

    /// <summary>The server process's id when this manager started it, else null.</summary>
    public int? Pid => _server?.Pid;

    /// <summary>Whether this manager started the server (and stops it when disposed).</summary>
    public bool IsOwner => _server is not null;

    /// <summary>A shared dictionary, Python's <c>manager.dict()</c>.</summary>
    /// <typeparam name="TKey">The key type.</typeparam>
    /// <typeparam name="TValue">The value type.</typeparam>
    /// <param name="items">Initial items, or null.</param>
    /// <returns>A proxy to the new dictionary.</returns>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    /// <exception cref="NotSupportedException">An item cannot be serialized.</exception>
    public ManagedDict<TKey, TValue> Dict<TKey, TValue>(IEnumerable<KeyValuePair<TKey, TValue>>? items = null)
        where TKey : notnull
    {
        var encoded = (items ?? []).Select(kv => (_client.Codecs.Key(kv.Key, _client), _client.Codecs.Encode(kv.Value, _client))).ToList();
        return Make(Kinds.Dict, w =>
        {
            w.Int32(encoded.Count);
            foreach (var (k, v) in encoded)
            {
                w.Bytes(k);
                v.Write(w);
            }
        }, r => new ManagedDict<TKey, TValue>(r));
    }

    /// <summary>A shared list, Python's <c>manager.list()</c>.</summary>
    /// <typeparam name="T">The item type.</typeparam>
    /// <param name="items">Initial items, or null.</param>
    /// <returns>A proxy to the new list.</returns>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    public ManagedList<T> List<T>(IEnumerable<T>? items = null)
    {
        var slots = (items ?? []).Select(i => _client.Codecs.Encode(i, _client)).ToList();
        return Make(Kinds.List, w => SlotLists.Write(w, slots), r => new ManagedList<T>(r));
    }

    /// <summary>A shared namespace, Python's <c>manager.Namespace()</c>; use it through <c>dynamic</c>.</summary>
    /// <returns>A proxy to the new namespace.</returns>
    public ManagedNamespace Namespace() => Make(Kinds.Namespace, null, r => new ManagedNamespace(r));

    /// <summary>A shared value, Python's <c>manager.Value(typecode, value)</c>.</summary>
    /// <typeparam name="T">The value type.</typeparam>
    /// <param name="initial">The first value.</param>
    /// <returns>A proxy to the new value.</returns>
    public ManagedValue<T> Value<T>(T initial = default!)
    {
        var slot = _client.Codecs.Encode(initial, _client);
        return Make(Kinds.Value, slot.Write, r => new ManagedValue<T>(r));
    }

    /// <summary>A shared fixed-length array, Python's <c>manager.Array(typecode, sequence)</c>.</summary>
    /// <typeparam name="T">The item type.</typeparam>
    /// <param name="items">The items; their number is the array's length.</param>
    /// <returns>A proxy to the new array.</returns>
    public ManagedArray<T> Array<T>(IEnumerable<T> items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var slots = items.Select(i => _client.Codecs.Encode(i, _client)).ToList();
        return Make(Kinds.Array, w => SlotLists.Write(w, slots), r => new ManagedArray<T>(r));
    }

    /// <summary>A shared array of <paramref name="length"/> default values.</summary>
    /// <typeparam name="T">The item type.</typeparam>
    /// <param name="length">The length.</param>
    /// <returns>A proxy to the new array.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative length.</exception>
    public ManagedArray<T> Array<T>(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return Array(Enumerable.Repeat(default(T)!, length));
    }

    /// <summary>A shared queue, Python's <c>manager.Queue(maxsize)</c>.</summary>
    /// <typeparam name="T">The item type.</typeparam>
    /// <param name="maxSize">The bound; 0 for none.</param>
    /// <returns>A proxy to the new queue.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative bound.</exception>
    public ManagedQueue<T> Queue<T>(int maxSize = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxSize);
        return Make(Kinds.Queue, w => { w.Int32(maxSize); w.Bool(false); }, r => new ManagedQueue<T>(r));
    }

    /// <summary>A shared queue with task accounting, Python's <c>manager.JoinableQueue(maxsize)</c>.</summary>
    /// <typeparam name="T">The item type.</typeparam>
    /// <param name="maxSize">The bound; 0 for none.</param>
    /// <returns>A proxy to the new queue.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative bound.</exception>
    public ManagedJoinableQueue<T> JoinableQueue<T>(int maxSize = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxSize);
        return Make(Kinds.Queue, w => { w.Int32(maxSize); w.Bool(true); }, r => new ManagedJoinableQueue<T>(r));
    }

    /// <summary>A shared lock, Python's <c>manager.Lock()</c>.</summary>
    /// <returns>A proxy to the new lock.</returns>
    public ManagedLock Lock() => Make(Kinds.Lock, w => w.Bool(false), r => new ManagedLock(r));

    /// <summary>A shared reentrant lock, Python's <c>manager.RLock()</c>.</summary>
    /// <returns>A proxy to the new lock.</returns>
    public ManagedLock RLock() => Make(Kinds.Lock, w => w.Bool(true), r => new ManagedLock(r));

    /// <summary>A shared semaphore, Python's <c>manager.Semaphore(value)</c>.</summary>
    /// <param name="value">The initial count.</param>
    /// <returns>A proxy to the new semaphore.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative count.</exception>
    public ManagedSemaphore Semaphore(int value = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(value);
        return Make(Kinds.Semaphore, w => { w.Int32(value); w.Int32(int.MaxValue); }, r => new ManagedSemaphore(r));
    }

    /// <summary>A shared bounded semaphore, Python's <c>manager.BoundedSemaphore(value)</c>: releasing past the
    /// initial value throws.</summary>
    /// <param name="value">The initial and largest count.</param>
    /// <returns>A proxy to the new semaphore.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A negative count.</exception>
    public ManagedSemaphore BoundedSemaphore(int value = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(value);
        return Make(Kinds.Semaphore, w => { w.Int32(value); w.Int32(value); }, r => new ManagedSemaphore(r));
    }

    /// <summary>A shared condition variable, Python's <c>manager.Condition(lock)</c>.</summary>
    /// <param name="lock">A lock of this manager, or null for a new reentrant lock.</param>
    /// <returns>A proxy to the new condition.</returns>
    /// <exception cref="ArgumentException">The lock belongs to another manager.</exception>
    public ManagedCondition Condition(ManagedLock? @lock = null)
    {
        if (@lock is not null && !ReferenceEquals(@lock.Client, _client)) throw new ArgumentException("the lock belongs to another manager", nameof(@lock));
        long lockId = @lock?.Id ?? 0;
        return Make(Kinds.Condition, w => w.Int64(lockId), r => new ManagedCondition(r));
    }

    /// <summary>A shared event, Python's <c>manager.Event()</c>.</summary>
    /// <returns>A proxy to the new event.</returns>
    public ManagedEvent Event() => Make(Kinds.Event, null, r => new ManagedEvent(r));

    /// <summary>A shared barrier, Python's <c>manager.Barrier(parties, timeout=...)</c>.</summary>
    /// <param name="parties">How many parties must arrive.</param>
    /// <param name="timeout">The default timeout of <see cref="ManagedBarrier.Wait"/>; null waits forever.</param>
    /// <returns>A proxy to the new barrier.</returns>
    /// <exception cref="ArgumentOutOfRangeException">Fewer than 1 party.</exception>
    public ManagedBarrier Barrier(int parties, TimeSpan? timeout = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(parties, 1);
        long ticks = WireTimeout.Encode(timeout);
        return Make(Kinds.Barrier, w => { w.Int32(parties); w.Int64(ticks); }, r => new ManagedBarrier(r));
    }

    /// <summary>Creates an instance of a type registered in <see cref="ManagerOptions"/> on the server and
    /// returns a proxy that implements its interface.</summary>
    /// <typeparam name="TService">The registered interface.</typeparam>
    /// <returns>The proxy; each call is a round trip to the server.</returns>
    /// <exception cref="InvalidOperationException">The interface is not registered with this manager.</exception>
    /// <exception cref="ArgumentException">TService is not an interface.</exception>
    public TService Create<TService>()
        where TService : class
    {
        if (!typeof(TService).IsInterface) throw new ArgumentException($"{typeof(TService)} is not an interface", nameof(TService));
        string name = Registration.NameOf(typeof(TService));
        return Make(Kinds.Custom, w => w.String(name), r =>
        {
            var proxy = DispatchProxy.Create<TService, ManagedObjectProxy>();
            ((ManagedObjectProxy)(object)proxy).Bind(r);
            return proxy;
        });
    }

    /// <summary>How many objects the server holds now (a diagnostic, Python's <c>_number_of_objects()</c>).</summary>
    /// <returns>The count.</returns>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    public int GetObjectCount()
    {
        ThrowIfDisposed();
        return _client.Call(0, ManagerOps.Count).Int32();
    }

    /// <summary>Stops the server if this manager started it (Python's <c>shutdown()</c>), else disconnects.
    /// Proxies of this manager fail afterwards with <see cref="ManagerUnavailableException"/>.</summary>
    public void Shutdown() => Dispose();

    /// <summary>Same as <see cref="Shutdown"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_server is null)
        {
            // A manager that arrived in a closure shares this process's client with the proxies that came with it.
            if (_ownsClient) _client.Dispose();
            return;
        }

        try
        {
            _client.Call(0, ManagerOps.Shutdown);
        }
        catch (ManagerUnavailableException ex)
        {
            ProcessRuntime.Logger.LogDebug(ex, "the manager was already gone at shutdown");
        }

        _client.MarkGone("the manager was shut down by its owner");
        _client.Dispose();
        if (!_server.Join(TimeSpan.FromSeconds(5)))
        {
            _server.Kill();
            _server.Join(TimeSpan.FromSeconds(5));
        }

        _server.Dispose();
    }

    /// <summary>Same as <see cref="Shutdown"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes the manager.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"ProcessManager({Address}{(IsOwner ? $", server pid {Pid}" : string.Empty)})";

    internal static ProcessManager Start(EndPoint? address, byte[]? authKey, ManagerOptions? options)
    {
        options ??= new ManagerOptions();
        if (authKey is { Length: 0 }) throw new ArgumentException("an authKey cannot be empty", nameof(authKey));
        bool trusted = address is null;
        var key = authKey?.ToArray() ?? RandomNumberGenerator.GetBytes(32);
        var config = new ManagerServerConfig
        {
            Address = EndpointText.Format(address ?? new UnixDomainSocketEndPoint("\0multiprocessing-manager-" + Guid.NewGuid().ToString("N"))),
            AuthKey = key,
            Trusted = trusted,
            MaxMessageSize = options.MaxMessageSize,
            HandshakeTimeout = options.HandshakeTimeout,
            Registrations = options.Registrations,
        };

        var (receive, send) = Mp.Pipe<string>(duplex: false);
        var server = Mp.Process(() => ManagerServer.Run(config, send), name: "manager", daemon: true);
        string reply;
        try
        {
            server.Start();
            send.Close();
            try
            {
                reply = receive.Recv(options.StartTimeout);
            }
            catch (EndOfStreamException)
            {
                server.Join(TimeSpan.FromSeconds(5));
                throw new InvalidOperationException($"the manager process exited before it served (exit code {server.ExitCode?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"})");
            }
        }
        catch
        {
            if (server.Pid is not null)
            {
                if (server.IsAlive) server.Kill();
                server.Join(TimeSpan.FromSeconds(5));
            }

            server.Dispose();
            throw;
        }
        finally
        {
            send.Dispose();
            receive.Dispose();
        }

        if (reply.StartsWith('!'))
        {
            server.Join(TimeSpan.FromSeconds(5));
            server.Dispose();
            int bar = reply.IndexOf('|', StringComparison.Ordinal);
            if (bar > 1 && int.TryParse(reply.AsSpan(1, bar - 1), out int code) && code > 0) throw new SocketException(code);
            throw new InvalidOperationException("the manager could not start: " + reply[(bar + 1)..]);
        }

        var client = ManagerClient.For(reply, key, trusted, Options(options));
        return new ProcessManager(client, server, EndpointText.Parse(reply));
    }

    internal static ProcessManager Connect(EndPoint address, byte[] authKey, ManagerOptions? options)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(authKey);
        if (authKey.Length == 0) throw new ArgumentException("an authKey cannot be empty", nameof(authKey));
        string text = EndpointText.Format(address);
        ManagerClient client;
        try
        {
            client = ManagerClient.Connect(text, authKey.ToArray(), trusted: false, Options(options ?? new ManagerOptions()));
        }
        catch (ManagerUnavailableException ex) when (ex.InnerException is SocketException socket)
        {
            throw new SocketException((int)socket.SocketErrorCode, $"no manager serves at {address}: {socket.Message}");
        }

        return new ProcessManager(client, null, address);
    }

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        writer.String(_client.Address);
        writer.Bytes(_client.AuthKey);
        writer.Bool(_client.Trusted);
    }

    internal static ProcessManager ReadHandle(WireReader reader)
    {
        string address = reader.String() ?? throw new InvalidDataException("a manager handle without an address");
        var key = reader.Bytes().ToArray();
        bool trusted = reader.Bool();
        return new ProcessManager(ManagerClient.For(address, key, trusted), null, EndpointText.Parse(address), ownsClient: false);
    }

    private static ConnectionOptions Options(ManagerOptions options) =>
        new() { MaxMessageSize = options.MaxMessageSize, HandshakeTimeout = options.HandshakeTimeout };

    private T Make<T>(string kind, Action<WireWriter>? args, Func<ProxyRef, T> proxy)
    {
        ThrowIfDisposed();
        var request = _client.Begin(0, ManagerOps.Create);
        request.String(kind);
        args?.Invoke(request);
        long id = _client.Send(request).Int64();
        _client.Adopt(id);
        return proxy(new ProxyRef(_client, id));
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}

/// <summary>The manager process is gone (it died, or its owner shut it down) or cannot be reached: a proxy call
/// fails with this at once instead of hanging.</summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class ManagerUnavailableException : MultiprocessingException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="address">The manager's address.</param>
    /// <param name="reason">What happened.</param>
    /// <param name="inner">The I/O failure that showed it, if any.</param>
    public ManagerUnavailableException(string address, string reason, Exception? inner)
        : base($"the manager at {address.Replace("\0", "@", StringComparison.Ordinal)} is unavailable: {reason}", inner)
    {
        Address = address.Replace("\0", "@", StringComparison.Ordinal);
    }

    /// <summary>The manager's address, as text.</summary>
    public string Address { get; }
}
