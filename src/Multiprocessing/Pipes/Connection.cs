using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Multiprocessing.Pipes;
using Multiprocessing.Platform;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;
using Multiprocessing.Synchronization;

namespace Multiprocessing;

/// <summary>
/// One end of a pipe or socket carrying whole messages, Python's <c>multiprocessing.connection.Connection</c>.
/// Made by <see cref="Mp.Pipe{T}(bool)"/>, <see cref="ConnectionListener{T}.Accept(TimeSpan?)"/> and
/// <see cref="Mp.Client{T}(System.Net.EndPoint, byte[], ConnectionOptions)"/>.
/// </summary>
/// <typeparam name="T">What <see cref="Send"/> and <see cref="Recv"/> carry. <see cref="SendBytes(ReadOnlySpan{byte})"/>
/// and <see cref="RecvBytes"/> carry raw messages on the same connection.</typeparam>
/// <remarks>
/// Each message is a 4-byte big-endian length and the payload (lengths over 2 GiB use Python's -1 escape and an
/// 8-byte length), so raw messages interoperate with Python's <c>send_bytes</c>/<c>recv_bytes</c>. Thread-safe:
/// concurrent senders never interleave their messages, nor do concurrent receivers. Process-safe in the sense that
/// it can be passed to other processes (captured by a target, sent through a queue or another connection); two
/// processes reading the same end compete for messages. The other end sees end-of-file once every process holding
/// this end has closed it: close the copies you do not use, as in Python.
/// </remarks>
public sealed class Connection<T> : IProcessShared, IDisposable, IAsyncDisposable
{
    private const int SmallMessage = 64 << 10;
    private const int GrowthStep = 1 << 20;

    [ThreadStatic]
    private static WireWriter? _scratch;

    private readonly FdHandle _fd;
    private readonly bool _socket;
    private readonly MessageCodec<T> _codec;
    private readonly long _maxMessage;
    private readonly object _sendGate = new();
    private readonly object _recvGate = new();
    private readonly AdaptiveSpin _spin = new();
    private UInt128 _shareToken;
    private bool _shared;

    internal Connection(int fd, bool readable, bool writable, bool trusted, long maxMessage = long.MaxValue)
    {
        _fd = new FdHandle(fd);
        _socket = OsIo.IsSocket(fd);
        Readable = readable;
        Writable = writable;
        _codec = trusted ? MessageCodec<T>.Trusted : MessageCodec<T>.Untrusted;
        _maxMessage = maxMessage;
    }

    /// <summary>Whether this end can receive.</summary>
    public bool Readable { get; }

    /// <summary>Whether this end can send.</summary>
    public bool Writable { get; }

    /// <summary>Whether <see cref="Close"/> was called (or a broken message closed it).</summary>
    public bool Closed => _fd.IsClosed;

    /// <summary>Sends one item as one message.</summary>
    /// <param name="item">The item; library objects in it (locks, queues, connections) travel as handles.</param>
    /// <exception cref="NotSupportedException">The item cannot be serialized; nothing was sent.</exception>
    /// <exception cref="IOException">The other end is closed (broken pipe).</exception>
    /// <exception cref="InvalidOperationException">This end is read-only.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public void Send(T item)
    {
        ThrowIfCannot(write: true);
        var writer = Interlocked.Exchange(ref _scratch, null) ?? new WireWriter(4096);
        try
        {
            writer.Reset();
            writer.Int32(0);
            try
            {
                _codec.Write(writer, item);
            }
            catch (Exception ex) when (ex is not NotSupportedException)
            {
                throw new NotSupportedException($"a {item?.GetType().FullName ?? typeof(T).FullName} cannot be sent: {ex.Message}", ex);
            }

            var frame = MemoryMarshal.AsMemory(writer.Written);
            int length = frame.Length - 4;
            BinaryPrimitives.WriteInt32BigEndian(frame.Span, length);
            lock (_sendGate) WithFd(fd => OsIo.WriteAll(fd, frame.Span, _socket));
        }
        finally
        {
            if (writer.Length <= SmallMessage * 16) _scratch = writer;
        }
    }

