using System.Buffers;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Multiprocessing.Platform;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing;

/// <summary>
/// A named block of shared memory, Python's <c>multiprocessing.shared_memory.SharedMemory</c>: the same names in
/// /dev/shm, so a Python process on the same machine can attach to a block made here and the other way round.
/// Create with <see cref="Mp.SharedMemory"/>.
/// </summary>
/// <remarks>
/// Process-safe to share; the bytes themselves are not synchronized. As in Python, the name lives until
/// <see cref="Unlink"/> is called; unlike Python, a block created here is also unlinked if its creator ends without
/// doing so, even when it is SIGKILLed: a small tracker process, started with the first named block and gone with
/// the last, removes what is left. <see cref="Close"/> (or Dispose) unmaps the block in this process; spans taken
/// from it must not be used afterwards.
/// </remarks>
public sealed unsafe class SharedMemoryBlock : IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly int _fd;
    private readonly nint _address;
    private int _closed;
    private int _unlinked;

    private SharedMemoryBlock(string name, int fd, nint address, long size)
    {
        Name = name;
        _fd = fd;
        _address = address;
        Size = size;
    }

    /// <summary>The block's name, without a leading slash, as Python's <c>name</c>.</summary>
    public string Name { get; }

    /// <summary>The block's size in bytes.</summary>
    public long Size { get; }

    /// <summary>The block's bytes, as Python's <c>buf</c>.</summary>
    /// <exception cref="ObjectDisposedException">The block was closed.</exception>
    /// <exception cref="InvalidOperationException">The block is larger than a span can address (2 GiB).</exception>
    public Span<byte> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(_closed != 0, this);
            if (Size > int.MaxValue) throw new InvalidOperationException($"a block of {Size} bytes is larger than one span; use Slice");
            return new Span<byte>((void*)_address, (int)Size);
        }
    }

    /// <summary>The block's bytes as <see cref="Memory{T}"/>, for APIs that need it (streams, async I/O).</summary>
    /// <exception cref="ObjectDisposedException">The block was closed.</exception>
    public Memory<byte> Memory => new BlockMemory(this).Memory;

    /// <summary>A part of the block, for blocks larger than 2 GiB.</summary>
    /// <returns>The span.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the block.</exception>
    /// <exception cref="ObjectDisposedException">The block was closed.</exception>
    public Span<byte> Slice(long offset, int length)
    {
        ObjectDisposedException.ThrowIf(_closed != 0, this);
        if (offset < 0 || length < 0 || offset + length > Size) throw new ArgumentOutOfRangeException(nameof(offset), $"{length} bytes at {offset} are outside a block of {Size}");
        return new Span<byte>((byte*)_address + offset, length);
    }

    internal static SharedMemoryBlock Open(string? name, bool create, long size)
    {
        if (name is null)
        {
            if (!create) throw new ArgumentException("a name is needed to attach to an existing block (create: false)", nameof(name));
            name = "psm_" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        }

        name = name.TrimStart('/');
        if (name.Length == 0 || name.Length > 250 || name.Contains('/') || name.Contains('\0'))
            throw new ArgumentException($"'{name}' is not a valid shared memory name (1 to 250 characters, no '/')", nameof(name));
        if (create && size <= 0) throw new ArgumentOutOfRangeException(nameof(size), size, "a new block needs a positive size");
        if (size < 0) throw new ArgumentOutOfRangeException(nameof(size), size, "the size cannot be negative");

        var (fd, address, actual) = OsShared.OpenNamed(name, create, size);
        if (create) ResourceTracker.Register(name);
        return new SharedMemoryBlock(name, fd, address, actual);
    }

    /// <summary>Unmaps the block in this process, as Python's <c>close()</c>; the name stays until
    /// <see cref="Unlink"/>. Calling it again does nothing.</summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        if (_address != 0) OsShared.Unmap(_address, Size);
        OsShared.Close(_fd);
    }

    /// <summary>Removes the block's name, as Python's <c>unlink()</c>: processes that have it mapped keep it, no new
    /// process can attach, and the memory goes when the last one closes it.</summary>
    /// <exception cref="FileNotFoundException">The name was already removed, by this or another process.</exception>
    public void Unlink()
    {
        bool first = Interlocked.Exchange(ref _unlinked, 1) == 0;
        bool removed = OsShared.UnlinkNamed(Name);
        if (first) ResourceTracker.Unregister(Name);
        if (!removed) throw new FileNotFoundException($"no shared memory block named '{Name}' exists", "/dev/shm/" + Name);
    }

    /// <summary>Same as <see cref="Close"/>: disposing does not unlink, as in Python.</summary>
    public void Dispose() => Close();

    /// <summary>Same as <see cref="Close"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Close();
        return ValueTask.CompletedTask;
    }

    /// <summary>Shows the name and size, as Python's repr.</summary>
    /// <returns>For example "SharedMemoryBlock('psm_0123abcd', size=1024)".</returns>
    public override string ToString() => $"SharedMemoryBlock('{Name}', size={Size})";

    void IProcessShared.WriteHandle(WireWriter writer) => writer.String(Name);

    internal static SharedMemoryBlock ReadHandle(WireReader reader) => Open(reader.String(), create: false, 0);

    private sealed class BlockMemory(SharedMemoryBlock block) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => block.Span;

        public override MemoryHandle Pin(int elementIndex = 0) => new((byte*)block._address + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}

