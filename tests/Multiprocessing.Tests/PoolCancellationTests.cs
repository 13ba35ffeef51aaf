using System.Diagnostics;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>
/// A token given to a call cancels it: the result fails at once, tasks that have not started never run (neither the
/// ones queued in the pool nor the ones already handed to a worker), running tasks see their token, and one that
/// ignores it is killed with its worker after the grace period. The pool goes on.
/// </summary>
public sealed class PoolCancellationTests : ProcessTest
{
    private const int Items = 40;
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    /// <summary>Counts its run, then waits for its token (a cooperative task), and says it saw it.</summary>
    private static int UntilCancelled(int item, CancellationToken token, SharedArray<int> runs, SharedArray<int> stopped)
    {
        Interlocked.Increment(ref runs.AsSpan()[item]);
        if (!token.WaitHandle.WaitOne(Guard)) return -1;
        Interlocked.Increment(ref stopped.AsSpan()[item]);
        return item;
    }

    private static List<int> Pids(ProcessPool pool) => [.. pool.GetWorkerStatistics().Select(s => s.Pid!.Value)];

    /// <summary>Cancels <paramref name="cts"/> once <paramref name="started"/> tasks are running.</summary>
    private static Task CancelWhenRunning(CancellationTokenSource cts, SharedArray<int> runs, int started) => Task.Factory.StartNew(
        () =>
        {
            Assert.True(Wait.Until(() => runs.ToArray().Sum() >= started, Guard), "the tasks did not start");
            cts.Cancel();
        },
        CancellationToken.None,
        TaskCreationOptions.LongRunning,
        TaskScheduler.Default);

    [Fact]
    public async Task Cancelling_a_map_fails_it_at_once_runs_no_waiting_task_and_stops_the_running_ones_cooperatively()
    {
        using var runs = Mp.RawArray<int>(Items);
        using var stopped = Mp.RawArray<int>(Items);
        using var pool = Mp.Pool(processes: 2, options: new PoolOptions { CancellationGracePeriod = Guard });
        var workers = Pids(pool);
        using var cts = new CancellationTokenSource();
        var errors = new List<Exception>();

        // Each worker runs one task and holds a few more (its window); the rest wait in the pool.
        var result = pool.MapAsync((x, token) => UntilCancelled(x, token, runs, stopped), Enumerable.Range(0, Items), chunksize: 1,
            errorCallback: errors.Add, cancellationToken: cts.Token);
        Assert.True(Wait.Until(() => runs.ToArray().Sum() == 2, Guard), "two tasks did not start");
        cts.Cancel();

        // The result is over before Cancel returns... except for the error callback, which runs first on the
        // result thread.
        Assert.True(result.Wait(Guard));
        var error = Assert.Throws<OperationCanceledException>(() => result.Get());
        Assert.Equal(cts.Token, error.CancellationToken);
        Assert.Same(error, Assert.Single(errors));
        await Assert.ThrowsAsync<TaskCanceledException>(() => result.AsTask());
        Assert.False(result.Successful);

        // The two running tasks saw their token and returned; their workers live on.
        Assert.True(Wait.Until(() => stopped.ToArray().Sum() >= 2, Guard), "the running tasks did not see their token");
        Assert.Equal(Enumerable.Range(0, 10), pool.Map(x => x, Enumerable.Range(0, 10), chunksize: 1));
        Assert.Equal(workers, Pids(pool));

        // Nothing else of the map ran: not the chunks queued in the pool, nor those the workers held.
        Assert.Equal(2, runs.ToArray().Sum());
        Assert.Equal(runs.ToArray(), stopped.ToArray());
    }

    [Fact]
    public void Cancelling_one_ApplyAsync_leaves_the_other_calls_of_the_same_lambda_alone()
    {
        using var runs = Mp.RawArray<int>(3);
        using var stopped = Mp.RawArray<int>(3);
        using var pool = Mp.Pool(processes: 1, options: new PoolOptions { CancellationGracePeriod = Guard });
        using var cts = new CancellationTokenSource();

        // One lambda, so one template for all three calls: only call 1 ignores its token and returns at once.
        AsyncResult<int> Start(int i, CancellationToken token) =>
            pool.ApplyAsync(t => i == 1 ? Interlocked.Increment(ref runs.AsSpan()[1]) : UntilCancelled(i, t, runs, stopped), cancellationToken: token);
        var first = Start(0, cts.Token);
        Assert.True(Wait.Until(() => runs[0] == 1, Guard), "the first call did not start");

        // The worker holds the next two behind the running one.
        var plain = Start(1, CancellationToken.None);
        var queued = Start(2, cts.Token);
        cts.Cancel();

        Assert.Throws<OperationCanceledException>(() => first.Get(Guard));
        Assert.Throws<OperationCanceledException>(() => queued.Get(Guard));
        Assert.Equal(1, plain.Get(Guard));
        Assert.Equal(1, stopped[0]);
        Assert.Equal(0, runs[2]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Cancelling_an_imap_ends_the_stream_with_OperationCanceledException_and_runs_no_waiting_task(bool async)
    {
        using var runs = Mp.RawArray<int>(Items);
        using var stopped = Mp.RawArray<int>(Items);
        using var pool = Mp.Pool(processes: 2, options: new PoolOptions { CancellationGracePeriod = Guard });
        using var cts = new CancellationTokenSource();
        var cancelling = CancelWhenRunning(cts, runs, 2);
        if (async)
        {
            // The token given to WithCancellation cancels the call as the call's own token does.
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var _ in pool.IMapUnorderedAsync((x, token) => UntilCancelled(x, token, runs, stopped), Enumerable.Range(0, Items)).WithCancellation(cts.Token))
                {
                }
            }).WaitAsync(Guard);
        }
        else
        {
            var consumer = Task.Factory.StartNew(
                () => Assert.Throws<OperationCanceledException>(() => pool.IMap((x, token) => UntilCancelled(x, token, runs, stopped), Enumerable.Range(0, Items), cancellationToken: cts.Token).ToList()),
                CancellationToken.None,
                TaskCreationOptions.LongRunning,
                TaskScheduler.Default);
            Assert.Equal(cts.Token, (await consumer.WaitAsync(Guard)).CancellationToken);
        }