    /// <summary>Sends raw bytes as one message, Python's <c>send_bytes</c>.</summary>
    /// <param name="data">The message.</param>
    /// <exception cref="IOException">The other end is closed (broken pipe).</exception>
    /// <exception cref="InvalidOperationException">This end is read-only.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public void SendBytes(ReadOnlySpan<byte> data)
    {
        ThrowIfCannot(write: true);
        Span<byte> header = stackalloc byte[12];
        int headerLength = WriteHeader(header, data.Length);
        lock (_sendGate)
        {
            bool added = false;
            _fd.DangerousAddRef(ref added);
            try
            {
                int fd = (int)_fd.DangerousGetHandle();
                if (data.Length <= SmallMessage)
                {
                    // One write for a small message: two would cost the receiver an extra wake-up.
                    Span<byte> frame = data.Length + headerLength <= 1024 ? stackalloc byte[data.Length + headerLength] : new byte[data.Length + headerLength];
                    header[..headerLength].CopyTo(frame);
                    data.CopyTo(frame[headerLength..]);
                    OsIo.WriteAll(fd, frame, _socket);
                }
                else
                {
                    OsIo.WriteAll(fd, header[..headerLength], _socket);
                    OsIo.WriteAll(fd, data, _socket);
                }
            }
            finally
            {
                if (added) _fd.DangerousRelease();
            }
        }
    }

