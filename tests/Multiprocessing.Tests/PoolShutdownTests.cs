using System.Diagnostics;
using Multiprocessing.Platform;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>A pool ends fast and completely: when it is disposed with work running, and when its own parent is
/// SIGKILLed while every worker is inside a task.</summary>
public sealed class PoolShutdownTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    /// <summary>A task that never ends on its own, after saying which worker runs it.</summary>
    private static int Hang(ProcessQueue<int> running)
    {
        running.Put(Environment.ProcessId);
        Thread.Sleep(Timeout.Infinite);
        return -1;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Dispose_with_tasks_running_returns_within_a_second_fails_every_caller_and_leaves_no_worker(bool async)
    {
        using var running = Mp.Queue<int>();
        var pool = Mp.Pool(processes: 2);
        var workers = pool.GetWorkerStatistics().Select(s => s.Pid!.Value).ToList();

        // Both workers inside a task that never ends, and work of every kind waiting behind them.
        var map = pool.MapAsync(x => Hang(running), Enumerable.Range(0, 4), chunksize: 1);
        var apply = pool.ApplyAsync(() => Hang(running));
        var stream = pool.IMap(x => Hang(running), Enumerable.Range(0, 3));
        var consumer = Task.Factory.StartNew(
            () =>
            {
                foreach (var _ in stream)
                {
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        var busy = new HashSet<int> { running.Get(Guard), running.Get(Guard) };
        Assert.Equal(workers.Order(), busy.Order());

        var clock = Stopwatch.StartNew();
        if (async) await pool.DisposeAsync();
        else pool.Dispose();
        var took = clock.Elapsed;

        // Disposed means the workers are gone and reaped: no polling.
        Assert.All(workers, pid => Assert.True(Leaks.IsDead(pid), $"worker {pid} is still running"));
        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));
        Assert.True(took < TimeSpan.FromSeconds(1), $"Dispose took {took.TotalMilliseconds:F0} ms");

        // Every caller hears that the pool was terminated, not a hang or a worker loss.
        var error = Assert.Throws<PoolTerminatedException>(() => map.Get(Guard));
        Assert.Contains("terminated", error.Message);
        Assert.Throws<PoolTerminatedException>(() => apply.Get(Guard));
        await Assert.ThrowsAsync<PoolTerminatedException>(() => consumer.WaitAsync(Guard));
        await Assert.ThrowsAsync<PoolTerminatedException>(() => map.AsTask());
    }

    [Fact]
    public void When_the_pools_parent_is_sigkilled_while_every_worker_runs_a_task_every_worker_exits_within_two_seconds()
    {
        using var running = Mp.Queue<int>();
        using var workers = Mp.Queue<int[]>();
        var parent = Mp.Process(() =>
        {
            var pool = Mp.Pool(processes: 2);
            workers.Put([.. pool.GetWorkerStatistics().Select(s => s.Pid!.Value)]);

            // More tasks than workers: both run one that never ends, the rest wait.
            pool.Map(x => Hang(running), Enumerable.Range(0, 4), chunksize: 1);
        });
        parent.Start();
        var pids = workers.Get(Guard);
        var busy = new HashSet<int> { running.Get(Guard), running.Get(Guard) };
        Assert.Equal(pids.Order(), busy.Order());
        try
        {
            parent.Kill();
            var clock = Stopwatch.StartNew();
            bool gone = Wait.Until(() => pids.All(Leaks.IsDead), TimeSpan.FromSeconds(10));
            var took = clock.Elapsed;
            Assert.True(gone, "workers outlived their SIGKILLed parent by 10 s");
            Assert.True(took < TimeSpan.FromSeconds(2), $"the workers took {took.TotalMilliseconds:F0} ms to exit");
            Assert.True(parent.Join(Guard));
            Assert.Equal(-9, parent.ExitCode);
        }
        finally
        {
            // Orphans are not this process's children, so the fixture would not see them.
            foreach (var pid in pids.Where(pid => !Leaks.IsDead(pid))) OsProcess.Signal(pid, Posix.SIGKILL);
        }
    }
}
