using System.Runtime.Serialization;
using MessagePack;

namespace Multiprocessing.Serialization;

/// <summary>Turns a delegate with its captures into bytes a child process can rebuild, and back.</summary>
internal static class DelegateSerializer
{
    /// <summary>Serializes <paramref name="target"/>.</summary>
    /// <exception cref="SerializationException">A captured value cannot travel; the message names it.</exception>
    internal static ReadOnlyMemory<byte> Serialize(Delegate target)
    {
        var writer = new WireWriter();
        try
        {
            TypeNames.Write(writer, target.GetType());
            DelegateCodec.Write(writer, target);
            return writer.Written;
        }
        catch (CaptureException ex)
        {
            throw new SerializationException(
                $"The target cannot be sent to a child process: it captures '{ex.Path}' of type {TravelPolicy.Describe(ex.ValueType)}, which cannot travel: {ex.Message}",
                ex.InnerException);
        }
        catch (Exception ex) when (ex is NotSupportedException or MessagePackSerializationException or InvalidOperationException)
        {
            throw new SerializationException($"The target cannot be sent to a child process: {ex.Message}", ex);
        }
    }

    /// <summary>Rebuilds a delegate serialized by <see cref="Serialize"/>.</summary>
    internal static Delegate Deserialize(ReadOnlyMemory<byte> payload)
    {
        var reader = new WireReader(payload);
        var type = TypeNames.Read(reader);
        return DelegateCodec.Read(reader, type);
    }
}
