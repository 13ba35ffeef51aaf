using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Xunit;
using Xunit.Abstractions;

namespace Multiprocessing.Tests;

/// <summary>How the victim task ends its own worker.</summary>
public enum DeathKind
{
    /// <summary>SIGKILL to itself, as the kernel's OOM killer or a `kill -9` would.</summary>
    Sigkill,

    /// <summary>Environment.FailFast: the runtime aborts the process.</summary>
    FailFast,

    /// <summary>Unbounded recursion: the runtime cannot recover from a stack overflow and aborts.</summary>
    StackOverflow,

    /// <summary>A write through a null pointer in native code (libc memset). The same write from managed code
    /// (Marshal.WriteInt32(IntPtr.Zero, 1)) is turned into an AccessViolationException by the runtime and does not kill.</summary>
    NativeCrash,

    /// <summary>Allocating without bound under a 64 MB GC heap limit (DOTNET_GCHeapHardLimit).</summary>
    OutOfMemory,
}

/// <summary>The pool call that runs the tasks.</summary>
public enum CallKind
{
    Map,
    IMap,
    IMapUnordered,
    ApplyAsync,
}

/// <summary>
/// A worker that dies under a task costs that task only: it fails within half a second with a
/// <see cref="WorkerLostException"/> that names the pid and the signal, the tasks the worker had been handed but not
/// started run elsewhere exactly once, a replacement starts, and the pool goes on.
/// </summary>
public sealed class PoolFaultTests(ITestOutputHelper output) : ProcessTest
{
    private const int Items = 20;
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan MaxLatency = TimeSpan.FromSeconds(0.5);

    public static TheoryData<DeathKind, CallKind> EveryDeathKindWithEveryCall()
    {
        var data = new TheoryData<DeathKind, CallKind>();
        foreach (var death in Enum.GetValues<DeathKind>())
        {
            foreach (var call in Enum.GetValues<CallKind>()) data.Add(death, call);
        }

        return data;
    }

    /// <summary>
    /// Item 1 dies. On a pool of two workers that have not run a task yet, Map, IMap and IMapUnordered hand out their
    /// first chunks round robin, four per worker, in one write: worker 0 gets items 0, 2, 4, 6 and worker 1 gets
    /// 1, 3, 5, 7. So the victim is the first task its worker runs, and 3, 5 and 7 wait behind it, handed to that
    /// worker but not started when it dies. ApplyAsync submits one task per call, so where its tasks land depends on
    /// how fast the workers answer.
    /// </summary>
    [Theory]
    [MemberData(nameof(EveryDeathKindWithEveryCall))]
    public Task Only_the_task_whose_worker_dies_fails_the_rest_run_once_and_the_pool_goes_on(DeathKind death, CallKind call) =>
        Run(death, call, victim: 1, victimWaitsForEarlierResults: call == CallKind.IMap);

    /// <summary>
    /// A worker sends its answers in batches, so when it dies it may have finished tasks whose answers it had not
    /// sent yet. Those tasks are not blamed and do not run again; the one that was running is blamed. Here one
    /// worker holds items 0 to 7 at once (after a first call its window covers all of them), runs 0 to 2 in
    /// microseconds (less than the millisecond between flushes) and dies in 3.
    /// </summary>
    [Fact]
    public async Task A_death_after_tasks_whose_answers_were_not_sent_yet_blames_the_running_task_and_runs_nothing_twice()
    {
        const int victim = 3, items = 8;
        using var runs = Mp.RawArray<int>(items);
        using var victimState = Mp.RawArray<long>(Faults.StateLength);
        victimState[Faults.Go] = 1;
        await using var pool = Mp.Pool(processes: 1);
        Assert.Equal(0, pool.Apply(() => 0));
        var seen = await OnOwnThread(() =>
        {
            var seen = new Seen();
            using var results = pool.IMap(x => Work(x, victim, DeathKind.Sigkill, runs, victimState), Enumerable.Range(0, items)).GetEnumerator();
            for (int position = 0; position <= items; position++)
            {
                try
                {
                    if (!results.MoveNext()) break;
                    seen.Results.Add(results.Current);
                }
                catch (MultiprocessingException ex)
                {
                    seen.Failed(position, ex, Stopwatch.GetTimestamp());
                }
            }

            return seen;
        }).WaitAsync(Guard);

        var counts = runs.ToArray();
        Assert.Multiple(
            () => Assert.True(counts.All(c => c == 1), $"runs per item (each must be 1): [{string.Join(", ", counts)}]"),
            () => Assert.Equal(victim, seen.FailedItem),
            () => Assert.Equal((int)victimState[Faults.Pid], Assert.IsType<WorkerLostException>(seen.Failure).Pid),
            () => Assert.Empty(seen.UnexpectedFailures),
            () => Assert.Equal(Enumerable.Range(0, items).Where(i => i != victim).Select(Result), seen.Results));
    }