/// <summary>
/// Unlinks named blocks whose creator ended without unlinking them. The tracker is a child process that reads
/// "+name" and "-name" lines; when its input ends (the parent exited, however) it unlinks what is still listed.
/// It is not one of <see cref="Mp.ActiveChildren"/>, and it exits as soon as nothing is listed.
/// </summary>
internal static class ResourceTracker
{
    private static readonly Lock Gate = new();
    private static readonly HashSet<string> Names = new(StringComparer.Ordinal);
    private static ChildProcess? _tracker;

    internal static void Register(string name)
    {
        lock (Gate)
        {
            if (_tracker is null)
            {
                _tracker = new ChildProcess(() => Serve(), "ResourceTracker", daemon: false, ownsChannel: true, tracked: false);
                _tracker.Start();
            }

            Names.Add(name);
            Send('+', name);
        }
    }

    internal static void Unregister(string name)
    {
        ChildProcess? done = null;
        lock (Gate)
        {
            if (!Names.Remove(name)) return;
            Send('-', name);
            if (Names.Count == 0)
            {
                done = _tracker;
                _tracker = null;
            }
        }

        if (done is null) return;
        // Closing the channel is the tracker's signal to finish; its exit is then collected here.
        done.Channel.Dispose();
        if (!done.ChannelClosedAsync().Wait(TimeSpan.FromSeconds(10)))
            ProcessRuntime.Logger.LogWarning("The shared memory tracker (pid {Pid}) did not exit", done.Pid);
        else done.Dispose();
    }

    private static void Send(char op, string name)
    {
        try
        {
            _tracker!.Channel.Send(Encoding.UTF8.GetBytes($"{op}{name}\n"));
        }
        catch (SocketException ex)
        {
            ProcessRuntime.Logger.LogWarning(ex, "The shared memory tracker is gone; block {Name} will not be unlinked if this process dies", name);
        }
    }

    /// <summary>The tracker process's body.</summary>
    private static void Serve()
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        var pending = new StringBuilder();
        var buffer = new byte[4096];
        int n;
        while ((n = OsProcess.ReadSome(ChildRuntime.Channel, buffer)) > 0)
        {
            pending.Append(Encoding.UTF8.GetString(buffer, 0, n));
            var text = pending.ToString();
            int end = text.LastIndexOf('\n');
            if (end < 0) continue;
            foreach (var line in text[..end].Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                if (line[0] == '+') names.Add(line[1..]);
                else names.Remove(line[1..]);
            }

            pending.Clear().Append(text[(end + 1)..]);
        }

        foreach (var name in names) OsShared.UnlinkNamed(name);
    }
}
