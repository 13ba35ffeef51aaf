using System.Buffers;
using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.Loader;
using MessagePack;

namespace Multiprocessing.Serialization;

/// <summary>
/// Writes and reads one value whose type is known only at run time. Primitives and strings go straight onto the
/// wire, closures and delegates through their own codecs, so the common captures never load MessagePack in a
/// fresh child; anything else is embedded as a MessagePack blob made by the formatter <see cref="MpResolver"/>
/// picks for that type.
/// </summary>
internal static class ValueCodec
{
    private const byte Null = 0;
    private const byte Present = 1;

    private delegate void WriteThunk(ref MessagePackWriter writer, object? value);

    private delegate object? ReadThunk(ref MessagePackReader reader);

    private static readonly ConcurrentDictionary<Type, Thunks> ThunkCache = new();

    internal static void Write(WireWriter writer, Type type, object? value, HashSet<(Module, int)>? usedClosureFields = null)
    {
        if (value is null)
        {
            writer.Byte(Null);
            return;
        }

        writer.Byte(Present);
        switch (type.IsEnum ? TypeCode.Object : Type.GetTypeCode(type))
        {
            case TypeCode.Boolean: writer.Bool((bool)value); return;
            case TypeCode.Char: writer.Int16((short)(char)value); return;
            case TypeCode.SByte: writer.Byte((byte)(sbyte)value); return;
            case TypeCode.Byte: writer.Byte((byte)value); return;
            case TypeCode.Int16: writer.Int16((short)value); return;
            case TypeCode.UInt16: writer.Int16((short)(ushort)value); return;
            case TypeCode.Int32: writer.Int32((int)value); return;
            case TypeCode.UInt32: writer.Int32((int)(uint)value); return;
            case TypeCode.Int64: writer.Int64((long)value); return;
            case TypeCode.UInt64: writer.Int64((long)(ulong)value); return;
            case TypeCode.Single: writer.Single((float)value); return;
            case TypeCode.Double: writer.Double((double)value); return;
            case TypeCode.String: writer.String((string)value); return;
        }

        if (SharedMemory.SharedHandles.IsShared(type) && value is SharedMemory.IProcessShared shared)
        {
            SharedMemory.SharedHandles.Write(writer, shared);
        }
        else if (ClosureCodec.IsClosure(type))
        {
            ClosureCodec.Write(writer, type, value, usedClosureFields);
        }
        else if (DelegateCodec.IsDelegate(type))
        {
            DelegateCodec.Write(writer, (Delegate)value);
        }
        else
        {
            WriteBlob(writer, type, value);
        }
    }

    // The MessagePack paths are methods of their own: a method with a MessagePack struct among its locals loads
    // MessagePack.dll when it is first called, and a fresh child that only reads primitives and closures would pay
    // for it.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static void WriteBlob(WireWriter writer, Type type, object value)
    {
        var blob = new ArrayBufferWriter<byte>();
        var mp = new MessagePackWriter(blob);
        GetThunks(type).Write(ref mp, value);
        mp.Flush();
        writer.Bytes(blob.WrittenSpan);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static object? ReadBlob(WireReader reader, Type type)
    {
        var mp = new MessagePackReader(reader.Bytes());
        return GetThunks(type).Read(ref mp);
    }

    internal static object? Read(WireReader reader, Type type)
    {
        if (reader.Byte() == Null) return null;
        switch (type.IsEnum ? TypeCode.Object : Type.GetTypeCode(type))
        {
            case TypeCode.Boolean: return reader.Bool();
            case TypeCode.Char: return (char)reader.Int16();
            case TypeCode.SByte: return (sbyte)reader.Byte();
            case TypeCode.Byte: return reader.Byte();
            case TypeCode.Int16: return reader.Int16();
            case TypeCode.UInt16: return (ushort)reader.Int16();
            case TypeCode.Int32: return reader.Int32();
            case TypeCode.UInt32: return (uint)reader.Int32();
            case TypeCode.Int64: return reader.Int64();
            case TypeCode.UInt64: return (ulong)reader.Int64();
            case TypeCode.Single: return reader.Single();
            case TypeCode.Double: return reader.Double();
            case TypeCode.String: return reader.String();
        }

        if (SharedMemory.SharedHandles.IsShared(type)) return SharedMemory.SharedHandles.Read(reader, type);
        if (ClosureCodec.IsClosure(type)) return ClosureCodec.Read(reader, type);
        if (DelegateCodec.IsDelegate(type)) return DelegateCodec.Read(reader, type);
        return ReadBlob(reader, type);
    }

    private static Thunks GetThunks(Type type) => ThunkCache.GetOrAdd(type, static t =>
    {
        var holder = typeof(Thunk<>).MakeGenericType(t);
        var write = holder.GetMethod(nameof(Thunk<int>.Write), BindingFlags.Static | BindingFlags.NonPublic)!;
        var read = holder.GetMethod(nameof(Thunk<int>.Read), BindingFlags.Static | BindingFlags.NonPublic)!;
        return new Thunks((WriteThunk)write.CreateDelegate(typeof(WriteThunk)), (ReadThunk)read.CreateDelegate(typeof(ReadThunk)));
    });

    private sealed record Thunks(WriteThunk Write, ReadThunk Read);

    private static class Thunk<T>
    {
        internal static void Write(ref MessagePackWriter writer, object? value) =>
            MpResolver.Options.Resolver.GetFormatterWithVerify<T>().Serialize(ref writer, (T)value!, MpResolver.Options);

        internal static object? Read(ref MessagePackReader reader) =>
            MpResolver.Options.Resolver.GetFormatterWithVerify<T>().Deserialize(ref reader, MpResolver.Options);
    }
}

/// <summary>
/// Refers to types structurally: an assembly's simple name, its module's build id and the type's metadata token,
/// with generic arguments and array element types likewise. Parsing type names in a fresh runtime costs about
/// 10 ms (the name parser is not precompiled); resolving a token costs well under one. The build id check turns
/// "the child loaded another build of the assembly" into a clear error instead of a wrong type.
/// </summary>
internal static class TypeNames
{
    private const byte Named = 0;
    private const byte Vector = 1;
    private const byte MultiArray = 2;
    private const byte Generic = 3;

