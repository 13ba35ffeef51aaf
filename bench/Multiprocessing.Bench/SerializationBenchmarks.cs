using BenchmarkDotNet.Attributes;
using Multiprocessing.Serialization;

namespace Multiprocessing.Bench;

/// <summary>What Start pays in the parent to encode a target, and what a child pays to rebuild it.</summary>
[MemoryDiagnoser]
public class SerializationBenchmarks
{
    private Action _closure = null!;
    private ReadOnlyMemory<byte> _encoded;

    [GlobalSetup]
    public void Setup()
    {
        int number = 42;
        string text = "hello";
        int[] values = [1, 2, 3];
        _closure = () => GC.KeepAlive($"{number}{text}{values.Length}");
        _encoded = DelegateSerializer.Serialize(_closure);
    }

    [Benchmark]
    public ReadOnlyMemory<byte> SerializeClosure() => DelegateSerializer.Serialize(_closure);

    [Benchmark]
    public Delegate DeserializeClosure() => DelegateSerializer.Deserialize(_encoded);
}
