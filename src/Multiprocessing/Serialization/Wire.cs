using System.Buffers.Binary;
using System.Text;

namespace Multiprocessing.Serialization;

/// <summary>
/// The library's own compact encoding for what a child must read before it can run anything (its job, the target
/// delegate, a closure's primitive fields) and for the pool's task and result frames. It lives in this (ReadyToRun)
/// assembly on purpose: decoding the same through MessagePack cost a fresh child about 20 ms of loading and JIT.
/// Values that need a real serializer are embedded as MessagePack blobs (<see cref="ValueCodec"/>).
/// Little-endian, fixed-width, length-prefixed. Reusable: <see cref="Reset"/> keeps the buffer.
/// </summary>
internal sealed class WireWriter(int capacity = 256)
{
    private byte[] _buffer = new byte[Math.Max(capacity, 16)];
    private int _length;

    internal int Length => _length;

    internal ReadOnlyMemory<byte> Written => _buffer.AsMemory(0, _length);

    internal ReadOnlySpan<byte> WrittenSpan => _buffer.AsSpan(0, _length);

    internal void Reset() => _length = 0;

    /// <summary>Drops everything written after <paramref name="length"/> bytes (a half-written item).</summary>
    internal void Truncate(int length) => _length = length;

    internal void Byte(byte value) => Reserve(1)[0] = value;

    internal void Bool(bool value) => Byte((byte)(value ? 1 : 0));

    internal void Int16(short value) => BinaryPrimitives.WriteInt16LittleEndian(Reserve(2), value);

    internal void Int32(int value) => BinaryPrimitives.WriteInt32LittleEndian(Reserve(4), value);

    internal void Int64(long value) => BinaryPrimitives.WriteInt64LittleEndian(Reserve(8), value);

    internal void Single(float value) => Int32(BitConverter.SingleToInt32Bits(value));

    internal void Double(double value) => Int64(BitConverter.DoubleToInt64Bits(value));

    /// <summary>A string, or null (length -1).</summary>
    internal void String(string? value)
    {
        if (value is null)
        {
            Int32(-1);
            return;
        }

        Grow(4 + Encoding.UTF8.GetMaxByteCount(value.Length));
        int n = Encoding.UTF8.GetBytes(value, _buffer.AsSpan(_length + 4));
        BinaryPrimitives.WriteInt32LittleEndian(_buffer.AsSpan(_length), n);
        _length += 4 + n;
    }

    internal void Bytes(ReadOnlySpan<byte> value)
    {
        Int32(value.Length);
        value.CopyTo(Reserve(value.Length));
    }

    /// <summary>Raw bytes, no length prefix (the reader knows the size).</summary>
    internal void Raw(ReadOnlySpan<byte> value) => value.CopyTo(Reserve(value.Length));

    /// <summary>Starts a length-prefixed frame; returns the position to give <see cref="EndFrame"/>.</summary>
    internal int BeginFrame(byte op)
    {
        int start = _length;
        Int32(0);
        Byte(op);
        return start;
    }

    /// <summary>Writes the frame's length (everything after the 4-byte prefix).</summary>
    internal void EndFrame(int start) => BinaryPrimitives.WriteInt32LittleEndian(_buffer.AsSpan(start), _length - start - 4);

    private Span<byte> Reserve(int n)
    {
        Grow(n);
        var span = _buffer.AsSpan(_length, n);
        _length += n;
        return span;
    }

    private void Grow(int n)
    {
        if (_length + n <= _buffer.Length) return;
        Array.Resize(ref _buffer, Math.Max(_buffer.Length * 2, _length + n));
    }
}

/// <summary>Reads what <see cref="WireWriter"/> wrote.</summary>
internal sealed class WireReader(ReadOnlyMemory<byte> data)
{
    private ReadOnlyMemory<byte> _data = data;
    private int _position;

    internal bool AtEnd => _position >= _data.Length;

    internal void Reset(ReadOnlyMemory<byte> data)
    {
        _data = data;
        _position = 0;
    }

    internal byte Byte() => Take(1)[0];

    internal bool Bool() => Take(1)[0] != 0;

    internal short Int16() => BinaryPrimitives.ReadInt16LittleEndian(Take(2));

    internal int Int32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));

    internal long Int64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

    internal float Single() => BitConverter.Int32BitsToSingle(Int32());

    internal double Double() => BitConverter.Int64BitsToDouble(Int64());

    internal string? String()
    {
        int n = Int32();
        return n < 0 ? null : Decode(Take(n));
    }

    /// <summary>UTF-8 to a string, widening plain ASCII with a loop of its own: the first call of the runtime's
    /// vectorized transcoder costs a fresh process about 3 ms, and the job a child reads first is all ASCII.</summary>
    private static string Decode(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > 256) return Encoding.UTF8.GetString(bytes);
        Span<char> chars = stackalloc char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            byte b = bytes[i];
            if (b >= 0x80) return Encoding.UTF8.GetString(bytes);
            chars[i] = (char)b;
        }

        return new string(chars);
    }

    /// <summary>Raw bytes written by <see cref="WireWriter.Raw"/>.</summary>
    internal ReadOnlySpan<byte> Raw(int n) => Take(n);

    internal ReadOnlyMemory<byte> Bytes()
    {
        int n = Int32();
        if (n < 0 || n > _data.Length - _position) throw new InvalidDataException($"a field claims {n} bytes but {_data.Length - _position} remain");
        var result = _data.Slice(_position, n);
        _position += n;
        return result;
    }

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || n > _data.Length - _position) throw new InvalidDataException($"truncated payload: {n} bytes wanted at offset {_position} of {_data.Length}");
        var span = _data.Span.Slice(_position, n);
        _position += n;
        return span;
    }
}
