using System.Reflection;
using System.Runtime.CompilerServices;

namespace Multiprocessing.Serialization;

/// <summary>
/// A compiler-generated closure (a lambda's display class), copied field by field through reflection: no code
/// generation, so a fresh child pays nothing beyond its fields' own formatters. A field whose value is of another
/// type than declared (an interface, a base class) carries its real type name.
/// </summary>
internal static class ClosureCodec
{
    /// <summary>Lambdas' display classes and the static-lambda singleton class.</summary>
    internal static bool IsClosure(Type type) => LayoutOf(type).IsClosure;

    internal static void Write(WireWriter writer, Type type, object value, HashSet<(Module, int)>? used)
    {
        var (fields, sent) = PlanOf(type, used);
        writer.Int32(fields.Length);
        for (int i = 0; i < fields.Length; i++)
        {
            var field = fields[i];

            // A variable only a neighbouring lambda uses stays behind as its default.
            var item = sent[i] ? field.GetValue(value) : null;
            var runtime = item?.GetType() ?? field.FieldType;
            try
            {
                writer.Bool(runtime != field.FieldType);
                if (runtime != field.FieldType) TypeNames.Write(writer, runtime);
                ValueCodec.Write(writer, runtime, item, used);
            }
            catch (Exception ex)
            {
                throw CaptureException.Wrap(field, runtime, ex);
            }
        }
    }

    internal static object Read(WireReader reader, Type type)
    {
        var fields = FieldsOf(type);
        int count = reader.Int32();
        if (count != fields.Length)
            throw new InvalidDataException($"closure {type} has {fields.Length} fields here but {count} were sent; are parent and child running the same build?");
        var target = RuntimeHelpers.GetUninitializedObject(type);
        foreach (var field in fields)
        {
            var declared = reader.Bool() ? TypeNames.Read(reader) : field.FieldType;
            var item = ValueCodec.Read(reader, declared);
            if (item is not null) field.SetValue(target, item);
        }

        return target;
    }

    // Asked for every value written or read, so cached per type (the attribute lookup alone cost 200 ns), keyed by
    // a reference type (a dictionary keyed by a tuple has no precompiled code), and a plain dictionary under a lock:
    // a fresh child would load System.Collections.Concurrent for a ConcurrentDictionary.
    private static readonly Dictionary<Type, Layout> Layouts = [];

    private static Layout LayoutOf(Type type)
    {
        lock (Layouts)
        {
            if (Layouts.TryGetValue(type, out var known)) return known;
            // No source language can name a type "<>c...", so the name alone marks C#'s closures and lambda caches;
            // asking for [CompilerGenerated] too cost a fresh child half a millisecond of attribute parsing.
            var layout = new Layout(type.IsClass && type.Name.StartsWith("<>c", StringComparison.Ordinal));
            Layouts[type] = layout;
            return layout;
        }
    }

    private static FieldInfo[] FieldsOf(Type type) => LayoutOf(type).Fields(type);

    private static (FieldInfo[] Fields, bool[] Sent) PlanOf(Type type, HashSet<(Module, int)>? used)
    {
        var layout = LayoutOf(type);
        return (layout.Fields(type), layout.Sent(type, used));
    }

    /// <summary>What one type is to this codec.</summary>
    private sealed class Layout(bool isClosure)
    {
        private FieldInfo[]? _fields;

        // Which fields go, per set of used fields (the set is cached per method, so its identity is the key): asking
        // each field its module and token for every task cost more than the copy. A type has one entry per lambda
        // that closes over it, so a list beats a dictionary.
        private (HashSet<(Module, int)>? Used, bool[] Sent)[] _plans = [];

        internal bool IsClosure { get; } = isClosure;

        internal FieldInfo[] Fields(Type type)
        {
            if (_fields is { } known) return known;
            var fields = type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);

            // Declaration order is metadata order on both sides of the same build.
            Array.Sort(fields, static (a, b) => a.MetadataToken.CompareTo(b.MetadataToken));
            return _fields = fields;
        }

        internal bool[] Sent(Type type, HashSet<(Module, int)>? used)
        {
            foreach (var (set, sent) in Volatile.Read(ref _plans))
            {
                if (set == used) return sent;
            }

            var made = Array.ConvertAll(Fields(type), field => used is null || used.Contains((field.Module, field.MetadataToken)));
            lock (this)
            {
                _plans = [.. _plans, (used, made)];
            }

            return made;
        }
    }
}
