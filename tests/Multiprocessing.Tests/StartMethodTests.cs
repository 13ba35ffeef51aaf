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
    public void A_pool_made_under_Prespawn_leaves_as_many_spares_as_it_has_workers_and_the_next_pool_starts_from_them()
    {
        Mp.SetStartMethod(StartMethod.Prespawn);
        int[] spares;
        using (var first = Mp.Pool(3))
        {
            Assert.Equal([1, 4, 9], first.Map(x => x * x, [1, 2, 3]));
            var workers = first.GetWorkerStatistics().Select(w => w.Pid!.Value).ToHashSet();

            // The spares boot once the pool has had nothing to do for a moment, so that they do not take the CPU
            // from its work.
            int[] Spares() => Leaks.ChildrenOf(Environment.ProcessId).Where(pid => !workers.Contains(pid)).Order().ToArray();
            Assert.True(Wait.Until(() => Spares().Length == 3, Guard), $"{Spares().Length} spares, not 3");
            spares = Spares();
            first.Close();
            first.Join();
        }

        using (var second = Mp.Pool(3))
        {
            Assert.Equal([1, 4, 9], second.Map(x => x * x, [1, 2, 3]));
            Assert.Equal(spares, second.GetWorkerStatistics().Select(w => w.Pid!.Value).Order().ToArray());
            second.Close();
            second.Join();
        }

        // Its own three spares wait for the next pool; switching back to Spawn stops them, and they go back to one.
        Assert.True(Wait.Until(() => Leaks.ChildrenOf(Environment.ProcessId).Count == 3, Guard));
        Mp.SetStartMethod(StartMethod.Spawn);
        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));
        Mp.SetStartMethod(StartMethod.Prespawn);
        var p = Mp.Process(ChildProcessTests.Empty);
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Single(Leaks.ChildrenOf(Environment.ProcessId));
        Mp.SetStartMethod(StartMethod.Spawn);
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
