using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using Multiprocessing.Pipes;
using Multiprocessing.Platform;

namespace Multiprocessing;

/// <summary>
/// Accepts connections from other programs on a Unix socket or TCP, Python's
/// <c>multiprocessing.connection.Listener</c>. Create with <see cref="Mp.Listener{T}(EndPoint, byte[], int, ConnectionOptions)"/>.
/// </summary>
/// <typeparam name="T">What the accepted connections carry.</typeparam>
/// <remarks>
/// Anyone who can reach the address can connect, so connections made here never deserialize type names: items are
/// plain MessagePack for <typeparamref name="T"/>, library handles cannot be sent, and messages are limited to
/// <see cref="ConnectionOptions.MaxMessageSize"/>. With an authKey, both sides prove they know it (HMAC challenge
/// both ways, compatible with Python) before <see cref="Accept"/> returns. Thread-safe. A Unix socket path is
/// removed when the listener is disposed; the default address is an abstract socket, which has no file at all.
/// </remarks>
public sealed class ConnectionListener<T> : IDisposable, IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly byte[]? _authKey;
    private readonly ConnectionOptions _options;
    private int _disposed;

    internal ConnectionListener(EndPoint? address, byte[]? authKey, int backlog, ConnectionOptions? options)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(backlog, 1);
        if (authKey is { Length: 0 }) throw new ArgumentException("an authKey cannot be empty; pass null for no authentication", nameof(authKey));
        _authKey = authKey?.ToArray();
        _options = options ?? new ConnectionOptions();
        address ??= new UnixDomainSocketEndPoint("\0multiprocessing-listener-" + Guid.NewGuid().ToString("N"));
        _socket = NewSocket(address);
        try
        {
            _socket.Bind(address);
            _socket.Listen(backlog);
        }
        catch
        {
            _socket.Dispose();
            throw;
        }

        Address = _socket.LocalEndPoint ?? address;
    }

    /// <summary>Where clients connect: for TCP with port 0, the port the system chose.</summary>
    public EndPoint Address { get; }

    /// <summary>Waits for a client and returns its connection, after the handshake when there is an authKey.</summary>
    /// <param name="timeout">How long to wait for a client; null waits forever.</param>
    /// <returns>The connection to that client.</returns>
    /// <exception cref="AuthenticationException">The client's authKey is wrong (or it did not take part in the
    /// handshake); it has been disconnected and the listener keeps serving.</exception>
    /// <exception cref="TimeoutException">No client came in time.</exception>
    /// <exception cref="ObjectDisposedException">The listener is disposed.</exception>
    public Connection<T> Accept(TimeSpan? timeout = null)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (timeout is { } t && !_socket.Poll(t, SelectMode.SelectRead)) throw new TimeoutException("no client connected in time");
        using var client = _socket.Accept();
        return Authenticated(client, _authKey, _options, Handshake.AsServer);
    }

    /// <summary>Accepts a client without blocking a thread-pool thread.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The connection to that client.</returns>
    /// <exception cref="AuthenticationException">The client's authKey is wrong; the listener keeps serving.</exception>
    /// <exception cref="OperationCanceledException">Cancelled first.</exception>
    public async Task<Connection<T>> AcceptAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        using var client = await _socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
        if (_authKey is null) return Authenticated(client, null, _options, Handshake.AsServer);

        // The handshake blocks on reads with a deadline; it runs on its own thread, not a thread-pool one.
        return await Task.Factory.StartNew(() => Authenticated(client, _authKey, _options, Handshake.AsServer), cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
    }

    /// <summary>Stops listening, Python's <c>close()</c>; removes a Unix socket file it created.</summary>
    public void Close() => Dispose();

    /// <summary>Stops listening; removes a Unix socket file it created.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        // Disposing the socket also removes a Unix socket file it bound.
        _socket.Dispose();
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Accepts a raw socket without the handshake, so a server can authenticate each client on its own
    /// thread and one slow client cannot hold up the others.</summary>
    internal Socket AcceptSocket()
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        return _socket.Accept();
    }

    internal byte[]? AuthKey => _authKey;

    internal ConnectionOptions Options => _options;

    internal static Connection<T> Connect(EndPoint address, byte[]? authKey, ConnectionOptions? options)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (authKey is { Length: 0 }) throw new ArgumentException("an authKey cannot be empty; pass null for no authentication", nameof(authKey));
        using var socket = NewSocket(address);
        socket.Connect(address);
        return Authenticated(socket, authKey, options ?? new ConnectionOptions(), Handshake.AsClient);
    }

    private static Socket NewSocket(EndPoint address) => address is UnixDomainSocketEndPoint
        ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
        : new Socket(address.AddressFamily == AddressFamily.Unspecified ? AddressFamily.InterNetwork : address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);

    /// <summary>Takes its own descriptor for a connected socket and, with a key, runs this side's handshake.</summary>
    internal static Connection<T> Authenticated(Socket socket, byte[]? authKey, ConnectionOptions options, Action<Connection<T>, byte[], TimeSpan> handshake)
    {
        if (socket.ProtocolType == ProtocolType.Tcp) socket.NoDelay = true;
        var connection = new Connection<T>(OsIo.Dup((int)socket.SafeHandle.DangerousGetHandle()), readable: true, writable: true, trusted: false, options.MaxMessageSize);
        if (authKey is null) return connection;
        try
        {
            handshake(connection, authKey, options.HandshakeTimeout);
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }
}
