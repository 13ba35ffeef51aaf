using System.Buffers.Binary;
using System.Net.Sockets;
using Multiprocessing.Platform;

namespace Multiprocessing.Processes;

/// <summary>Length-prefixed frames on a child's control socket: a 4-byte little-endian length, then the payload.</summary>
internal static class ControlFrames
{
    /// <summary>Largest frame accepted; a job is a delegate and its captures, so anything bigger is a bug.</summary>
    internal const int MaxFrame = 1 << 30;

    internal static void Write(Socket socket, ReadOnlySpan<byte> payload)
    {
        Span<byte> header = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(header, payload.Length);
        SendAll(socket, header);
        SendAll(socket, payload);
    }

    /// <summary>Reads one frame from a raw descriptor (the child's side); null at end of stream.</summary>
    internal static byte[]? Read(int fd)
    {
        Span<byte> header = stackalloc byte[4];
        if (!OsProcess.ReadExactly(fd, header)) return null;
        int length = BinaryPrimitives.ReadInt32LittleEndian(header);
        if (length < 0 || length > MaxFrame) throw new InvalidDataException($"control frame of {length} bytes");
        var payload = new byte[length];
        return OsProcess.ReadExactly(fd, payload) ? payload : null;
    }

    private static void SendAll(Socket socket, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty) data = data[socket.Send(data)..];
    }
}