    private static readonly Dictionary<string, Module> Modules = new(StringComparer.Ordinal);

    internal static void Write(WireWriter writer, Type type)
    {
        if (type.HasElementType)
        {
            if (!type.IsArray) throw new NotSupportedException($"{type} is a pointer or by-reference type");
            if (type.IsSZArray)
            {
                writer.Byte(Vector);
            }
            else
            {
                writer.Byte(MultiArray);
                writer.Int32(type.GetArrayRank());
            }

            Write(writer, type.GetElementType()!);
            return;
        }

        if (type.IsGenericType && !type.IsGenericTypeDefinition)
        {
            writer.Byte(Generic);
            Write(writer, type.GetGenericTypeDefinition());
            var args = type.GetGenericArguments();
            writer.Int32(args.Length);
            foreach (var arg in args) Write(writer, arg);
            return;
        }

        if (type.IsGenericParameter) throw new NotSupportedException($"{type} is an open generic parameter");
        var module = type.Module;
        if (module != type.Assembly.ManifestModule) throw new NotSupportedException($"{type} lives in a secondary module of a multi-module assembly");
        writer.Byte(Named);
        writer.String(type.Assembly.GetName().Name);
        writer.Bytes(module.ModuleVersionId.ToByteArray());
        writer.Int32(type.MetadataToken);
    }

    internal static Type Read(WireReader reader)
    {
        switch (reader.Byte())
        {
            case Vector:
                return Read(reader).MakeArrayType();
            case MultiArray:
                int rank = reader.Int32();
                return Read(reader).MakeArrayType(rank);
            case Generic:
                var definition = Read(reader);
                var args = new Type[reader.Int32()];
                for (int i = 0; i < args.Length; i++) args[i] = Read(reader);
                return definition.MakeGenericType(args);
            case Named:
                var assembly = reader.String() ?? throw new InvalidDataException("missing assembly name");
                var mvid = new Guid(reader.Bytes().Span);
                int token = reader.Int32();
                return ModuleOf(assembly, mvid).ResolveType(token);
            default:
                throw new InvalidDataException("unknown type reference kind");
        }
    }

    private static Module ModuleOf(string assemblyName, Guid mvid)
    {
        Module? module;
        lock (Modules)
        {
            if (!Modules.TryGetValue(assemblyName, out module))
            {
                var assembly = assemblyName == "System.Private.CoreLib"
                    ? typeof(object).Assembly
                    : AssemblyLoadContext.Default.LoadFromAssemblyName(new AssemblyName { Name = assemblyName });
                Modules[assemblyName] = module = assembly.ManifestModule;
            }
        }

        if (module.ModuleVersionId != mvid)
            throw new InvalidOperationException($"{assemblyName} in the child ({module.Assembly.Location}) is a different build from the parent's; was it rebuilt while the parent ran?");
        return module;
    }
}
