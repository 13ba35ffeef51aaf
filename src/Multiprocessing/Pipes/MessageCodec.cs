using System.Buffers;
using MessagePack;
using MessagePack.Resolvers;
using Multiprocessing.Serialization;

namespace Multiprocessing.Pipes;

/// <summary>How a connection turns items into message bytes and back.</summary>
internal abstract class MessageCodec<T>
{
    /// <summary>Between a parent and the processes it started: closures, typeless objects and library handles.</summary>
    internal static readonly MessageCodec<T> Trusted = new TrustedCodec();

    /// <summary>On a socket a stranger can reach: plain MessagePack with no type names in the payload, so no message
    /// can choose a type to instantiate, and with MessagePack's limits for untrusted data.</summary>
    internal static readonly MessageCodec<T> Untrusted = new UntrustedCodec();

    internal abstract bool IsTrusted { get; }

    internal abstract void Write(WireWriter writer, T item);

    internal abstract T Read(ReadOnlyMemory<byte> message);

    private sealed class TrustedCodec : MessageCodec<T>
    {
        internal override bool IsTrusted => true;

        internal override void Write(WireWriter writer, T item) => ItemCodec<T>.Write(writer, item);

        internal override T Read(ReadOnlyMemory<byte> message)
        {
            var reader = new WireReader(message);
            return ItemCodec<T>.Read(reader);
        }
    }

    private sealed class UntrustedCodec : MessageCodec<T>
    {
        private static readonly MessagePackSerializerOptions Options =
            MessagePackSerializerOptions.Standard.WithResolver(StandardResolver.Instance).WithSecurity(MessagePackSecurity.UntrustedData);

        internal override bool IsTrusted => false;

        internal override void Write(WireWriter writer, T item)
        {
            var buffer = new ArrayBufferWriter<byte>();
            MessagePackSerializer.Serialize(buffer, item, Options);
            writer.Raw(buffer.WrittenSpan);
        }

        internal override T Read(ReadOnlyMemory<byte> message)
        {
            try
            {
                return MessagePackSerializer.Deserialize<T>(message, Options);
            }
            catch (MessagePackSerializationException ex)
            {
                throw new InvalidDataException($"a message could not be read as {typeof(T)}: {ex.Message}", ex);
            }
        }
    }
}