    /// <summary>Sends <paramref name="count"/> bytes of <paramref name="buffer"/> from <paramref name="offset"/>,
    /// Python's <c>send_bytes(buf, offset, size)</c>.</summary>
    /// <param name="buffer">The bytes.</param>
    /// <param name="offset">Where the message starts.</param>
    /// <param name="count">How many bytes; null sends the rest of the buffer.</param>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the buffer.</exception>
    /// <exception cref="IOException">The other end is closed (broken pipe).</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public void SendBytes(byte[] buffer, int offset, int? count = null)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(offset, buffer.Length);
        int n = count ?? buffer.Length - offset;
        ArgumentOutOfRangeException.ThrowIfNegative(n, nameof(count));
        if (offset + n > buffer.Length) throw new ArgumentOutOfRangeException(nameof(count), n, $"offset {offset} + count {n} is past the end of a buffer of {buffer.Length} bytes");
        SendBytes(buffer.AsSpan(offset, n));
    }

    /// <summary>Receives one item, waiting at most <paramref name="timeout"/> for it to start arriving.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>The item.</returns>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left (Python's EOFError).</exception>
    /// <exception cref="TimeoutException">No message arrived in time.</exception>
    /// <exception cref="InvalidDataException">The message is larger than allowed or not a <typeparamref name="T"/>.</exception>
    /// <exception cref="InvalidOperationException">This end is write-only.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public T Recv(TimeSpan? timeout = null)
    {
        ThrowIfCannot(write: false);
        long deadline = Blocking.Deadline(timeout);
        byte[] message;
        int length;
        lock (_recvGate) (message, length) = ReceiveMessage(deadline, pooled: true);
        try
        {
            return _codec.Read(message.AsMemory(0, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    /// <summary>Receives an item if one has started arriving; never waits for one.</summary>
    /// <param name="item">The item, or default.</param>
    /// <returns>False if nothing was there or the other end is closed.</returns>
    /// <exception cref="InvalidDataException">The message is larger than allowed or not a <typeparamref name="T"/>.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public bool TryRecv([MaybeNullWhen(false)] out T item)
    {
        item = default;
        if (!Poll()) return false;
        try
        {
            item = Recv(TimeSpan.Zero);
            return true;
        }
        catch (Exception ex) when (ex is EndOfStreamException or TimeoutException)
        {
            return false;
        }
    }

    /// <summary>Receives one raw message, Python's <c>recv_bytes(maxlength)</c>.</summary>
    /// <param name="maxLength">A longer message is refused and closes the connection, as in Python; null: no limit
    /// beyond the connection's own.</param>
    /// <param name="timeout">How long to wait for a message to start arriving; null waits forever.</param>
    /// <returns>The message.</returns>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left.</exception>
    /// <exception cref="TimeoutException">No message arrived in time.</exception>
    /// <exception cref="InvalidDataException">The message is longer than <paramref name="maxLength"/>.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public byte[] RecvBytes(int? maxLength = null, TimeSpan? timeout = null)
    {
        ThrowIfCannot(write: false);
        if (maxLength is < 0) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "a maximum length cannot be negative");
        long deadline = Blocking.Deadline(timeout);
        lock (_recvGate)
        {
            var (message, length) = ReceiveMessage(deadline, pooled: false, maxLength ?? long.MaxValue);
            return message.Length == length ? message : message.AsSpan(0, length).ToArray();
        }
    }

    /// <summary>Receives one raw message that must arrive whole by <paramref name="deadline"/> (a Stopwatch
    /// timestamp): for the authentication handshake, where a peer that starts a message and stalls must not hold
    /// the caller forever.</summary>
    /// <exception cref="TimeoutException">The message did not arrive whole in time.</exception>
    internal byte[] RecvBytesWhole(int maxLength, long deadline)
    {
        ThrowIfCannot(write: false);
        lock (_recvGate)
        {
            var (message, length) = ReceiveMessage(deadline, pooled: false, maxLength, wholeMessage: true);
            return message.Length == length ? message : message.AsSpan(0, length).ToArray();
        }
    }

    /// <summary>Receives one raw message into <paramref name="buffer"/> from <paramref name="offset"/>, Python's
    /// <c>recv_bytes_into</c>.</summary>
    /// <param name="buffer">Where the message goes.</param>
    /// <param name="offset">Where in the buffer it starts.</param>
    /// <returns>The message's length.</returns>
    /// <exception cref="BufferTooShortException">The message does not fit; it is in the exception.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="offset"/> is outside the buffer.</exception>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public int RecvBytesInto(byte[] buffer, int offset = 0)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (offset < 0 || offset > buffer.Length) throw new ArgumentOutOfRangeException(nameof(offset), offset, $"the offset must be within the buffer's {buffer.Length} bytes");
        return RecvBytesInto(buffer.AsMemory(offset));
    }

    /// <summary>Receives one raw message into <paramref name="buffer"/>.</summary>
    /// <param name="buffer">Where the message goes.</param>
    /// <returns>The message's length.</returns>
    /// <exception cref="BufferTooShortException">The message does not fit; it is in the exception.</exception>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public int RecvBytesInto(Memory<byte> buffer)
    {
        ThrowIfCannot(write: false);
        byte[] message;
        int length;
        lock (_recvGate) (message, length) = ReceiveMessage(long.MaxValue, pooled: true);
        try
        {
            if (length > buffer.Length) throw new BufferTooShortException(message.AsSpan(0, length).ToArray(), buffer.Length);
            message.AsSpan(0, length).CopyTo(buffer.Span);
            return length;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    /// <summary>Whether a message (or end-of-file) is waiting, without waiting; Python's <c>poll()</c>.</summary>
    /// <returns>True if a receive would not block.</returns>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public bool Poll() => Poll(TimeSpan.Zero);

    /// <summary>Waits at most <paramref name="timeout"/> for a message (or end-of-file); Python's <c>poll(timeout)</c>.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <returns>True if a receive would not block.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">This connection is closed.</exception>
    public bool Poll(TimeSpan? timeout)
    {
        ThrowIfCannot(write: false);
        long deadline = Blocking.Deadline(timeout);
        return WithFd(fd => WaitReadable(fd, deadline, CancellationToken.None));
    }

    /// <summary>Sends one item without blocking the caller's thread on a full pipe.</summary>
    /// <param name="item">The item.</param>
    /// <param name="cancellationToken">Stops waiting for room; a message already partly written is finished.</param>
    /// <returns>A task that completes when the message is written.</returns>
    /// <exception cref="NotSupportedException">The item cannot be serialized; nothing was sent.</exception>
    /// <exception cref="IOException">The other end is closed.</exception>
    public Task SendAsync(T item, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.Factory.StartNew(() => Send(item), cancellationToken, TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
    }

    /// <summary>Sends raw bytes as one message without blocking the caller's thread.</summary>
    /// <param name="data">The message.</param>
    /// <param name="cancellationToken">Stops waiting to start.</param>
    /// <returns>A task that completes when the message is written.</returns>
    /// <exception cref="IOException">The other end is closed.</exception>
    public Task SendBytesAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.Factory.StartNew(() => SendBytes(data.Span), cancellationToken, TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
    }

    /// <summary>Receives one item without blocking a thread-pool thread while waiting.</summary>
    /// <param name="cancellationToken">Stops waiting for a message to start arriving.</param>
    /// <returns>The item.</returns>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left.</exception>
    /// <exception cref="OperationCanceledException">Cancelled before a message arrived.</exception>
    public Task<T> RecvAsync(CancellationToken cancellationToken = default) =>
        WhenReadable(() => Recv(), cancellationToken);

    /// <summary>Receives one raw message without blocking a thread-pool thread while waiting.</summary>
    /// <param name="maxLength">As for <see cref="RecvBytes"/>.</param>
    /// <param name="cancellationToken">Stops waiting for a message to start arriving.</param>
    /// <returns>The message.</returns>
    /// <exception cref="EndOfStreamException">The other end is closed and nothing is left.</exception>
    /// <exception cref="OperationCanceledException">Cancelled before a message arrived.</exception>
    public Task<byte[]> RecvBytesAsync(int? maxLength = null, CancellationToken cancellationToken = default) =>
        WhenReadable(() => RecvBytes(maxLength), cancellationToken);

    /// <summary>Waits for a message (or end-of-file) without blocking a thread-pool thread.</summary>
    /// <param name="timeout">Null waits forever.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>True if a receive would not block; false on timeout.</returns>
    /// <exception cref="OperationCanceledException">Cancelled first.</exception>
    public Task<bool> PollAsync(TimeSpan? timeout, CancellationToken cancellationToken = default)
    {
        ThrowIfCannot(write: false);
        long deadline = Blocking.Deadline(timeout);
        if (Poll()) return Task.FromResult(true);
        return Blocking.OffThread(ct => WithFd(fd => WaitReadable(fd, deadline, ct)), static () => { }, cancellationToken);
    }

    /// <summary>Receives items until the other end closes, as an async stream.</summary>
    /// <param name="cancellationToken">Stops the stream while it waits.</param>
    /// <returns>Every item, in order, until end-of-file.</returns>
    /// <exception cref="OperationCanceledException">Cancelled while waiting.</exception>
    public async IAsyncEnumerable<T> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            T item;
            try
            {
                item = await RecvAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (EndOfStreamException)
            {
                yield break;
            }

            yield return item;
        }
    }

    /// <summary>Closes this end in this process, Python's <c>close()</c>; closing twice is harmless.</summary>
    public void Close()
    {
        if (_fd.IsClosed) return;
        _fd.Dispose();
        lock (_sendGate)
        {
            if (_shared) DescriptorSharer.OwnerClosed(_shareToken);
        }
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => Close();

    /// <summary>Same as <see cref="Close"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Close();
        return ValueTask.CompletedTask;
    }

    /// <summary>Describes this end.</summary>
    /// <returns>For example "Connection&lt;Int32&gt;(read, write)".</returns>
    public override string ToString() =>
        $"Connection<{typeof(T).Name}>({(Readable ? "read" : "")}{(Readable && Writable ? ", " : "")}{(Writable ? "write" : "")}{(Closed ? ", closed" : "")})";

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        ObjectDisposedException.ThrowIf(_fd.IsClosed, this);
        lock (_sendGate)
        {
            if (!_shared)
            {
                _shareToken = WithFd(DescriptorSharer.Share);
                _shared = true;
            }
        }

        writer.Byte((byte)((Readable ? 1 : 0) | (Writable ? 2 : 0) | (_codec.IsTrusted ? 4 : 0)));
        writer.Int64(_maxMessage);
        writer.Int32(Environment.ProcessId);
        DescriptorSharer.Write(writer, _shareToken);
    }

    internal static Connection<T> ReadHandle(WireReader reader)
    {
        byte flags = reader.Byte();
        long max = reader.Int64();
        int pid = reader.Int32();
        int fd = DescriptorSharer.Read(reader, pid);
        return new Connection<T>(fd, (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0, max);
    }

    internal static int WriteHeader(Span<byte> header, long length)
    {
        if (length <= int.MaxValue)
        {
            BinaryPrimitives.WriteInt32BigEndian(header, (int)length);
            return 4;
        }

        BinaryPrimitives.WriteInt32BigEndian(header, -1);
        BinaryPrimitives.WriteInt64BigEndian(header[4..], length);
        return 12;
    }

    private (byte[] Message, int Length) ReceiveMessage(long deadline, bool pooled, long maxLength = long.MaxValue, bool wholeMessage = false)
    {
        bool added = false;
        _fd.DangerousAddRef(ref added);
        try
        {
            int fd = (int)_fd.DangerousGetHandle();
            if (!WaitReadable(fd, deadline, CancellationToken.None)) throw new TimeoutException("no message arrived on the connection in time");
            Span<byte> header = stackalloc byte[8];
            long rest = wholeMessage ? deadline : long.MaxValue;
            if (!ReadExactly(fd, header[..4], atStart: true, rest)) throw new EndOfStreamException("the other end of the connection is closed and no message is left");
            long length = BinaryPrimitives.ReadInt32BigEndian(header);
            if (length == -1)
            {
                ReadExactly(fd, header, atStart: false, rest);
                length = BinaryPrimitives.ReadInt64BigEndian(header);
            }

            long limit = Math.Min(maxLength, _maxMessage);
            if (length < 0 || length > limit || length > Array.MaxLength)
            {
                // The stream cannot be resynchronised after a refused message: Python closes it too.
                Close();
                throw new InvalidDataException(length < 0
                    ? $"a message header claimed a negative length ({length}); the connection was closed"
                    : $"a message of {length} bytes is larger than the limit of {Math.Min(limit, Array.MaxLength)}; the connection was closed");
            }

            return ReadBody(fd, (int)length, pooled, _codec.IsTrusted, rest);
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    private static (byte[] Message, int Length) ReadBody(int fd, int length, bool pooled, bool trusted, long deadline)
    {
        // From a stranger, grow with what actually arrives: a header that claims a gigabyte allocates nothing until
        // bytes follow. Between our own processes the header is believed, and the buffer is not zeroed first.
        int initial = trusted ? length : Math.Min(length, GrowthStep);
        byte[] buffer = pooled ? ArrayPool<byte>.Shared.Rent(initial) : GC.AllocateUninitializedArray<byte>(initial);
        int got = 0;
        try
        {
            while (got < length)
            {
                if (got == buffer.Length)
                {
                    int next = (int)Math.Min(length, (long)buffer.Length * 2);
                    byte[] bigger = pooled ? ArrayPool<byte>.Shared.Rent(next) : GC.AllocateUninitializedArray<byte>(next);
                    buffer.AsSpan(0, got).CopyTo(bigger);
                    if (pooled) ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }

                WaitForRest(fd, deadline);
                int n = OsIo.Read(fd, buffer.AsSpan(got, Math.Min(buffer.Length, length) - got));
                if (n == 0) throw new EndOfStreamException($"the other end of the connection closed in the middle of a message ({got} of {length} bytes)");
                got += n;
            }

            return (buffer, length);
        }
        catch
        {
            if (pooled) ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }
    }

    private static bool ReadExactly(int fd, Span<byte> into, bool atStart, long deadline)
    {
        int got = 0;
        while (got < into.Length)
        {
            WaitForRest(fd, deadline);
            int n = OsIo.Read(fd, into[got..]);
            if (n == 0)
            {
                if (got == 0 && atStart) return false;
                throw new EndOfStreamException("the other end of the connection closed in the middle of a message header");
            }

            got += n;
        }

        return true;
    }

    /// <summary>With a deadline for the whole message, waits for the next bytes only until then.</summary>
    private static void WaitForRest(int fd, long deadline)
    {
        if (deadline == long.MaxValue || OsIo.WaitReadable(fd, 0)) return;
        long now = Stopwatch.GetTimestamp();
        int ms = (int)Math.Clamp(Math.Ceiling(Stopwatch.GetElapsedTime(now, deadline).TotalMilliseconds), 1, int.MaxValue);
        if (now >= deadline || !OsIo.WaitReadable(fd, ms)) throw new TimeoutException("the rest of a message did not arrive in time");
    }

    /// <summary>Waits for data: looks, spins while that has been paying off (a reply from a process on another
    /// core usually comes within microseconds, far sooner than a sleep and wake-up), then sleeps in poll.</summary>
    private bool WaitReadable(int fd, long deadline, CancellationToken cancellationToken)
    {
        if (OsIo.WaitReadable(fd, 0)) return true;
        if (deadline > Stopwatch.GetTimestamp() && _spin.Spin(static f => OsIo.WaitReadable(f, 0), fd)) return true;

        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            long now = Stopwatch.GetTimestamp();
            if (now >= deadline) return false;
            int ms = deadline == long.MaxValue ? -1 : (int)Math.Clamp(Math.Ceiling(Stopwatch.GetElapsedTime(now, deadline).TotalMilliseconds), 1, int.MaxValue);

            // Async waiters look at their token between slices.
            if (cancellationToken.CanBeCanceled && (ms < 0 || ms > 50)) ms = 50;
            if (OsIo.WaitReadable(fd, ms)) return true;
        }
    }

    private Task<TResult> WhenReadable<TResult>(Func<TResult> receive, CancellationToken cancellationToken)
    {
        ThrowIfCannot(write: false);
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<TResult>(cancellationToken);
        if (Poll())
        {
            try
            {
                return Task.FromResult(receive());
            }
            catch (Exception ex)
            {
                return Task.FromException<TResult>(ex);
            }
        }

        return Blocking.OffThread(
            ct =>
            {
                WithFd(fd => WaitReadable(fd, long.MaxValue, ct));
                return receive();
            },
            static () => { },
            cancellationToken);
    }

    private void ThrowIfCannot(bool write)
    {
        ObjectDisposedException.ThrowIf(_fd.IsClosed, this);
        if (write && !Writable) throw new InvalidOperationException("this end of the pipe is read-only: it was made by Mp.Pipe(duplex: false) as the receiving end");
        if (!write && !Readable) throw new InvalidOperationException("this end of the pipe is write-only: it was made by Mp.Pipe(duplex: false) as the sending end");
    }

    private TResult WithFd<TResult>(Func<int, TResult> action)
    {
        bool added = false;
        _fd.DangerousAddRef(ref added);
        try
        {
            return action((int)_fd.DangerousGetHandle());
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }

    private void WithFd(Action<int> action)
    {
        bool added = false;
        _fd.DangerousAddRef(ref added);
        try
        {
            action((int)_fd.DangerousGetHandle());
        }
        finally
        {
            if (added) _fd.DangerousRelease();
        }
    }
}

/// <summary>Owns one descriptor; closing waits for calls in flight, and a forgotten one is closed by the GC.</summary>
internal sealed class FdHandle : SafeHandle
{
    internal FdHandle(int fd)
        : base(-1, ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle == -1;

    protected override bool ReleaseHandle()
    {
        OsIo.Close((int)handle);
        return true;
    }
}
