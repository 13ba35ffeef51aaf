using System.Buffers;
using MessagePack;
using MessagePack.Formatters;
using MessagePack.Resolvers;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>
/// How a manager's clients encode the values they store. A local manager's clients are the owner and the processes
/// it started, so they use the library's trusted encoding (closures, typeless objects, library handles); a manager
/// that serves on an address a stranger can reach uses plain MessagePack with no type names in the payload.
/// </summary>
/// <remarks>While a value is encoded for storage, a proxy inside it is written as its id and recorded, so the
/// slot keeps that object alive; while a reply is decoded, a proxy id becomes a live proxy of the same manager.</remarks>
internal abstract class ValueCodecs
{
    internal static readonly ValueCodecs Trusted = new TrustedCodecs();
    internal static readonly ValueCodecs Untrusted = new UntrustedCodecs();

    [ThreadStatic]
    private static ManagerClient? t_storeClient;
    [ThreadStatic]
    private static List<long>? t_storeRefs;
    [ThreadStatic]
    private static ManagerClient? t_loadClient;

    /// <summary>The client whose container is being written to, while a value is encoded for it.</summary>
    internal static ManagerClient? StoreClient => t_storeClient;

    /// <summary>The client whose reply is being read, while a value is decoded.</summary>
    internal static ManagerClient? LoadClient => t_loadClient;

    internal static void NoteStoredRef(long id) => (t_storeRefs ??= []).Add(id);

    internal Slot Encode<T>(T value, ManagerClient? client)
    {
        using var scope = new StoreScope(client);
        return scope.Finish(EncodeCore(value));
    }

    /// <summary>A dictionary key: its bytes are its identity, so it cannot hold a proxy.</summary>
    internal byte[] Key<T>(T key, ManagerClient client)
    {
        var slot = Encode(key, client);
        if (slot.Refs is not null) throw new NotSupportedException("a managed object cannot be a key of a managed dictionary");
        return slot.Data;
    }

    internal T Decode<T>(ReadOnlyMemory<byte> data, ManagerClient? client)
    {
        using var scope = new LoadScope(client);
        return DecodeCore<T>(data);
    }

    internal Slot Encode(Type type, object? value, ManagerClient? client)
    {
        using var scope = new StoreScope(client);
        return scope.Finish(EncodeCore(type, value));
    }

    internal object? Decode(Type type, ReadOnlyMemory<byte> data, ManagerClient? client)
    {
        using var scope = new LoadScope(client);
        return DecodeCore(type, data);
    }

    /// <summary>While a value is encoded for a container of <c>client</c>: proxies inside it are recorded.
    /// Nests (a value of one manager encoded while another's is).</summary>
    private readonly ref struct StoreScope
    {
        private readonly ManagerClient? _previousClient;
        private readonly List<long>? _previousRefs;

        internal StoreScope(ManagerClient? client)
        {
            (_previousClient, _previousRefs) = (t_storeClient, t_storeRefs);
            (t_storeClient, t_storeRefs) = (client, null);
        }

        internal Slot Finish(byte[] data) => new(data, t_storeRefs is { Count: > 0 } refs ? [.. refs] : null);

        public void Dispose() => (t_storeClient, t_storeRefs) = (_previousClient, _previousRefs);
    }

    /// <summary>While a reply of <c>client</c> is decoded: proxy ids become its proxies.</summary>
    private readonly ref struct LoadScope
    {
        private readonly ManagerClient? _previous;

        internal LoadScope(ManagerClient? client)
        {
            _previous = t_loadClient;
            t_loadClient = client;
        }

        public void Dispose() => t_loadClient = _previous;
    }

    protected abstract byte[] EncodeCore<T>(T value);

    protected abstract T DecodeCore<T>(ReadOnlyMemory<byte> data);

    protected abstract byte[] EncodeCore(Type type, object? value);

    protected abstract object? DecodeCore(Type type, ReadOnlyMemory<byte> data);

    private sealed class TrustedCodecs : ValueCodecs
    {
        protected override byte[] EncodeCore<T>(T value)
        {
            var writer = Writer();
            ItemCodec<T>.Write(writer, value);
            return writer.WrittenSpan.ToArray();
        }

        protected override T DecodeCore<T>(ReadOnlyMemory<byte> data) => ItemCodec<T>.Read(new WireReader(data));

        protected override byte[] EncodeCore(Type type, object? value)
        {
            var writer = Writer();
            ValueCodec.Write(writer, type, value);
            return writer.WrittenSpan.ToArray();
        }

        protected override object? DecodeCore(Type type, ReadOnlyMemory<byte> data) => ValueCodec.Read(new WireReader(data), type);

        // Not a cached writer: a value holding a proxy of another manager encodes that proxy's handle while
        // this writer is in use.
        private static WireWriter Writer() => new(64);
    }

    private sealed class UntrustedCodecs : ValueCodecs
    {
        private static readonly MessagePackSerializerOptions Options = MessagePackSerializerOptions.Standard
            .WithResolver(CompositeResolver.Create(ProxyResolver.Instance, StandardResolver.Instance))
            .WithSecurity(MessagePackSecurity.UntrustedData);

        protected override byte[] EncodeCore<T>(T value) => MessagePackSerializer.Serialize(value, Options);

        protected override T DecodeCore<T>(ReadOnlyMemory<byte> data) => Wrap(() => MessagePackSerializer.Deserialize<T>(data, Options), typeof(T));

        protected override byte[] EncodeCore(Type type, object? value) => MessagePackSerializer.Serialize(type, value, Options);

        protected override object? DecodeCore(Type type, ReadOnlyMemory<byte> data) => Wrap(() => MessagePackSerializer.Deserialize(type, data, Options), type);

        private static TResult Wrap<TResult>(Func<TResult> read, Type type)
        {
            try
            {
                return read();
            }
            catch (MessagePackSerializationException ex)
            {
                throw new InvalidDataException($"a managed value could not be read as {type}: {ex.Message}", ex);
            }
        }
    }

    /// <summary>Proxies inside plain MessagePack values: only as an id of the same manager, never a type name.</summary>
    private sealed class ProxyResolver : IFormatterResolver
    {
        internal static readonly ProxyResolver Instance = new();

        public IMessagePackFormatter<T>? GetFormatter<T>() =>
            typeof(IManagedProxy).IsAssignableFrom(typeof(T)) && !typeof(T).IsAbstract ? (IMessagePackFormatter<T>)(object)new ProxyFormatter<T>() : null;
    }

    private sealed class ProxyFormatter<T> : IMessagePackFormatter<T>
    {
        public void Serialize(ref MessagePackWriter writer, T value, MessagePackSerializerOptions options)
        {
            if (value is not IManagedProxy { Ref: var proxy })
            {
                writer.WriteNil();
                return;
            }

            if (StoreClient is null || !ReferenceEquals(StoreClient, proxy.Client)) throw new NotSupportedException($"a {typeof(T).Name} can be stored only in a container of its own manager");
            NoteStoredRef(proxy.Id);
            writer.Write(proxy.Id);
        }

        public T Deserialize(ref MessagePackReader reader, MessagePackSerializerOptions options)
        {
            if (reader.TryReadNil()) return default!;
            long id = reader.ReadInt64();
            var client = LoadClient ?? throw new InvalidDataException($"a {typeof(T).Name} id arrived outside a manager reply");
            client.Adopt(id);
            return (T)ProxyRef.CreateProxy(typeof(T), client, id);
        }
    }
}