    /// <summary>Answers too large for the worker's copy on its board go out at once: after a death, big answers
    /// that were sent and small ones that were only kept all arrive, and only the running task fails.</summary>
    [Fact]
    public async Task After_a_death_big_answers_that_were_sent_and_small_ones_that_were_kept_all_arrive_once()
    {
        const int victim = 4, items = 8;
        using var runs = Mp.RawArray<int>(items);
        using var victimState = Mp.RawArray<long>(Faults.StateLength);
        victimState[Faults.Go] = 1;
        await using var pool = Mp.Pool(processes: 1);
        Assert.Equal(0, pool.Apply(() => 0));

        // Items 0 and 2 answer 100 kB each (more than the board keeps), 1 and 3 a few bytes.
        var outcomes = await OnOwnThread(() =>
        {
            var seen = new Seen();
            using var results = pool.IMap(x => new byte[Work(x, victim, DeathKind.Sigkill, runs, victimState) % 2 == 0 ? 100_000 : 8], Enumerable.Range(0, items)).GetEnumerator();
            for (int position = 0; position <= items; position++)
            {
                try
                {
                    if (!results.MoveNext()) break;
                    seen.Results.Add(results.Current.Length);
                }
                catch (MultiprocessingException ex)
                {
                    seen.Failed(position, ex, Stopwatch.GetTimestamp());
                }
            }

            return seen;
        }).WaitAsync(Guard);

        var counts = runs.ToArray();
        Assert.True(counts.All(c => c == 1), $"runs per item (each must be 1): [{string.Join(", ", counts)}]");
        Assert.Equal(victim, outcomes.FailedItem);
        Assert.IsType<WorkerLostException>(outcomes.Failure);
        Assert.Equal([100_000, 8, 100_000, 8, 8, 100_000, 8], outcomes.Results);
    }

    /// <summary>The latency checks subtract a timestamp taken in the worker from one taken here: both must be the
    /// same clock (Stopwatch is CLOCK_MONOTONIC on Linux, which is system-wide).</summary>
    [Fact]
    public void A_workers_stopwatch_timestamps_lie_on_the_parents_clock()
    {
        using var pool = Mp.Pool(processes: 1);
        pool.Apply(() => 0);
        for (int i = 0; i < 5; i++)
        {
            long before = Stopwatch.GetTimestamp();
            long there = pool.Apply(Stopwatch.GetTimestamp);
            long after = Stopwatch.GetTimestamp();
            Assert.InRange(there, before, after);
        }
    }

    /// <summary>The task every test runs: counts its runs; the victim's first run kills its worker.</summary>
    public static int Work(int item, int victim, DeathKind death, SharedArray<int> runs, SharedArray<long> victimState)
    {
        Interlocked.Increment(ref runs.AsSpan()[item]);
        if (item == victim && Interlocked.Exchange(ref victimState.AsSpan()[Faults.Started], 1) == 0)
        {
            victimState[Faults.Pid] = Environment.ProcessId;
            Faults.Die(death, victimState);
        }

        return Result(item);
    }

    private static int Result(int item) => 1000 + item;

