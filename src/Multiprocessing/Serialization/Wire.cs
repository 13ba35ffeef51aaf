using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Multiprocessing.Serialization;

/// <summary>
/// The library's own compact encoding for what a child must read before it can run anything: its job, the target
/// delegate and the closure's primitive fields. It lives in this (ReadyToRun) assembly on purpose: decoding the
/// same through MessagePack cost a fresh child about 20 ms of loading and JIT. Values that need a real serializer
/// are embedded as MessagePack blobs (<see cref="ValueCodec"/>). Little-endian, fixed-width, length-prefixed.
/// </summary>
internal sealed class WireWriter
{
    private readonly ArrayBufferWriter<byte> _buffer;

    internal WireWriter(int capacity = 256) => _buffer = new ArrayBufferWriter<byte>(capacity);

    internal ReadOnlyMemory<byte> Written => _buffer.WrittenMemory;

    internal void Byte(byte value)
    {
        _buffer.GetSpan(1)[0] = value;
        _buffer.Advance(1);
    }

    internal void Bool(bool value) => Byte((byte)(value ? 1 : 0));

    internal void Int16(short value)
    {
        BinaryPrimitives.WriteInt16LittleEndian(_buffer.GetSpan(2), value);
        _buffer.Advance(2);
    }

    internal void Int32(int value)
    {
        BinaryPrimitives.WriteInt32LittleEndian(_buffer.GetSpan(4), value);
        _buffer.Advance(4);
    }

    internal void Int64(long value)
    {
        BinaryPrimitives.WriteInt64LittleEndian(_buffer.GetSpan(8), value);
        _buffer.Advance(8);
    }

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

        int max = Encoding.UTF8.GetMaxByteCount(value.Length);
        var span = _buffer.GetSpan(4 + max);
        int n = Encoding.UTF8.GetBytes(value, span[4..]);
        BinaryPrimitives.WriteInt32LittleEndian(span, n);
        _buffer.Advance(4 + n);
    }

    internal void Bytes(ReadOnlySpan<byte> value)
    {
        Int32(value.Length);
        value.CopyTo(_buffer.GetSpan(value.Length));
        _buffer.Advance(value.Length);
    }

    /// <summary>Gives a MessagePack writer the rest of the buffer; used for values embedded as MessagePack.</summary>
    internal IBufferWriter<byte> Raw => _buffer;
}

/// <summary>Reads what <see cref="WireWriter"/> wrote.</summary>
internal sealed class WireReader(ReadOnlyMemory<byte> data)
{
    private int _position;

    internal bool AtEnd => _position >= data.Length;

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
        return n < 0 ? null : Encoding.UTF8.GetString(Take(n));
    }

    internal ReadOnlyMemory<byte> Bytes()
    {
        int n = Int32();
        if (n < 0 || n > data.Length - _position) throw new InvalidDataException($"a field claims {n} bytes but {data.Length - _position} remain");
        var result = data.Slice(_position, n);
        _position += n;
        return result;
    }

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || n > data.Length - _position) throw new InvalidDataException($"truncated payload: {n} bytes wanted at offset {_position} of {data.Length}");
        var span = data.Span.Slice(_position, n);
        _position += n;
        return span;
    }
}
