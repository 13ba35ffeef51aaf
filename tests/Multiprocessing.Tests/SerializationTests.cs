using Multiprocessing.Serialization;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>The delegate encoding on its own, in memory: what a child rebuilds must behave as the original.</summary>
public sealed class SerializationTests
{
    [Fact]
    public void Closures_round_trip_with_their_captured_values()
    {
        var list = new List<string> { "a", "b" };
        var point = new Point(1, 2);
        int offset = 10;
        Func<int, string> original = x => $"{x + offset}:{string.Join(",", list)}:{point}";
        var copy = (Func<int, string>)DelegateSerializer.Deserialize(DelegateSerializer.Serialize(original));
        Assert.NotSame(original, copy);
        Assert.Equal(original(1), copy(1));
    }

    [Fact]
    public void Static_methods_multicast_delegates_and_generic_closures_round_trip()
    {
        Func<int, int> twice = Twice;
        Assert.Equal(8, ((Func<int, int>)DelegateSerializer.Deserialize(DelegateSerializer.Serialize(twice)))(4));

        var log = new List<int>();
        Action<List<int>> both = l => l.Add(1);
        both += l => l.Add(2);
        ((Action<List<int>>)DelegateSerializer.Deserialize(DelegateSerializer.Serialize(both)))(log);
        Assert.Equal([1, 2], log);

        var generic = Wrap(new[] { 3, 4 });
        Assert.Equal("Int32[]:2", ((Func<string>)DelegateSerializer.Deserialize(DelegateSerializer.Serialize(generic)))());
    }

    [Fact]
    public void A_lambda_has_one_template_and_each_closure_travels_as_its_state_alone()
    {
        var closures = Enumerable.Range(0, 3).Select(i => (Func<string>)(() => $"{i}:{i * i}")).ToArray();
        var template = DelegateSerializer.TemplateOf(closures[0]);
        Assert.NotNull(template);
        Assert.Same(template, DelegateSerializer.TemplateOf(closures[2]));
        Func<string> other = () => "other";
        Assert.NotEqual(template.Id, DelegateSerializer.TemplateOf(other)!.Id);

        // The shape is read once; each closure's state binds it to that closure's values, and only those travel.
        var shape = DelegateSerializer.ReadShape(template.Shape);
        foreach (var closure in closures)
        {
            var state = DelegateSerializer.SerializeState(closure, template);
            Assert.True(state.Length < template.Shape.Length, "the state carries the type names again");
            Assert.Equal(closure(), ((Func<string>)shape.Bind(state))());
        }

        // A static method has no state at all; an instance method's object is its state.
        Func<int, int> twice = Twice;
        Assert.Equal(0, DelegateSerializer.SerializeState(twice, DelegateSerializer.TemplateOf(twice)!).Length);
        Assert.Equal(8, ((Func<int, int>)DelegateSerializer.ReadShape(DelegateSerializer.TemplateOf(twice)!.Shape).Bind(default))(4));
        var point = new Point(3, 4);
        Func<string> method = point.ToString;
        var methodTemplate = DelegateSerializer.TemplateOf(method)!;
        Assert.Equal(point.ToString(), ((Func<string>)DelegateSerializer.ReadShape(methodTemplate.Shape).Bind(DelegateSerializer.SerializeState(method, methodTemplate)))());

        // One method behind two delegate types makes two shapes, each rebuilt as its own type.
        Func<object> asObject = point.ToString;
        var objectTemplate = DelegateSerializer.TemplateOf(asObject)!;
        Assert.NotEqual(methodTemplate.Id, objectTemplate.Id);
        Assert.Same(objectTemplate, DelegateSerializer.TemplateOf((Func<object>)new Point(5, 6).ToString));
        var rebuilt = DelegateSerializer.ReadShape(objectTemplate.Shape).Bind(DelegateSerializer.SerializeState(asObject, objectTemplate));
        Assert.Equal(point.ToString(), Assert.IsType<Func<object>>(rebuilt)());

        // Several methods cannot share one shape; they go whole.
        Func<int, int> both = Twice;
        both += Twice;
        Assert.Null(DelegateSerializer.TemplateOf(both));
    }

    [Theory]
    [InlineData("")]
    [InlineData("/proc/self/fd")]
    [InlineData("héllo ✓ 𝄞")]
    [InlineData(null)]
    public void Wire_strings_round_trip_whether_ascii_or_not(string? text)
    {
        foreach (var value in new[] { text, text is null ? null : text + new string('x', 300) })
        {
            var writer = new WireWriter();
            writer.String(value);
            writer.Int32(7);
            var reader = new WireReader(writer.Written);
            Assert.Equal(value, reader.String());
            Assert.Equal(7, reader.Int32());
        }
    }

    [Theory]
    [InlineData(0, "fd/", 0, "/proc/0/fd/0")]
    [InlineData(1, "fd/", 3, "/proc/1/fd/3")]
    [InlineData(int.MaxValue, "fd/", 1234567890, "/proc/2147483647/fd/1234567890")]
    [InlineData(4321, "stat", -1, "/proc/4321/stat")]
    public void Proc_paths_are_written_digit_by_digit(int pid, string rest, int number, string expected)
    {
        var bytes = Platform.Posix.ProcPath(pid, rest, number);
        Assert.Equal(0, bytes[^1]);
        Assert.Equal(expected, System.Text.Encoding.ASCII.GetString(bytes, 0, bytes.Length - 1));
        var path = Platform.Posix.PathBytes("/tmp/é");
        Assert.Equal("/tmp/é"u8.ToArray().Append((byte)0), path);
    }

    [Fact]
    public void Truncated_payloads_are_rejected_clearly()
    {
        int captured = 3;
        Func<int> f = () => captured;
        var bytes = DelegateSerializer.Serialize(f).ToArray();
        Assert.Throws<InvalidDataException>(() => DelegateSerializer.Deserialize(bytes.AsMemory(0, bytes.Length - 2)));
    }

    private static int Twice(int x) => x * 2;

    private static Func<string> Wrap<T>(T value) => () => $"{value!.GetType().Name}:{(value as Array)?.Length}";
}
