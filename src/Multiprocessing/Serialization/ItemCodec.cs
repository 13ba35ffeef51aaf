namespace Multiprocessing.Serialization;

/// <summary>Encodes one pool item or result of a statically known type: common primitives directly, everything else
/// through <see cref="ValueCodec"/>. The delegates are picked once per type, so the per-item cost is a call.</summary>
internal static class ItemCodec<T>
{
    internal static readonly Action<WireWriter, T> Write;
    internal static readonly Func<WireReader, T> Read;

    /// <summary>Plain data (primitives, enums, structs without references): a run of items is copied as bytes.
    /// Parent and worker run the same build, so the layout is the same on both sides.</summary>
    internal static readonly bool Blittable = !System.Runtime.CompilerServices.RuntimeHelpers.IsReferenceOrContainsReferences<T>();

    internal static void WriteMany(WireWriter writer, ReadOnlySpan<T> items)
    {
        if (Blittable)
        {
            writer.Raw(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpan(
                ref System.Runtime.CompilerServices.Unsafe.As<T, byte>(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(items)),
                items.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>()));
            return;
        }

        foreach (var item in items) Write(writer, item);
    }

    internal static void ReadMany(WireReader reader, Span<T> items)
    {
        if (Blittable)
        {
            var bytes = System.Runtime.InteropServices.MemoryMarshal.CreateSpan(
                ref System.Runtime.CompilerServices.Unsafe.As<T, byte>(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(items)),
                items.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
            reader.Raw(bytes.Length).CopyTo(bytes);
            return;
        }

        for (int i = 0; i < items.Length; i++) items[i] = Read(reader);
    }

    static ItemCodec()
    {
        (object write, object read) = typeof(T) switch
        {
            var t when t == typeof(int) => ((object, object))((Action<WireWriter, int>)((w, v) => w.Int32(v)), (Func<WireReader, int>)(r => r.Int32())),
            var t when t == typeof(long) => ((object, object))((Action<WireWriter, long>)((w, v) => w.Int64(v)), (Func<WireReader, long>)(r => r.Int64())),
            var t when t == typeof(double) => ((object, object))((Action<WireWriter, double>)((w, v) => w.Double(v)), (Func<WireReader, double>)(r => r.Double())),
            var t when t == typeof(bool) => ((object, object))((Action<WireWriter, bool>)((w, v) => w.Bool(v)), (Func<WireReader, bool>)(r => r.Bool())),
            var t when t == typeof(string) => ((object, object))((Action<WireWriter, string>)((w, v) => w.String(v)), (Func<WireReader, string>)(r => r.String()!)),
            _ => ((object, object))((Action<WireWriter, T>)((w, v) => ValueCodec.Write(w, typeof(T), v)), (Func<WireReader, T>)(r => (T)ValueCodec.Read(r, typeof(T))!)),
        };
        Write = (Action<WireWriter, T>)write;
        Read = (Func<WireReader, T>)read;
    }
}