    /// <param name="death">How the victim dies.</param>
    /// <param name="call">The call that runs the items.</param>
    /// <param name="victim">The item that kills its worker.</param>
    /// <param name="victimWaitsForEarlierResults">The victim dies only once the results ordered before it have
    /// arrived: IMap raises its failure only after them, and a worker that is slow to answer item 0 would otherwise be
    /// timed as the pool's delay.</param>
    private async Task Run(DeathKind death, CallKind call, int victim, bool victimWaitsForEarlierResults)
    {
        // A GC heap limit is read when the runtime starts, so it must be in the workers' environment from the start.
        var options = death == DeathKind.OutOfMemory
            ? new PoolOptions { WorkerEnvironment = _ => new Dictionary<string, string> { ["DOTNET_GCHeapHardLimit"] = "0x4000000" } }
            : null;
        using var started = Mp.RawArray<int>(1);
        using var runs = Mp.RawArray<int>(Items);
        using var victimState = Mp.RawArray<long>(Faults.StateLength);
        await using var pool = Mp.Pool(processes: 2, initializer: () => Interlocked.Increment(ref started.AsSpan()[0]), options: options);
        var workersBefore = Pids(pool);
        Assert.Equal(2, workersBefore.Count);

        // Both workers up, and neither has run a task, so the first chunks are dealt four to each, in order. Timing
        // a result that waits in line behind a worker still starting would measure the start, not the death.
        Assert.True(await Eventually(() => started[0] == 2, Guard), "the workers did not start");

        long submitted = Stopwatch.GetTimestamp();
        if (!victimWaitsForEarlierResults) victimState[Faults.Go] = 1;
        var seen = await Observe(pool, call, victim, x => Work(x, victim, death, runs, victimState), received =>
        {
            if (received >= victim) victimState[Faults.Go] = 1;
        }).WaitAsync(Guard);
        int victimPid = (int)victimState[Faults.Pid];
        long diedAt = victimState[Faults.DiedAt];
        Assert.True(victimPid > 0, "the victim task never started");
        var latency = seen.FailedAt is { } failedAt ? Stopwatch.GetElapsedTime(diedAt, failedAt) : (TimeSpan?)null;
        output.WriteLine($"{death} x {call}, victim item {victim} on worker {victimPid}: {seen.Failure?.GetType().Name} " +
            $"{(seen.Failure as WorkerLostException)?.ExitCode} \"{seen.Failure?.Message}\", death to exception {latency?.TotalMilliseconds:F1} ms");

        // A dead worker is replaced: its slot gets a new pid. One that survived keeps its slot.
        bool dies = death != DeathKind.OutOfMemory;
        if (dies) await Eventually(() => started[0] == 3 && Pids(pool) is { Count: 2 } now && !now.Contains(victimPid), TimeSpan.FromSeconds(10));
        var workersAfter = Pids(pool);

        // The pool goes on: new maps run right, on both workers, the replacement included. (Two maps: the first may
        // all go to one worker while the other still answers work of the call before.)
        var again = new List<long>();
        for (int round = 0; round < 2; round++)
        {
            again.AddRange(await pool.MapAsync(x => Environment.ProcessId * 100L + x, Enumerable.Range(0, Items), chunksize: 1).AsTask().WaitAsync(Guard));
        }

        // Counted last, so that a task run again late is seen too.
        var counts = runs.ToArray();
        var expected = Enumerable.Range(0, Items).Where(i => i != victim).Select(Result).ToList();
        Assert.Multiple(
            // Every other task ran exactly once; the victim ran once and was not run again.
            () => Assert.True(counts.All(c => c == 1), $"runs per item (each must be 1): [{string.Join(", ", counts)}]"),
            () => Assert.True(seen.UnexpectedFailures.Count == 0, "tasks other than the victim failed: " + string.Join("; ", seen.UnexpectedFailures)),

            // The other results arrived, each once and right (Map raises the failure instead, as Python's does). IMap
            // and IMapUnordered are asked for more after the failure, as Python's next() may be.
            () =>
            {
                if (call == CallKind.IMapUnordered) Assert.Equal(expected, seen.Results.Order().ToList());
                else if (call != CallKind.Map) Assert.Equal(expected, seen.Results);
            },

            // The victim's task failed, with the library's exception naming the pid and how it died.
            () =>
            {
                Assert.NotNull(seen.Failure);
                Assert.True(
                    seen.FailedItem == victim,
                    $"the failure was charged to item {seen.FailedItem?.ToString() ?? "?"}, not to the victim, item {victim}" +
                    (seen.FailedItem is null ? " (IMapUnordered does not say which item failed, and more than one result is missing)" : string.Empty));
                if (!dies)
                {
                    // A managed OutOfMemoryException is an ordinary exception: the task fails with it (as Python's
                    // MemoryError does) and the worker lives on.
                    var remote = Assert.IsType<RemoteException>(seen.Failure);
                    Assert.Equal("System.OutOfMemoryException", remote.RemoteTypeName);
                    return;
                }

                var lost = Assert.IsType<WorkerLostException>(seen.Failure);
                Assert.Equal(victimPid, lost.Pid);
                var (exitCode, signal) = death switch
                {
                    DeathKind.Sigkill => (-9, "SIGKILL"),
                    DeathKind.NativeCrash => (-11, "SIGSEGV"),
                    _ => (-6, "SIGABRT"),
                };
                Assert.Equal(exitCode, lost.ExitCode);
                Assert.Contains(victimPid.ToString(), lost.Message);
                Assert.Contains(signal, lost.Message);
                Assert.True(Leaks.IsDead(victimPid), $"worker {victimPid} is still alive");
            },

            // ... within half a second of the death (both timestamps are CLOCK_MONOTONIC, see the clock test).
            () =>
            {
                Assert.True(submitted < diedAt, "the victim's timestamp is not after the call was made: the clocks differ");
                Assert.NotNull(latency);

                // A death reaches a per-item call within half a second. Map reports only when the whole map is
                // over (its re-queued items wait for the replacement worker), and an OutOfMemoryException is not a
                // death at all but a task that first fills its heap: those get a bound for a loaded 2-core machine.
                var bound = dies && call != CallKind.Map ? MaxLatency : TimeSpan.FromSeconds(3);
                Assert.InRange(latency.Value, TimeSpan.Zero, bound);
            },

            // A replacement took the dead worker's slot; a worker that survived kept its own.
            () =>
            {
                if (dies)
                {
                    Assert.Equal(3, started[0]);
                    Assert.Equal(2, workersAfter.Count);
                    Assert.DoesNotContain(victimPid, workersAfter);
                    Assert.Single(workersAfter.Except(workersBefore));
                }
                else
                {
                    Assert.Equal(2, started[0]);
                    Assert.Equal(workersBefore, workersAfter);
                }
            },

            // The next map ran right, on both workers, the replacement included.
            () =>
            {
                Assert.Equal(Enumerable.Range(0, Items).Concat(Enumerable.Range(0, Items)), again.Select(r => (int)(r % 100)));
                Assert.Equal(workersAfter.Order(), again.Select(r => (int)(r / 100)).Distinct().Order());
            },

            // No core file was written where the workers ran.
            () => Assert.False(File.Exists("core") || File.Exists($"core.{victimPid}"), "a core file was left behind"));
    }

