using Xunit;

namespace Multiprocessing.Tests;

public sealed class StartMethodTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void Prespawn_runs_targets_and_keeps_one_warm_spare_that_is_stopped_when_switching_back()
    {
        Assert.Equal(StartMethod.Spawn, Mp.StartMethod);
        Mp.SetStartMethod(StartMethod.Prespawn);
        using var scratch = new Scratch();
        for (int i = 0; i < 3; i++)
        {
            var path = scratch.File($"run{i}");
            int n = i;
            var p = Mp.Process(() => File.WriteAllText(path, $"{n}:{Mp.CurrentProcess.Name}"));
            p.Start();
            Assert.True(p.Join(Guard));
            Assert.Equal(0, p.ExitCode);
            Assert.Equal($"{i}:{p.Name}", scratch.Read($"run{i}"));
        }

        // The spare is a child of ours, but not one of the user's.
        Assert.Empty(Mp.ActiveChildren());
        Assert.Single(Leaks.ChildrenOf(Environment.ProcessId));
        Mp.SetStartMethod(StartMethod.Spawn);
        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));
    }

    [Fact]
    public void Prespawn_applies_environment_changes_made_after_the_spare_booted()
    {
        Mp.SetStartMethod(StartMethod.Prespawn);
        using var scratch = new Scratch();
        var warmup = Mp.Process(ChildProcessTests.Empty);
        warmup.Start();
        Assert.True(warmup.Join(Guard));

        var path = scratch.File("env");
        Environment.SetEnvironmentVariable("MP_SPARE_TEST", "late");
        try
        {
            var p = Mp.Process(() => File.WriteAllText(path, Environment.GetEnvironmentVariable("MP_SPARE_TEST") ?? "missing"));
            p.Start();
            Assert.True(p.Join(Guard));
            Assert.Equal("late", scratch.Read("env"));
        }
        finally
        {
            Environment.SetEnvironmentVariable("MP_SPARE_TEST", null);
        }
    }
}
