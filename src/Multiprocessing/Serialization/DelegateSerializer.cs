using System.Collections.Concurrent;
using System.Reflection;
using System.Runtime.Serialization;
using MessagePack;

namespace Multiprocessing.Serialization;

/// <summary>Turns a delegate with its captures into bytes a child process can rebuild, and back.</summary>
internal static class DelegateSerializer
{
    /// <summary>Serializes <paramref name="target"/>.</summary>
    /// <exception cref="SerializationException">A captured value cannot travel; the message names it.</exception>
    internal static ReadOnlyMemory<byte> Serialize(Delegate target) => Guarded(target, static (writer, target) =>
    {
        TypeNames.Write(writer, target.GetType());
        DelegateCodec.Write(writer, target);
    });

    /// <summary>Rebuilds a delegate serialized by <see cref="Serialize"/>.</summary>
    internal static Delegate Deserialize(ReadOnlyMemory<byte> payload)
    {
        var reader = new WireReader(payload);
        var type = TypeNames.Read(reader);
        return DelegateCodec.Read(reader, type);
    }

    // A program has as many shapes as it has lambdas (times generic instantiations); past this many, something
    // makes new methods at run time, and such delegates go whole, as they would without templates.
    private const int MaxTemplates = 4096;
    private static readonly ConcurrentDictionary<(Type Delegate, MethodInfo Method, Type? Target), DelegateTemplate> Templates = new();
    private static int _templateIds;

    /// <summary>
    /// The shape of <paramref name="target"/> (its type, method and target type), made once per lambda: a worker
    /// learns it once, and each task then carries only the target's state (<see cref="SerializeState"/>). ApplyAsync
    /// in a loop builds a new closure of the same lambda every time; shipping its type names and method with
    /// every task was most of its cost. Null for a delegate that cannot be split (several methods).
    /// </summary>
    /// <exception cref="SerializationException">The method cannot be found by a child process.</exception>
    internal static DelegateTemplate? TemplateOf(Delegate target)
    {
        if (!target.HasSingleTarget) return null;
        var key = (target.GetType(), target.Method, target.Target?.GetType());
        if (Templates.TryGetValue(key, out var known)) return known;
        if (Templates.Count >= MaxTemplates) return null;
        var shape = Guarded(target, static (writer, target) =>
        {
            TypeNames.Write(writer, target.GetType());
            DelegateCodec.WriteShape(writer, target);
        });
        return Templates.GetOrAdd(key, new DelegateTemplate(Interlocked.Increment(ref _templateIds), shape));
    }

    /// <summary>The state of <paramref name="target"/>'s target (empty for a static method), to go with its template.</summary>
    /// <exception cref="SerializationException">A captured value cannot travel; the message names it.</exception>
    internal static ReadOnlyMemory<byte> SerializeState(Delegate target) =>
        target.Target is null ? ReadOnlyMemory<byte>.Empty : Guarded(target, static (writer, target) => DelegateCodec.WriteTarget(writer, target));

    /// <summary>Reads a template's shape in a worker.</summary>
    internal static DelegateShape ReadShape(ReadOnlyMemory<byte> payload)
    {
        var reader = new WireReader(payload);
        var type = TypeNames.Read(reader);
        var (method, targetType) = DelegateCodec.ReadShape(reader);
        return new DelegateShape(type, method, targetType);
    }

    private static ReadOnlyMemory<byte> Guarded(Delegate target, Action<WireWriter, Delegate> write)
    {
        var writer = new WireWriter();
        try
        {
            write(writer, target);
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
}

/// <summary>A delegate shape known to this process by <paramref name="Id"/>, and its bytes.</summary>
internal sealed record DelegateTemplate(int Id, ReadOnlyMemory<byte> Shape);

/// <summary>A delegate without its target's state, rebuilt in a worker; <see cref="Bind"/> adds a task's state.</summary>
internal sealed class DelegateShape(Type delegateType, MethodInfo method, Type? targetType)
{
    // A static method has no state: one delegate serves every task.
    private readonly Delegate? _static = targetType is null ? Delegate.CreateDelegate(delegateType, null, method) : null;

    internal Delegate Bind(ReadOnlyMemory<byte> state) =>
        _static ?? Delegate.CreateDelegate(delegateType, ValueCodec.Read(new WireReader(state), targetType!), method);
}
