using System.Reflection;

namespace Multiprocessing.Serialization;

/// <summary>
/// A delegate: for each method of its invocation list, the method by declaring type and metadata token (checked
/// against the module's build id, so a rebuilt assembly cannot run the wrong method) and its target object.
/// </summary>
internal static class DelegateCodec
{
    internal static bool IsDelegate(Type type) => type.IsSubclassOf(typeof(MulticastDelegate));

    internal static void Write(WireWriter writer, Delegate value)
    {
        var parts = value.GetInvocationList();
        writer.Int32(parts.Length);
        foreach (var part in parts) WriteOne(writer, part);
    }

    internal static Delegate Read(WireReader reader, Type delegateType)
    {
        int count = reader.Int32();
        Delegate? result = null;
        for (int i = 0; i < count; i++) result = Delegate.Combine(result, ReadOne(reader, delegateType));
        return result ?? throw new InvalidDataException("a delegate with no methods");
    }

    private static void WriteOne(WireWriter writer, Delegate part)
    {
        WriteShape(writer, part);
        if (part.Target is not null) WriteTarget(writer, part);
    }

    /// <summary>Writes what a delegate is apart from its target's state: its method and its target's type.</summary>
    internal static void WriteShape(WireWriter writer, Delegate part)
    {
        var method = part.Method;
        if (method.DeclaringType is null || method.Module.Assembly.IsDynamic)
            throw new NotSupportedException($"the delegate points to {method.Name}, a method generated at run time (an expression tree or DynamicMethod), which a child process cannot find");

        TypeNames.Write(writer, method.DeclaringType);
        writer.Int32(method.MetadataToken);
        var args = method.IsGenericMethod ? method.GetGenericArguments() : [];
        writer.Int32(args.Length);
        foreach (var arg in args) TypeNames.Write(writer, arg);

        writer.Bool(part.Target is not null);
        if (part.Target is not null) TypeNames.Write(writer, part.Target.GetType());
    }

    /// <summary>Writes the state of a delegate's target (the variables a closure's method reads).</summary>
    internal static void WriteTarget(WireWriter writer, Delegate part) =>
        WriteTarget(writer, part.Target!.GetType(), part.Target, CaptureAnalysis.UsedClosureFields(part.Method));

    /// <summary>Writes <paramref name="target"/>, of <paramref name="targetType"/>, sending only the closure fields
    /// in <paramref name="used"/> (all for null).</summary>
    internal static void WriteTarget(WireWriter writer, Type targetType, object target, HashSet<(Module, int)>? used)
    {
        try
        {
            ValueCodec.Write(writer, targetType, target, used);
        }
        catch (Exception ex) when (!ClosureCodec.IsClosure(targetType))
        {
            // An instance method's target is the object it runs on: "this" in the user's terms.
            throw CaptureException.Wrap("this", targetType, ex);
        }
    }

    // Not cached: a pool worker resolves a lambda once per template, and a cache keyed by (type, token) cost every
    // fresh child the JIT of a dictionary over tuples.
    private static MethodInfo MethodOf(Type declaring, int token)
    {
        // The declaring type's build was checked when it was read, so the token means the same method here.
        var method = (MethodInfo)(declaring.Module.ResolveMethod(token)
            ?? throw new MissingMethodException($"no method with token 0x{token:x8} on {declaring}"));
        if (declaring.IsGenericType) method = (MethodInfo)MethodBase.GetMethodFromHandle(method.MethodHandle, declaring.TypeHandle)!;
        return method;
    }

    private static Delegate ReadOne(WireReader reader, Type delegateType)
    {
        var (method, targetType) = ReadShape(reader);
        object? target = targetType is null ? null : ValueCodec.Read(reader, targetType);
        return Delegate.CreateDelegate(delegateType, target, method);
    }

    /// <summary>Reads what <see cref="WriteShape"/> wrote: the method, and the target's type (null for none).</summary>
    internal static (MethodInfo Method, Type? TargetType) ReadShape(WireReader reader)
    {
        var declaring = TypeNames.Read(reader);
        int token = reader.Int32();
        var genericArgs = new Type[reader.Int32()];
        for (int i = 0; i < genericArgs.Length; i++) genericArgs[i] = TypeNames.Read(reader);
        var targetType = reader.Bool() ? TypeNames.Read(reader) : null;
        var method = MethodOf(declaring, token);
        if (genericArgs.Length > 0) method = method.MakeGenericMethod(genericArgs);
        return (method, targetType);
    }
}
