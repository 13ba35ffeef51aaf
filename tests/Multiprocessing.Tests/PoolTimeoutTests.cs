using System.Diagnostics;
using Xunit;

namespace Multiprocessing.Tests;

public sealed class PoolTimeoutTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    private static int Runaway()
    {
        // The workload of this test: a task that never ends on its own.
        Thread.Sleep(Timeout.Infinite);
        return -1;
    }

    [Fact]
    public void A_task_past_its_timeout_is_killed_with_its_worker_and_the_pool_goes_on()
    {
        using var pool = Mp.Pool(2);
        var pidsBefore = pool.GetWorkerStatistics().Select(w => w.Pid).ToHashSet();
        var clock = Stopwatch.StartNew();
        var stuck = pool.ApplyAsync(Runaway, taskTimeout: TimeSpan.FromMilliseconds(300));
        var ex = Assert.Throws<TimeoutException>(() => stuck.Get(Guard));
        Assert.InRange(clock.Elapsed, TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(5));
        Assert.Contains("time limit", ex.Message);
        Assert.Equal(7, pool.Apply(() => 7));
        Assert.True(Wait.Until(() => pool.GetWorkerStatistics().Count(w => w.Pid is { } pid && !pidsBefore.Contains(pid)) == 1, Guard));
    }

    [Fact]
    public void Get_with_a_timeout_only_stops_waiting_while_a_task_timeout_stops_the_work()
    {
        using var pool = Mp.Pool(1);
        using var go = Mp.Event();
        var slow = pool.ApplyAsync(() => go.Wait() ? 1 : 0);
        Assert.Throws<TimeoutException>(() => slow.Get(TimeSpan.FromMilliseconds(50)));
        go.Set();
        Assert.Equal(1, slow.Get(Guard));
    }

    [Fact]
    public void In_a_map_only_the_overdue_item_fails_and_every_other_item_runs_once()
    {
        using var ran = Mp.Array<int>(8);
        using var pool = Mp.Pool(2, options: new PoolOptions { TaskTimeout = TimeSpan.FromMilliseconds(400) });
        var result = pool.MapAsync(
            i =>
            {
                using (ran.GetLock().Acquire()) ran[i]++;
                return i == 3 ? Runaway() : i * 10;
            },
            Enumerable.Range(0, 8),
            chunksize: 1);
        Assert.True(result.Wait(Guard));
        Assert.False(result.Successful);
        Assert.Throws<TimeoutException>(() => result.Get());
        Assert.All(ran.ToArray(), count => Assert.Equal(1, count));

        // The streaming calls fail the same item the same way, in its place.
        var outcomes = new List<object>();
        using var it = pool.IMap(i => i == 2 ? Runaway() : i, Enumerable.Range(0, 5)).GetEnumerator();
        while (true)
        {
            try
            {
                if (!it.MoveNext()) break;
                outcomes.Add(it.Current);
            }
            catch (TimeoutException)
            {
                outcomes.Add("timeout");
                break;
            }
        }

        Assert.Equal(new object[] { 0, 1, "timeout" }, outcomes);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PoolOptions { TaskTimeout = TimeSpan.Zero });
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.ApplyAsync(() => 1, taskTimeout: TimeSpan.FromSeconds(-1)));
        Assert.Equal(5, pool.Apply(() => 5));
    }
}
