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
        var method = part.Method;
        if (method.DeclaringType is null || method.Module.Assembly.IsDynamic)
            throw new NotSupportedException($"the delegate points to {method.Name}, a method generated at run time (an expression tree or DynamicMethod), which a child process cannot find");

        TypeNames.Write(writer, method.DeclaringType);
        writer.Int32(method.MetadataToken);
        var args = method.IsGenericMethod ? method.GetGenericArguments() : [];
        writer.Int32(args.Length);
        foreach (var arg in args) TypeNames.Write(writer, arg);

        writer.Bool(part.Target is not null);
        if (part.Target is null) return;
        var targetType = part.Target.GetType();
        TypeNames.Write(writer, targetType);
        try
        {
            ValueCodec.Write(writer, targetType, part.Target, CaptureAnalysis.UsedClosureFields(method));
        }
        catch (Exception ex) when (!ClosureCodec.IsClosure(targetType))
        {
            // An instance method's target is the object it runs on: "this" in the user's terms.
            throw CaptureException.Wrap("this", targetType, ex);
        }
    }

    private static readonly Dictionary<(Type, int), MethodInfo> Methods = [];

    private static MethodInfo MethodOf(Type declaring, int token)
    {
        lock (Methods)
        {
            if (Methods.TryGetValue((declaring, token), out var cached)) return cached;

            // The declaring type's build was checked when it was read, so the token means the same method here.
            var method = (MethodInfo)(declaring.Module.ResolveMethod(token)
                ?? throw new MissingMethodException($"no method with token 0x{token:x8} on {declaring}"));
            if (declaring.IsGenericType) method = (MethodInfo)MethodBase.GetMethodFromHandle(method.MethodHandle, declaring.TypeHandle)!;
            return Methods[(declaring, token)] = method;
        }
    }

    private static Delegate ReadOne(WireReader reader, Type delegateType)
    {
        var declaring = TypeNames.Read(reader);
        int token = reader.Int32();
        var genericArgs = new Type[reader.Int32()];
        for (int i = 0; i < genericArgs.Length; i++) genericArgs[i] = TypeNames.Read(reader);
        object? target = null;
        if (reader.Bool())
        {
            var targetType = TypeNames.Read(reader);
            target = ValueCodec.Read(reader, targetType);
        }

        var method = MethodOf(declaring, token);
        if (genericArgs.Length > 0) method = method.MakeGenericMethod(genericArgs);
        return Delegate.CreateDelegate(delegateType, target, method);
    }
}