        await cancelling.WaitAsync(Guard);
        Assert.True(Wait.Until(() => stopped.ToArray().Sum() >= 2, Guard), "the running tasks did not see their token");
        Assert.Equal([0, 1, 4, 9], pool.IMap(x => x * x, Enumerable.Range(0, 4)).ToList());
        Assert.Equal(2, runs.ToArray().Sum());
    }

    [Fact]
    public void A_task_that_ignores_its_token_is_killed_with_its_worker_after_the_grace_period_and_the_pool_goes_on()
    {
        var grace = TimeSpan.FromMilliseconds(300);
        using var runs = Mp.RawArray<int>(2);
        using var pool = Mp.Pool(processes: 2, options: new PoolOptions { CancellationGracePeriod = grace });
        var workers = Pids(pool);
        using var cts = new CancellationTokenSource();
        using var go = Mp.Event();

        // One task ignores its token; a task of another call runs beside it and is not disturbed.
        var stubborn = pool.ApplyAsync(
            () =>
            {
                runs[0] = Environment.ProcessId;
                Thread.Sleep(Timeout.Infinite);
                return -1;
            },
            cancellationToken: cts.Token);
        var bystander = pool.ApplyAsync(() =>
        {
            runs[1] = Environment.ProcessId;
            go.Wait(Guard);
            return Environment.ProcessId;
        });
        Assert.True(Wait.Until(() => runs[0] != 0 && runs[1] != 0, Guard), "the tasks did not start");
        int victim = runs[0];

        var clock = Stopwatch.StartNew();
        cts.Cancel();
        Assert.True(stubborn.Ready);
        Assert.Throws<OperationCanceledException>(() => stubborn.Get());
        Assert.True(Wait.Until(() => Leaks.IsDead(victim), Guard), "the worker of the cancelled task was not killed");
        var killedAfter = clock.Elapsed;
        Assert.InRange(killedAfter, grace, grace + TimeSpan.FromSeconds(3));

        // The replacement takes work; the bystander finishes on its own worker.
        Assert.True(Wait.Until(() => Pids(pool) is { } now && !now.Contains(victim) && now.Count == 2, Guard), "no replacement worker");
        go.Set();
        Assert.Equal(runs[1], bystander.Get(Guard));
        Assert.Contains(runs[1], workers);
        Assert.Equal(Enumerable.Range(0, 10).Select(x => x * 2), pool.Map(x => x * 2, Enumerable.Range(0, 10), chunksize: 1));
    }

    [Fact]
    public void A_task_reads_its_token_through_CurrentTaskCancellationToken_and_code_outside_a_task_sees_none()
    {
        Assert.False(ProcessPool.CurrentTaskCancellationToken.CanBeCanceled);
        using var started = Mp.Event();
        using var pool = Mp.Pool(processes: 1, options: new PoolOptions { CancellationGracePeriod = Guard });
        using var cts = new CancellationTokenSource();
        var result = pool.ApplyAsync(
            () =>
            {
                var token = ProcessPool.CurrentTaskCancellationToken;
                started.Set();

                // Library code deep in the task, with no token parameter, can stop by throwing.
                token.WaitHandle.WaitOne(Guard);
                token.ThrowIfCancellationRequested();
                return 1;
            },
            cancellationToken: cts.Token);
        Assert.True(started.Wait(Guard));
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => result.Get(Guard));

        // The worker survived (the task stopped by itself), and a call without a token sees one that never fires.
        int pid = pool.GetWorkerStatistics()[0].Pid!.Value;
        Assert.False(pool.Apply(() => ProcessPool.CurrentTaskCancellationToken.CanBeCanceled));
        Assert.Equal(pid, pool.Apply(() => Environment.ProcessId));
    }

    [Fact]
    public async Task An_already_cancelled_token_runs_nothing_and_the_grace_period_is_checked()
    {
        using var runs = Mp.RawArray<int>(1);
        using var pool = Mp.Pool(processes: 1);
        var cancelled = new CancellationToken(canceled: true);
        var map = pool.MapAsync(x => runs[0] = 1, [1, 2, 3], cancellationToken: cancelled);
        Assert.True(map.Ready);
        await Assert.ThrowsAsync<TaskCanceledException>(() => map.AsTask());
        Assert.Throws<OperationCanceledException>(() => pool.Apply(() => runs[0] = 1, cancelled));
        Assert.Throws<OperationCanceledException>(() => pool.IMap(x => runs[0] = 1, [1], cancellationToken: cancelled).ToList());
        Assert.Equal(7, pool.Apply(() => 7));
        Assert.Equal(0, runs[0]);

        Assert.Throws<ArgumentOutOfRangeException>(() => new PoolOptions { CancellationGracePeriod = TimeSpan.FromMilliseconds(-2) });
        Assert.Equal(TimeSpan.Zero, new PoolOptions { CancellationGracePeriod = TimeSpan.Zero }.CancellationGracePeriod);
        Assert.Equal(Timeout.InfiniteTimeSpan, new PoolOptions { CancellationGracePeriod = Timeout.InfiniteTimeSpan }.CancellationGracePeriod);
        Assert.Equal(TimeSpan.FromSeconds(2), new PoolOptions().CancellationGracePeriod);
    }
}
