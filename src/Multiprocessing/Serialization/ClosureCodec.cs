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
    internal static bool IsClosure(Type type) =>
        type.IsClass && type.Name.StartsWith("<>c", StringComparison.Ordinal) && type.IsDefined(typeof(CompilerGeneratedAttribute), false);

    internal static void Write(WireWriter writer, Type type, object value, HashSet<(Module, int)>? used)
    {
        var fields = FieldsOf(type);
        writer.Int32(fields.Length);
        foreach (var field in fields)
        {
            // A variable only a neighbouring lambda uses stays behind as its default.
            var item = used is null || used.Contains((field.Module, field.MetadataToken)) ? field.GetValue(value) : null;
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

    private static readonly Dictionary<Type, FieldInfo[]> Fields = [];

    private static FieldInfo[] FieldsOf(Type type)
    {
        lock (Fields)
        {
            if (Fields.TryGetValue(type, out var cached)) return cached;
            var fields = type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);

            // Declaration order is metadata order on both sides of the same build.
            Array.Sort(fields, static (a, b) => a.MetadataToken.CompareTo(b.MetadataToken));
            return Fields[type] = fields;
        }
    }
}
