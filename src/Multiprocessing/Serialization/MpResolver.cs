using System.Buffers;
using MessagePack;
using MessagePack.Formatters;
using MessagePack.Resolvers;

namespace Multiprocessing.Serialization;

/// <summary>
/// The resolver for everything that crosses between a parent and the children it started: delegates travel as a
/// method reference plus their target, compiler-generated closures field by field, process-local resources are
/// refused with a clear reason, and everything else is MessagePack-CSharp's contractless serialization.
/// </summary>
/// <remarks>Typeless and private-member serialization is only safe between processes that trust each other; this
/// resolver is never used on a socket a stranger can reach. Its statics are touched only when a value needs a
/// MessagePack formatter: a child whose target captures only primitives never loads the resolvers at all.</remarks>
internal sealed class MpResolver : IFormatterResolver
{
    internal static readonly MpResolver Instance = new();

    // Built directly, not from MessagePackSerializerOptions.Standard: the standard resolvers' statics cost a fresh
    // child tens of milliseconds.
    internal static readonly MessagePackSerializerOptions Options = new(Instance);

    public IMessagePackFormatter<T>? GetFormatter<T>() => Cache<T>.Formatter;

    private static class Cache<T>
    {
        internal static readonly IMessagePackFormatter<T>? Formatter = (IMessagePackFormatter<T>?)Create(typeof(T));

        private static object? Create(Type type)
        {
            if (type == typeof(object)) return TypelessFormatter.Instance;
            if (TravelPolicy.WhyLocal(type) is { } reason) return new DenyFormatter<T>(reason);
            if (DelegateCodec.IsDelegate(type) || ClosureCodec.IsClosure(type) || SharedMemory.SharedHandles.IsShared(type)) return new WireFormatter<T>();
            if (type.IsEnum) return Activator.CreateInstance(typeof(EnumFormatter<>).MakeGenericType(type));

            // Each resolver is touched only when a type needs it, for the same reason as Options above.
            return BuiltinResolver.Instance.GetFormatter<T>()
                ?? AttributeFormatterResolver.Instance.GetFormatter<T>()
                ?? DynamicGenericResolver.Instance.GetFormatter<T>()
                ?? (object?)ContractlessStandardResolverAllowPrivate.Instance.GetFormatter<T>();
        }
    }
}

/// <summary>A closure or delegate met inside another value (a list of delegates, say): the library's own encoding
/// (see <see cref="ValueCodec"/>) carried as a MessagePack binary.</summary>
internal sealed class WireFormatter<T> : IMessagePackFormatter<T>
{
    public void Serialize(ref MessagePackWriter writer, T value, MessagePackSerializerOptions options)
    {
        var wire = new WireWriter();
        ValueCodec.Write(wire, typeof(T), value);
        writer.Write(wire.Written.Span);
    }

    public T Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options)
    {
        var bytes = reader.ReadBytes() ?? throw new MessagePackSerializationException($"no payload for {typeof(T)}");
        return (T)ValueCodec.Read(new WireReader(bytes.ToArray()), typeof(T))!;
    }
}

/// <summary>Enums by their numeric value, without the code generation of MessagePack's enum resolver.</summary>
internal sealed class EnumFormatter<T> : IMessagePackFormatter<T>
    where T : struct, Enum
{
    private static readonly bool Unsigned = Type.GetTypeCode(typeof(T)) == TypeCode.UInt64;

    public void Serialize(ref MessagePackWriter writer, T value, MessagePackSerializerOptions options)
    {
        if (Unsigned) writer.Write(Convert.ToUInt64(value));
        else writer.Write(Convert.ToInt64(value));
    }

    public T Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options) =>
        (T)Enum.ToObject(typeof(T), Unsigned ? reader.ReadUInt64() : reader.ReadInt64());
}

/// <summary>Stands in for a type that must not cross a process boundary, and says why.</summary>
internal sealed class DenyFormatter<T>(string reason) : IMessagePackFormatter<T>
{
    public void Serialize(ref MessagePackWriter writer, T value, MessagePackSerializerOptions options)
    {
        if (value is null)
        {
            writer.WriteNil();
            return;
        }

        throw new NotSupportedException(reason);
    }

    public T Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options)
    {
        if (reader.TryReadNil()) return default!;
        throw new NotSupportedException(reason);
    }
}