    /// <summary>Wait.Until without holding a thread-pool thread: the pool reads its workers' answers, and learns of
    /// their deaths, on thread-pool threads, and the test host has few (vstest keeps one for itself).</summary>
    private static async Task<bool> Eventually(Func<bool> condition, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout) return false;
            await Task.Delay(10);
        }

        return true;
    }

    private static List<int> Pids(ProcessPool pool) => [.. pool.GetWorkerStatistics().Where(s => s.Pid is not null).Select(s => s.Pid!.Value)];

    /// <summary>What a call delivered: the results, the failure of the one task that failed (and when it was seen
    /// here), and any other failure.</summary>
    private sealed class Seen
    {
        public List<int> Results { get; } = [];

        public Exception? Failure { get; set; }

        public int? FailedItem { get; set; }

        public long? FailedAt { get; set; }

        public List<string> UnexpectedFailures { get; } = [];

        public void Failed(int? item, Exception error, long at)
        {
            if (Failure is null)
            {
                (Failure, FailedItem, FailedAt) = (error, item, at);
            }
            else
            {
                UnexpectedFailures.Add($"item {item?.ToString() ?? "?"}: {error.GetType().Name}: {error.Message}");
            }
        }
    }

    /// <summary>Runs the items 0 to 19 with chunksize 1 through the given call; IMap and IMapUnordered report how many
    /// results they have received to <paramref name="received"/>.</summary>
    private static Task<Seen> Observe(ProcessPool pool, CallKind call, int victim, Func<int, int> task, Action<int> received)
    {
        var items = Enumerable.Range(0, Items);
        return call switch
        {
            CallKind.Map => OnOwnThread(() =>
            {
                var seen = new Seen();
                try
                {
                    seen.Results.AddRange(pool.Map(task, items, chunksize: 1));
                }
                catch (MultiprocessingException ex)
                {
                    // Map raises the earliest failure and keeps no results, so which item failed is not said: it is
                    // taken to be the victim, and the run counts and the exception's pid show whether it was.
                    seen.Failed(victim, ex, Stopwatch.GetTimestamp());
                }

                return seen;
            }),
            CallKind.IMap or CallKind.IMapUnordered => OnOwnThread(() =>
            {
                // Python's imap iterator goes on after raising a task's exception: next() gives the next result.
                var seen = new Seen();
                var source = call == CallKind.IMap ? pool.IMap(task, items) : pool.IMapUnordered(task, items);
                using var results = source.GetEnumerator();
                for (int position = 0; position <= Items; position++)
                {
                    try
                    {
                        if (!results.MoveNext()) break;
                        seen.Results.Add(results.Current);
                        received(seen.Results.Count);
                    }
                    catch (MultiprocessingException ex)
                    {
                        long at = Stopwatch.GetTimestamp();

                        // In order, the failed item is the one at this position; out of order, the one whose result
                        // never arrives.
                        seen.Failed(call == CallKind.IMap ? position : null, ex, at);
                    }
                }

                if (call == CallKind.IMapUnordered && seen.Failure is not null)
                {
                    var missing = Enumerable.Range(0, Items).Where(i => !seen.Results.Contains(Result(i))).ToList();
                    seen.FailedItem = missing.Count == 1 ? missing[0] : null;
                }

                return seen;
            }),
            _ => ApplyEach(pool, task),
        };
    }

    /// <summary>Runs a blocking consumer on a thread of its own, so the test's guard can give up on it and it holds
    /// no thread-pool thread (the pool's result reading runs there; a starved thread pool adds up to a second or
    /// more to every answer).</summary>
    private static Task<Seen> OnOwnThread(Func<Seen> consume) =>
        Task.Factory.StartNew(consume, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static async Task<Seen> ApplyEach(ProcessPool pool, Func<int, int> task)
    {
        var seen = new Seen();
        var failedAt = new ConcurrentDictionary<int, long>();
        var pending = Enumerable.Range(0, Items)
            .Select(i => pool.ApplyAsync(() => task(i), errorCallback: _ => failedAt[i] = Stopwatch.GetTimestamp()))
            .ToList();
        for (int i = 0; i < Items; i++)
        {
            try
            {
                seen.Results.Add(await pending[i]);
            }
            catch (MultiprocessingException ex)
            {
                // The error callback ran on the pool's result thread the moment the failure was known.
                seen.Failed(i, ex, failedAt[i]);
            }
        }

        return seen;
    }
}

