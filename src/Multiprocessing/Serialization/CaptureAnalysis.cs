using System.Reflection;
using System.Reflection.Emit;

namespace Multiprocessing.Serialization;

/// <summary>
/// Finds which captured variables a target really reads. C# puts every local that any lambda of a scope captures
/// into one shared closure object, so a target routinely "captures" variables only its neighbours use (the
/// ChildProcess it belongs to, a CancellationTokenSource, a stream). Shipping those would fail or waste time, so
/// the target's IL is scanned, together with the closure methods it calls, for the closure fields it loads; the
/// others travel as their default value. Runs in the parent only.
/// </summary>
internal static class CaptureAnalysis
{
    private static readonly OpCode[] OneByte = new OpCode[0x100];
    private static readonly OpCode[] TwoByte = new OpCode[0x100];

    static CaptureAnalysis()
    {
        foreach (var field in typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static))
        {
            var code = (OpCode)field.GetValue(null)!;
            ushort value = unchecked((ushort)code.Value);
            if (code.Size == 1) OneByte[value] = code;
            else TwoByte[value & 0xff] = code;
        }
    }

    /// <summary>The closure fields (by module and metadata token) that <paramref name="method"/> may read, or null
    /// when its IL cannot be read (then every field travels).</summary>
    internal static HashSet<(Module, int)>? UsedClosureFields(MethodInfo method) => Cache.GetOrAdd(method, static m =>
    {
        var used = new HashSet<(Module, int)>();
        return Walk(m, used, []) ? used : null;
    });

    // Per method, not per delegate: ApplyAsync in a loop sends a new closure of the same lambda every time.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<MethodInfo, HashSet<(Module, int)>?> Cache = new();

    private static bool Walk(MethodBase method, HashSet<(Module, int)> used, HashSet<MethodBase> seen)
    {
        if (!seen.Add(method)) return true;
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (Exception ex) when (ex is InvalidOperationException or NotSupportedException)
        {
            return false;
        }

        if (il is null) return false;

        // An async or iterator lambda only builds its state machine; the body, and its reads, are in MoveNext.
        if (method.GetCustomAttribute<System.Runtime.CompilerServices.StateMachineAttribute>()?.StateMachineType is { } machine)
        {
            if (machine.IsGenericTypeDefinition && method.DeclaringType is { IsGenericType: true } owner)
                machine = machine.MakeGenericType(owner.GetGenericArguments());
            var moveNext = machine.GetMethod("MoveNext", BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);
            if (moveNext is null || !Walk(moveNext, used, seen)) return false;
        }

        var typeArgs = method.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
        var methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        int i = 0;
        while (i < il.Length)
        {
            var code = il[i] == 0xFE ? TwoByte[il[++i]] : OneByte[il[i]];
            i++;
            int operand = i;
            i += code.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + (4 * BitConverter.ToInt32(il, operand)),
                _ => 4,
            };

            if (code.OperandType == OperandType.InlineField)
            {
                var field = method.Module.ResolveField(BitConverter.ToInt32(il, operand), typeArgs, methodArgs);
                if (field is not null && ClosureCodec.IsClosure(field.DeclaringType!)) used.Add((field.Module, field.MetadataToken));
            }
            else if (code.OperandType == OperandType.InlineMethod)
            {
                var callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, operand), typeArgs, methodArgs);

                // A lambda that calls a local function or another lambda of the same closure reads through it.
                if (callee?.DeclaringType is { } owner && ClosureCodec.IsClosure(owner) && !Walk(callee, used, seen)) return false;
            }
        }

        return true;
    }
}
