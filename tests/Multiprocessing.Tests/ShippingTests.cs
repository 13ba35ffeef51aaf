using System.Runtime.Serialization;
using Xunit;

namespace Multiprocessing.Tests;

public enum Color
{
    Red,
    Green,
    Blue,
}

public record Point(int X, int Y);

public sealed class Payload
{
    public string Label { get; set; } = string.Empty;

    public List<Point> Points { get; set; } = [];

    public Color Tint { get; set; }
}

public sealed class Greeter
{
    public string Greeting { get; set; } = "hello";

    public int Times { get; set; }

    // Captures `this` and a parameter.
    public ChildProcess WriteTo(string path) => Mp.Process(() => File.WriteAllText(path, string.Concat(Enumerable.Repeat(Greeting, Times))));

    // An instance method group: the target object is `this`.
    public void Run() => Environment.Exit(Greeting.Length + Times);
}

public sealed class HoldsAStream
{
    public Stream Stream { get; set; } = new MemoryStream();
}

public sealed class ShippingTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void Closure_over_locals_of_every_supported_kind_arrives_intact()
    {
        using var scratch = new Scratch();
        var path = scratch.File("out");
        int number = 42;
        long big = long.MaxValue;
        double ratio = 0.25;
        bool flag = true;
        char letter = 'x';
        decimal money = 12.5m;
        string text = "naïve ☃";
        string? nothing = null;
        int[] numbers = [1, 2, 3];
        string[] words = ["a", "b"];
        var list = new List<int> { 4, 5 };
        var map = new Dictionary<string, int> { ["one"] = 1, ["two"] = 2 };
        var tuple = (7, "seven");
        var point = new Point(3, 4);
        var color = Color.Blue;
        var payload = new Payload { Label = "p", Points = [new Point(1, 2)], Tint = Color.Green };
        IReadOnlyList<int> readOnly = new List<int> { 9 };
        object boxed = 17;

        var p = Mp.Process(() => File.WriteAllText(path, string.Join("|",
            number, big, ratio, flag, letter, money, text, nothing ?? "null", string.Join(",", numbers), string.Join(",", words),
            string.Join(",", list), string.Join(",", map.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}")),
            tuple.Item1 + tuple.Item2, point, color, $"{payload.Label}:{payload.Points[0]}:{payload.Tint}", readOnly[0], boxed)));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal(
            $"42|{long.MaxValue}|0.25|True|x|12.5|naïve ☃|null|1,2,3|a,b|4,5|one=1,two=2|7seven|Point {{ X = 3, Y = 4 }}|Blue|p:Point {{ X = 1, Y = 2 }}:Green|9|17",
            scratch.Read("out"));
    }

    [Fact]
    public void Parameters_this_and_instance_method_groups_travel()
    {
        using var scratch = new Scratch();
        var greeter = new Greeter { Greeting = "hi", Times = 3 };
        var p = greeter.WriteTo(scratch.File("this"));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal("hihihi", scratch.Read("this"));

        var q = Mp.Process(greeter.Run);
        q.Start();
        Assert.True(q.Join(Guard));
        Assert.Equal(5, q.ExitCode);
    }

    [Fact]
    public void Nested_closures_and_captured_delegates_travel()
    {
        using var scratch = new Scratch();
        var path = scratch.File("nested");
        int outer = 1;
        Func<int, int> square = x => x * x;
        Action Make(int middle)
        {
            int inner = 3;
            return () => File.WriteAllText(path, $"{outer}{middle}{inner}{square(4)}");
        }

        var p = Mp.Process(Make(2));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal("12316", scratch.Read("nested"));
    }

    [Fact]
    public void Async_targets_run_to_completion()
    {
        using var scratch = new Scratch();
        var path = scratch.File("async");
        var p = Mp.Process(async () =>
        {
            await Task.Yield();
            await File.WriteAllTextAsync(path, "awaited");
        });
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal("awaited", scratch.Read("async"));

        var failing = Mp.Process(async () =>
        {
            await Task.Yield();
            throw new InvalidOperationException("async boom");
        });
        failing.Start();
        Assert.True(failing.Join(Guard));
        Assert.Equal(1, failing.ExitCode);
    }

    [Fact]
    public void Closures_in_generic_methods_travel()
    {
        using var scratch = new Scratch();
        var p = Generic(new Dictionary<int, Point> { [1] = new Point(5, 6) }, scratch.File("generic"));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal("System.Collections.Generic.Dictionary`2[System.Int32,Multiprocessing.Tests.Point]:1", scratch.Read("generic"));
    }

    [Fact]
    public void A_child_can_start_children_of_its_own()
    {
        using var scratch = new Scratch();
        var path = scratch.File("grandchild");
        var p = Mp.Process(() =>
        {
            var parentName = Mp.CurrentProcess.Name;
            var grandchild = Mp.Process(() => File.WriteAllText(path, $"{Mp.CurrentProcess.Name} of {Mp.ParentProcess!.Name}:{parentName}"));
            grandchild.Start();
            grandchild.Join();
            Environment.Exit(grandchild.ExitCode == 0 ? 0 : 5);
        });
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        var expectedChild = p.Name;
        Assert.Equal($"{expectedChild}:1 of {expectedChild}:{expectedChild}", scratch.Read("grandchild"));
    }

    [Fact]
    public void A_capture_that_cannot_travel_fails_at_start_naming_it_and_starts_nothing()
    {
        var stream = new MemoryStream();
        var p = Mp.Process(() => stream.WriteByte(1));
        var error = Assert.Throws<SerializationException>(p.Start);
        Assert.Contains("'stream'", error.Message);
        Assert.Contains("System.IO.MemoryStream", error.Message);
        Assert.Null(p.Pid);
        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));

        using var cts = new CancellationTokenSource();
        var token = cts.Token;
        var error2 = Assert.Throws<SerializationException>(Mp.Process(() => token.ThrowIfCancellationRequested()).Start);
        Assert.Contains("'token'", error2.Message);
        Assert.Contains("System.Threading.CancellationToken", error2.Message);

        var holder = new HoldsAStream();
        var error3 = Assert.Throws<SerializationException>(Mp.Process(() => holder.Stream.Flush()).Start);
        Assert.Contains("'holder'", error3.Message);
        Assert.Contains("Stream", error3.Message);

        var thread = Thread.CurrentThread;
        var error4 = Assert.Throws<SerializationException>(Mp.Process(() => thread.Join()).Start);
        Assert.Contains("'thread'", error4.Message);

        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));

        // A failed Start leaves the library usable.
        var ok = Mp.Process(ChildProcessTests.Empty);
        ok.Start();
        Assert.True(ok.Join(Guard));
        Assert.Equal(0, ok.ExitCode);
    }

    [Fact]
    public void A_delegate_compiled_at_run_time_is_refused_with_a_reason()
    {
        var compiled = System.Linq.Expressions.Expression.Lambda<Action>(System.Linq.Expressions.Expression.Empty()).Compile();
        var error = Assert.Throws<SerializationException>(Mp.Process(compiled).Start);
        Assert.Contains("generated at run time", error.Message);
    }

    [Fact]
    public void Variables_only_a_neighbouring_lambda_uses_stay_behind()
    {
        using var scratch = new Scratch();
        var path = scratch.File("sliced");
        var stream = new MemoryStream();
        int value = 5;

        // Both lambdas share one compiler-generated closure; only `path` and `value` belong to the target.
        Action neighbour = () => stream.WriteByte(1);
        var p = Mp.Process(() => File.WriteAllText(path, value.ToString()));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal("5", scratch.Read("sliced"));
        neighbour();
        Assert.Equal(1, stream.Length);
    }

    private static ChildProcess Generic<T>(T value, string path) =>
        Mp.Process(() => File.WriteAllText(path, $"{value!.GetType()}:{(value as System.Collections.ICollection)?.Count}"));
}