/// <summary>Ways for a task to kill its own process.</summary>
public static class Faults
{
    /// <summary>Indexes in the victim's shared state: whether it started, its pid, the timestamp of its death, and
    /// the test's go-ahead to die.</summary>
    public const int Started = 0, Pid = 1, DiedAt = 2, Go = 3, StateLength = 4;

    private const int PrSetDumpable = 4;
    private const int OWriteOnly = 1;
    private const int StandardError = 2;
    private const int SigKill = 9;

    /// <summary>Waits for the go-ahead in <paramref name="state"/>, records the moment of death there, then dies.</summary>
    public static void Die(DeathKind death, SharedArray<long> state)
    {
        // No core file, whatever the machine's ulimit -c and core_pattern say.
        Prctl(PrSetDumpable, 0, 0, 0, 0);

        // The runtime's report of a fail-fast or a stack overflow (tens of lines) would land in the test log.
        if (death is DeathKind.FailFast or DeathKind.StackOverflow) Dup2(Open("/dev/null", OWriteOnly), StandardError);

        // What the death needs is bound and compiled before the clock starts, so that only the dying is timed.
        Kill(Environment.ProcessId, 0);
        var scratch = Marshal.AllocHGlobal(4);
        Memset(scratch, 0, 4);
        Marshal.FreeHGlobal(scratch);

        Wait.Until(() => state[Go] != 0, TimeSpan.FromSeconds(10));
        state[DiedAt] = Stopwatch.GetTimestamp();
        switch (death)
        {
            case DeathKind.Sigkill:
                Kill(Environment.ProcessId, SigKill);
                break;
            case DeathKind.FailFast:
                Environment.FailFast("pool fault test: fail fast");
                break;
            case DeathKind.StackOverflow:
                Recurse(0);
                break;
            case DeathKind.NativeCrash:
                Memset(IntPtr.Zero, 1, 4);
                break;
            case DeathKind.OutOfMemory:
                var hog = new List<byte[]>();
                while (true) hog.Add(new byte[1 << 20]);
        }

        throw new InvalidOperationException($"still alive after {death}");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long Recurse(long depth) => depth == long.MaxValue ? depth : Recurse(depth + 1) + 1;

    [DllImport("libc", EntryPoint = "prctl")]
    private static extern int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [DllImport("libc", EntryPoint = "open")]
    private static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "dup2")]
    private static extern int Dup2(int from, int to);

    [DllImport("libc", EntryPoint = "kill")]
    private static extern int Kill(int pid, int signal);

    [DllImport("libc", EntryPoint = "memset")]
    private static extern IntPtr Memset(IntPtr destination, int value, nuint count);
}
