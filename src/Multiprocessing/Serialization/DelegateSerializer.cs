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
    // Keyed by method alone, with the few (delegate type, target type) pairs of one method side by side: a
    // dictionary keyed by a tuple of types has no precompiled code, and its unoptimised copy was a per-task cost
    // until the JIT got round to it.
    private static readonly ConcurrentDictionary<MethodInfo, DelegateTemplate[]> Templates = new();
    private static int _templateCount;
    private static int _templateIds;

    [ThreadStatic]
    private static WireWriter? _scratch;

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
        var method = target.Method;
        var delegateType = target.GetType();
        var targetType = target.Target?.GetType();
        if (Templates.TryGetValue(method, out var known))
        {
            foreach (var template in known)
            {
                if (template.DelegateType == delegateType && template.TargetType == targetType) return template;
            }
        }

        return Volatile.Read(ref _templateCount) >= MaxTemplates ? null : AddTemplate(target, method, delegateType, targetType);
    }

    private static DelegateTemplate AddTemplate(Delegate target, MethodInfo method, Type delegateType, Type? targetType)
    {
        var shape = Guarded(target, static (writer, target) =>
        {
            TypeNames.Write(writer, target.GetType());
            DelegateCodec.WriteShape(writer, target);
        });
        var used = targetType is null ? null : CaptureAnalysis.UsedClosureFields(method);
        var made = new DelegateTemplate(Interlocked.Increment(ref _templateIds), shape, delegateType, targetType, used);
        var all = Templates.AddOrUpdate(method, static (_, made) => [made], static (_, known, made) =>
            known.FirstOrDefault(t => t.DelegateType == made.DelegateType && t.TargetType == made.TargetType) is null ? [.. known, made] : known, made);
        var chosen = all.First(t => t.DelegateType == delegateType && t.TargetType == targetType);
        if (chosen == made) Interlocked.Increment(ref _templateCount);
        return chosen;
    }

    /// <summary>The state of <paramref name="target"/>'s target (empty for a static method), to go with its
    /// <paramref name="template"/>, which already knows what of the target its method reads.</summary>
    /// <exception cref="SerializationException">A captured value cannot travel; the message names it.</exception>
    internal static ReadOnlyMemory<byte> SerializeState(Delegate target, DelegateTemplate template)
    {
        if (template.TargetType is null) return ReadOnlyMemory<byte>.Empty;

        // Written into this thread's scratch buffer and copied out at its exact size: the state of a typical closure
        // is a dozen bytes, and a buffer per task would be most of what a task allocates.
        // Taken out while in use: a captured value's formatter is user code, and may serialize another closure.
        var writer = _scratch ?? new WireWriter();
        _scratch = null;
        writer.Reset();
        try
        {
            DelegateCodec.WriteTarget(writer, template.TargetType, target.Target!, template.Used);
            return writer.WrittenSpan.ToArray();
        }
        catch (Exception ex) when (Explains(ex))
        {
            throw Explain(ex);
        }
        finally
        {
            _scratch = writer;
        }
    }

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
        catch (Exception ex) when (Explains(ex))
        {
            throw Explain(ex);
        }
    }

    private static bool Explains(Exception ex) =>
        ex is CaptureException or NotSupportedException or MessagePackSerializationException or InvalidOperationException;

    /// <summary>The exception a caller sees for <paramref name="ex"/> (one that <see cref="Explains"/>), thrown while
    /// writing a delegate.</summary>
    private static SerializationException Explain(Exception ex) => ex switch
    {
        CaptureException capture => new SerializationException(
            $"The target cannot be sent to a child process: it captures '{capture.Path}' of type {TravelPolicy.Describe(capture.ValueType)}, which cannot travel: {capture.Message}",
            capture.InnerException),
        _ => new SerializationException($"The target cannot be sent to a child process: {ex.Message}", ex),
    };
}

/// <summary>A delegate shape known to this process by <paramref name="Id"/>, and its bytes; its delegate type, its
/// target's type (null for a static method) and the closure fields its method reads (null for all).</summary>
internal sealed record DelegateTemplate(int Id, ReadOnlyMemory<byte> Shape, Type DelegateType, Type? TargetType, HashSet<(Module, int)>? Used);

/// <summary>A delegate without its target's state, rebuilt in a worker; <see cref="Bind"/> adds a task's state.</summary>
internal sealed class DelegateShape(Type delegateType, MethodInfo method, Type? targetType)
{
    // A static method has no state: one delegate serves every task.
    private readonly Delegate? _static = targetType is null ? Delegate.CreateDelegate(delegateType, null, method) : null;

    internal Delegate Bind(ReadOnlyMemory<byte> state) =>
        _static ?? Delegate.CreateDelegate(delegateType, ValueCodec.Read(new WireReader(state), targetType!), method);
}
