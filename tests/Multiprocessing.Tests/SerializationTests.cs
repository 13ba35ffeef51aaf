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
