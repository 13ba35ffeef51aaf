using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Multiprocessing.Platform;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing.Pipes;

/// <summary>
/// Hands descriptors (pipe and socket ends) to other processes. A sent connection travels as (socket name, token);
/// the receiver connects to this process's abstract Unix socket, presents the token, and gets its own copy of the
/// descriptor through SCM_RIGHTS. Unlike reopening through <c>/proc</c>, this works for sockets, and the sender's
/// copy is given up precisely when it is no longer needed, which is what lets the reader of a pipe see end-of-file.
/// </summary>
/// <remarks>
/// A shared descriptor stays available while the connection it came from is open here, so the same handle may be
/// received many times (a pool task's closure reaches every worker). Once that connection is closed, the copy is
/// dropped as soon as every handle written for it has been received, or after <see cref="UnclaimedGrace"/> if nobody ever asks.
/// Only processes of the same user may connect, and a token is 128 random bits. The socket and its thread exist only
/// while something is shared.
/// </remarks>
internal static class DescriptorSharer
{
    internal static readonly TimeSpan UnclaimedGrace = TimeSpan.FromSeconds(60);

    private sealed class Entry(int fd)
    {
        internal int Fd = fd;
        internal int Sent;
        internal int Received;
        internal long ClosedAt;
    }

    /// <summary>One run of the service: its listening socket, and whether it was told to stop.</summary>
    private sealed class Listener(int fd)
    {
        internal readonly int Fd = fd;
        internal bool Stopped;
    }

    private static readonly Dictionary<UInt128, Entry> Entries = [];
    private static string? _name;
    private static Listener? _listener;

    /// <summary>Makes <paramref name="fd"/> receivable by other processes; returns the token for it.</summary>
    internal static UInt128 Share(int fd)
    {
        int own = OsIo.Dup(fd);
        Span<byte> random = stackalloc byte[16];
        RandomNumberGenerator.Fill(random);
        var token = System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(random);
        lock (Entries)
        {
            EnsureServing();
            Entries[token] = new Entry(own);
        }

        return token;
    }

    /// <summary>The connection the token came from was closed here.</summary>
    internal static void OwnerClosed(UInt128 token)
    {
        lock (Entries)
        {
            ExpireUnclaimed();
            if (!Entries.TryGetValue(token, out var entry)) return;
            if (entry.Received >= entry.Sent) Drop(token, entry);
            else entry.ClosedAt = System.Diagnostics.Stopwatch.GetTimestamp();
        }
    }

    /// <summary>Writes a handle for the token; each one written is expected to be received once.</summary>
    internal static void Write(WireWriter writer, UInt128 token)
    {
        lock (Entries)
        {
            if (Entries.TryGetValue(token, out var entry)) entry.Sent++;
        }

        writer.String(_name);
        Span<byte> bytes = stackalloc byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt128LittleEndian(bytes, token);
        writer.Raw(bytes);
    }

    /// <summary>Receives the descriptor a handle names.</summary>
    /// <exception cref="InvalidOperationException">The sender has exited or no longer has it.</exception>
    internal static int Read(WireReader reader, int senderPid)
    {
        string name = reader.String() ?? throw new InvalidDataException("a connection handle without a sender");
        var token = reader.Raw(16).ToArray();
        int socket = OsIo.ConnectAbstract(name);
        if (socket < 0) throw new InvalidOperationException($"the connection cannot be received: process {senderPid}, which sent it, has exited or has closed it and handed out every copy it sent");
        try
        {
            OsIo.WriteAll(socket, token, socket: true);
            var (status, fd) = OsIo.ReceiveDescriptor(socket);
            if (fd < 0 || status != 1)
                throw new InvalidOperationException($"the connection cannot be received: process {senderPid}, which sent it, has closed it and handed out every copy it sent (or waited {UnclaimedGrace.TotalSeconds:0} s)");
            return fd;
        }
        finally
        {
            OsIo.Close(socket);
        }
    }

    private static void Drop(UInt128 token, Entry entry)
    {
        Entries.Remove(token);
        OsIo.Close(entry.Fd);

        // Nothing is left to hand out, so no handle in flight can name this socket: stop, rather than keep a bound
        // socket and a thread for the life of the process. The next Share starts a new one under a new name.
        if (Entries.Count == 0 && _listener is { } listener)
        {
            listener.Stopped = true;
            _listener = null;
            _name = null;
            OsIo.StopListening(listener.Fd);
        }
    }

    private static void EnsureServing()
    {
        if (_name is not null) return;
        Span<byte> random = stackalloc byte[8];
        RandomNumberGenerator.Fill(random);
        string name = $"multiprocessing-{Environment.ProcessId}-{Convert.ToHexString(random)}";
        var listener = new Listener(OsIo.ListenAbstract(name));
        var thread = new Thread(() => Serve(listener)) { IsBackground = true, Name = "Multiprocessing descriptor sharer" };
        thread.Start();
        _listener = listener;
        _name = name;
    }

    private static void Serve(Listener listener)
    {
        uint me = OsIo.Uid;
        Span<byte> token = stackalloc byte[16];
        while (true)
        {
            int client;
            uint uid;
            try
            {
                (client, uid) = OsIo.Accept(listener.Fd);
            }
            catch (IOException ex)
            {
                lock (Entries)
                {
                    if (!listener.Stopped)
                    {
                        // Not told to stop: the socket failed. The next Share starts another.
                        ProcessRuntime.Logger.LogError(ex, "the descriptor sharer stopped; connections sent from this process can no longer be received");
                        if (_listener == listener) (_listener, _name) = (null, null);
                    }
                }

                OsIo.Close(listener.Fd);
                return;
            }

            try
            {
                if (uid != me || !ReadToken(client, token))
                {
                    OsIo.SendDescriptor(client, 0, -1);
                    continue;
                }

                var key = System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(token);
                lock (Entries)
                {
                    ExpireUnclaimed();
                    if (!Entries.TryGetValue(key, out var entry))
                    {
                        OsIo.SendDescriptor(client, 0, -1);
                        continue;
                    }

                    OsIo.SendDescriptor(client, 1, entry.Fd);
                    entry.Received++;
                    if (entry.ClosedAt != 0 && entry.Received >= entry.Sent) Drop(key, entry);
                }
            }
            catch (IOException ex)
            {
                // One receiver that went away mid-request does not concern the others.
                ProcessRuntime.Logger.LogDebug(ex, "a descriptor request failed");
            }
            finally
            {
                OsIo.Close(client);
            }
        }
    }

    private static bool ReadToken(int client, Span<byte> token)
    {
        int got = 0;
        while (got < token.Length)
        {
            // A peer that connects and says nothing must not hold up everyone else for long.
            if (!OsIo.WaitReadable(client, 5000)) return false;
            int n = OsIo.Read(client, token[got..]);
            if (n == 0) return false;
            got += n;
        }

        return true;
    }

    private static void ExpireUnclaimed()
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        List<UInt128>? expired = null;
        foreach (var (key, entry) in Entries)
        {
            if (entry.ClosedAt != 0 && System.Diagnostics.Stopwatch.GetElapsedTime(entry.ClosedAt, now) > UnclaimedGrace) (expired ??= []).Add(key);
        }

        if (expired is null) return;
        foreach (var key in expired) Drop(key, Entries[key]);
    }
}
