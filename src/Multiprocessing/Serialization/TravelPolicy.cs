using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;

namespace Multiprocessing.Serialization;

/// <summary>
/// Decides which types are process-local resources. Serializing one of these would "succeed" by copying a few
/// public properties and hand the child a dead husk, so they are refused up front with a reason.
/// </summary>
internal static class TravelPolicy
{
    private static readonly (Type Type, string Why)[] Local =
    [
        (typeof(Stream), "a stream wraps an open file or socket of this process"),
        (typeof(SafeHandle), "a handle is only valid in the process that opened it"),
        (typeof(WaitHandle), "a wait handle belongs to this process; use Mp.Event(), Mp.Lock() or Mp.Semaphore()"),
        (typeof(Socket), "a socket belongs to this process"),
        (typeof(System.Diagnostics.Process), "a Process object describes a handle owned by this process"),
        (typeof(Thread), "a thread cannot move to another process"),
        (typeof(Task), "a task runs in this process; await it first and send its result"),
        (typeof(CancellationToken), "a CancellationToken is observed only in this process"),
        (typeof(CancellationTokenSource), "a CancellationTokenSource is observed only in this process"),
        (typeof(Lock), "a Lock only excludes threads of this process; use Mp.Lock()"),
        (typeof(SemaphoreSlim), "SemaphoreSlim only counts in this process; use Mp.Semaphore()"),
        (typeof(ManualResetEventSlim), "ManualResetEventSlim only signals in this process; use Mp.Event()"),
        (typeof(MemberInfo), "reflection objects belong to this process's loaded assemblies"),
        (typeof(Assembly), "an Assembly object belongs to this process"),
        (typeof(MarshalByRefObject), "the object is bound to this process"),
        (typeof(nint), "a native pointer or handle is meaningless in another process"),
        (typeof(nuint), "a native pointer is meaningless in another process"),
    ];

    /// <summary>Why <paramref name="type"/> cannot travel, or null if it may.</summary>
    internal static string? WhyLocal(Type type)
    {
        if (type.IsPointer || type.IsByRef) return "a pointer is meaningless in another process";
        foreach (var (local, why) in Local)
        {
            if (local.IsAssignableFrom(type)) return $"{Describe(type)} is a process-local resource: {why}";
        }

        return null;
    }

    internal static string Describe(Type type) => type.FullName ?? type.Name;
}

/// <summary>Carries which captured variable failed to serialize, built up from the innermost closure outwards.</summary>
internal sealed class CaptureException : Exception
{
    private CaptureException(string path, Type valueType, Exception inner)
        : base(inner.Message, inner)
    {
        Path = path;
        ValueType = valueType;
    }

    internal string Path { get; }

    internal Type ValueType { get; }

    internal static CaptureException Wrap(FieldInfo field, Type valueType, Exception inner) =>
        Wrap(DisplayName(field.Name), valueType, inner);

    internal static CaptureException Wrap(string? name, Type valueType, Exception inner)
    {
        if (inner is CaptureException nested)
        {
            return name is null ? nested : new CaptureException($"{name}.{nested.Path}", nested.ValueType, nested.InnerException!);
        }

        return new CaptureException(name ?? "?", valueType, Innermost(inner));
    }

    // Nested closures chain through fields named CS$<>8__locals1: the user never wrote that name, so it is skipped.
    private static string? DisplayName(string field) =>
        field.StartsWith("CS$<>", StringComparison.Ordinal) ? null
        : field.EndsWith("__this", StringComparison.Ordinal) ? "this"
        : field;

    private static Exception Innermost(Exception ex)
    {
        // MessagePack wraps formatter failures in "Failed to serialize X value"; the cause is what helps.
        while (ex.InnerException is not null && ex is MessagePack.MessagePackSerializationException) ex = ex.InnerException;
        return ex;
    }
}
