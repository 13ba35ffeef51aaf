using System.Collections.Concurrent;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>Synchronous progress sink: Progress&lt;T&gt; would post to a context the test does not pump.</summary>
public sealed class ProgressLog<T> : IProgress<T>
{
    public ConcurrentQueue<(T Value, int Thread)> Reports { get; } = new();

    public void Report(T value) => Reports.Enqueue((value, Environment.CurrentManagedThreadId));
}

public sealed class PoolTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    public static int Square(int x) => x * x;

    [Fact]
    public void Map_StarMap_IMap_and_IMapUnordered_give_pythons_results()
    {
        using var pool = Mp.Pool(processes: 2);
        Assert.Equal(2, pool.Processes);
        var expected = Enumerable.Range(0, 10).Select(Square).ToList();
        Assert.Equal(expected, pool.Map(Square, Enumerable.Range(0, 10)));
        Assert.Equal(expected, pool.Map(Square, Enumerable.Range(0, 10), chunksize: 3));
        Assert.Equal(expected, pool.IMap(Square, Enumerable.Range(0, 10)).ToList());
        Assert.Equal(expected, pool.IMap(Square, Enumerable.Range(0, 10), chunksize: 4).ToList());
        Assert.Equal(expected, pool.IMapUnordered(Square, Enumerable.Range(0, 10)).Order().ToList());
        Assert.Equal([3, 7], pool.StarMap((int a, int b) => a + b, [(1, 2), (3, 4)]));
        Assert.Equal(["a1x", "b2y"], pool.StarMap((string a, int b, char c) => $"{a}{b}{c}", [("a", 1, 'x'), ("b", 2, 'y')]));
        Assert.Empty(pool.Map(Square, Array.Empty<int>()));
        Assert.Equal(["0", "1"], pool.Map(x => x.ToString(), Enumerable.Range(0, 2)));
    }

    [Fact]
    public void Default_chunksize_follows_pythons_rule()
    {
        Assert.Equal(25_000, ProcessPool.DefaultChunksize(200_000, 2));
        Assert.Equal(1, ProcessPool.DefaultChunksize(10, 4));
        Assert.Equal(3, ProcessPool.DefaultChunksize(17, 2));
        Assert.Equal(1, ProcessPool.DefaultChunksize(0, 2));
    }

    [Fact]
    public void Processes_default_to_the_cpu_count()
    {
        using var pool = Mp.Pool();
        Assert.Equal(Mp.CpuCount, pool.Processes);
    }

    [Fact]
    public void Apply_and_ApplyAsync_with_get_wait_ready_successful_and_timeouts()
    {
        using var pool = Mp.Pool(processes: 2);
        Assert.Equal(400, pool.Apply(() => Square(20)));
        var pid = pool.ApplyAsync(() => Environment.ProcessId).Get(Guard);
        Assert.NotEqual(Environment.ProcessId, pid);

        using var scratch = new Scratch();
        var go = scratch.File("go");
        var slow = pool.ApplyAsync(() =>
        {
            ChildProcessTests.WaitForFile(go);
            return 5;
        });
        Assert.False(slow.Ready);
        Assert.Throws<InvalidOperationException>(() => slow.Successful);
        Assert.False(slow.Wait(TimeSpan.FromMilliseconds(50)));
        Assert.Throws<TimeoutException>(() => slow.Get(TimeSpan.FromMilliseconds(50)));

        // The pool stays usable while that task runs.
        Assert.Equal(9, pool.Apply(() => Square(3)));
        File.WriteAllText(go, "go");
        Assert.Equal(5, slow.Get(Guard));
        Assert.True(slow.Ready);
        Assert.True(slow.Successful);
    }

    [Fact]
    public async Task Async_twins_are_awaitable_and_honour_cancellation()
    {
        await using var pool = Mp.Pool(processes: 2);
        Assert.Equal([0, 1, 4], await pool.MapAsync(Square, Enumerable.Range(0, 3)));
        Assert.Equal([3], await pool.StarMapAsync((int a, int b) => a + b, [(1, 2)]));
        Assert.Equal(16, await pool.ApplyAsync(() => Square(4)));

        var ordered = new List<int>();
        await foreach (var r in pool.IMapAsync(Square, Enumerable.Range(0, 5))) ordered.Add(r);
        Assert.Equal([0, 1, 4, 9, 16], ordered);
        var unordered = new List<int>();
        await foreach (var r in pool.IMapUnorderedAsync(Square, Enumerable.Range(0, 5))) unordered.Add(r);
        Assert.Equal([0, 1, 4, 9, 16], unordered.Order());

        using var scratch = new Scratch();
        var go = scratch.File("go");
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in pool.IMapAsync(x => { ChildProcessTests.WaitForFile(go); return x; }, [1], cancellationToken: cts.Token))
            {
            }
        });
        var waiting = pool.ApplyAsync(() => { ChildProcessTests.WaitForFile(go); return 1; });
        using var cts2 = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.GetAsync(cts2.Token));
        Assert.Throws<OperationCanceledException>(() => pool.Apply(() => { ChildProcessTests.WaitForFile(go); return 1; }, new CancellationTokenSource(50).Token));
        File.WriteAllText(go, "go");
        Assert.Equal(1, await waiting);
    }

    [Fact]
    public void Callbacks_run_in_the_parent_on_one_result_thread_before_the_result_is_ready()
    {
        using var pool = Mp.Pool(processes: 2);
        var threads = new ConcurrentBag<int>();
        var seen = new ConcurrentQueue<int>();
        var results = Enumerable.Range(0, 8)
            .Select(i => pool.ApplyAsync(() => Square(i), callback: r => { threads.Add(Environment.CurrentManagedThreadId); seen.Enqueue(r); }))
            .ToList();
        foreach (var r in results)
        {
            int value = r.Get(Guard);
            Assert.Contains(value, seen);
        }

        Assert.Single(threads.Distinct());
        Assert.NotEqual(Environment.CurrentManagedThreadId, threads.First());

        Exception? failure = null;
        var failing = pool.ApplyAsync<int>(() => throw new ArgumentException("no"), errorCallback: e => failure = e);
        Assert.Throws<RemoteException>(() => failing.Get(Guard));
        Assert.IsType<RemoteException>(failure);

        List<int>? mapped = null;
        var map = pool.MapAsync(Square, [1, 2], callback: r => mapped = r);
        Assert.Equal([1, 4], map.Get(Guard));
        Assert.Equal([1, 4], mapped);
    }

    [Fact]
    public void A_callback_that_throws_does_not_stop_result_handling()
    {
        using var pool = Mp.Pool(processes: 1);
        var first = pool.ApplyAsync(() => 1, callback: _ => throw new InvalidOperationException("callback bug"));
        Assert.Equal(1, first.Get(Guard));
        var second = 0;
        var next = pool.ApplyAsync(() => 2, callback: r => second = r);
        Assert.Equal(2, next.Get(Guard));
        Assert.Equal(2, second);
    }

    [Fact]
    public void Errors_arrive_as_remote_exceptions_the_other_tasks_finish_and_the_pool_goes_on()
    {
        using var pool = Mp.Pool(processes: 2);
        using var scratch = new Scratch();
        var dir = scratch.Path;
        var error = Assert.Throws<RemoteException>(() => pool.Map(
            x =>
            {
                if (x == 3) Thrower.Fail($"bad item {x}");
                File.WriteAllText(Path.Combine(dir, x.ToString()), "done");
                return x;
            },
            Enumerable.Range(0, 10),
            chunksize: 1));
        Assert.Equal("System.InvalidOperationException", error.RemoteTypeName);
        Assert.Equal("bad item 3", error.RemoteMessage);
        Assert.Contains("Thrower.Fail", error.RemoteStackTrace);
        Assert.Contains("bad item 3", error.ToString());
        Assert.Equal(9, Directory.GetFiles(dir).Length);

        // IMap yields everything before the failing item, then throws it.
        var yielded = new List<int>();
        Assert.Throws<RemoteException>(() =>
        {
            foreach (var r in pool.IMap(x => x == 2 ? throw new ArgumentException("two") : x, Enumerable.Range(0, 5))) yielded.Add(r);
        });
        Assert.Equal([0, 1], yielded);

        // A result that cannot travel back fails that task, naming the type.
        var unsendable = Assert.Throws<RemoteException>(() => pool.Apply<Stream>(() => new MemoryStream()));
        Assert.Contains("System.IO.MemoryStream", unsendable.Message);
        Assert.Equal([0, 1, 4], pool.Map(Square, [0, 1, 2]));
    }

    [Fact]
    public void A_worker_killed_under_a_task_fails_that_task_and_is_replaced()
    {
        using var pool = Mp.Pool(processes: 1);
        int before = pool.Apply(() => Environment.ProcessId);
        var lost = Assert.Throws<WorkerLostException>(() => pool.Apply(() =>
        {
            System.Diagnostics.Process.GetCurrentProcess().Kill();
            return 0;
        }));
        Assert.Equal(before, lost.Pid);
        Assert.Equal(-9, lost.ExitCode);
        int after = pool.Apply(() => Environment.ProcessId);
        Assert.NotEqual(before, after);
    }

    [Fact]
    public async Task Apply_reads_its_own_answer_and_the_reader_thread_still_serves_the_rest()
    {
        using var pool = Mp.Pool(processes: 1);

        // One task at a time: each caller reads the worker's answer on its own thread, the reader thread disarmed.
        for (int i = 0; i < 300; i++)
        {
            int x = i;
            Assert.Equal(x * x, pool.Apply(() => x * x));
        }

        // Nobody waits synchronously on this one: only a reader thread re-armed after the callers can deliver it.
        var awaited = pool.ApplyAsync(() => 41);
        Assert.Equal(41, await awaited.AsTask().WaitAsync(Guard));

        // A task queued behind another is not the worker's next answer: its caller leaves the reading to the reader.
        using var gate = Mp.Event();
        var first = pool.ApplyAsync(() => gate.Wait(Guard) ? 1 : -1);
        var second = pool.ApplyAsync(() => 2);
        var waiting = Task.Run(() => second.Get(Guard));
        gate.Set();
        Assert.Equal(2, await waiting.WaitAsync(Guard));
        Assert.Equal(1, first.Get(Guard));
        Assert.Equal(9, pool.Apply(() => 9));
    }

    [Fact]
    public async Task Inputs_bigger_than_the_socket_buffer_arrive_whole_and_the_sockets_stay_off_the_runtimes_socket_engine()
    {
        using var pool = Mp.Pool(processes: 1);

        // Chunks of 3 MiB: the socket takes part at once, and the reader thread writes the rest when there is room,
        // while Apply callers on another thread read answers for themselves.
        var big = Enumerable.Range(0, 24).Select(i => new string((char)('a' + i), 1 << 20)).ToList();
        var map = pool.MapAsync(s => s.Length + s[0], big, chunksize: 3);
        var applies = Task.Run(() =>
        {
            for (int i = 0; i < 200; i++)
            {
                int x = i;
                Assert.Equal(x + 1, pool.Apply(() => x + 1));
            }
        });
        Assert.Equal(big.Select(s => s.Length + s[0]), await map.AsTask().WaitAsync(Guard));
        await applies.WaitAsync(Guard);
        Assert.Equal(big.Count, pool.IMap(s => s.Length, big).Count(n => n == 1 << 20));

        // A socket the runtime's engine watches (edge-triggered) wakes its thread and a thread-pool thread for every
        // answer; on a small machine those threads take the CPU from the caller and the worker.
        var sockets = pool.WorkerSocketDescriptors();
        Assert.NotEmpty(sockets);
        Assert.Empty(EdgeTriggeredWatches().Intersect(sockets));
    }

    /// <summary>Descriptors that some epoll instance of this process watches edge-triggered.</summary>
    private static IEnumerable<int> EdgeTriggeredWatches()
    {
        foreach (var link in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(link).LinkTarget;
            }
            catch (IOException)
            {
                continue;
            }

            if (target != "anon_inode:[eventpoll]") continue;
            string[] lines;
            try
            {
                lines = File.ReadAllLines($"/proc/self/fdinfo/{Path.GetFileName(link)}");
            }
            catch (IOException)
            {
                continue;
            }

            // "tfd:       51 events: 8000001d data: ..."; bit 31 of events is EPOLLET.
            foreach (var line in lines.Where(l => l.StartsWith("tfd:", StringComparison.Ordinal)))
            {
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if ((uint.Parse(parts[3], System.Globalization.NumberStyles.HexNumber) & 0x8000_0000u) != 0) yield return int.Parse(parts[1]);
            }
        }
    }

    [Fact]
    public async Task Close_lets_queued_work_finish_and_join_waits_for_the_workers()
    {
        var pool = Mp.Pool(processes: 2);
        Assert.Throws<InvalidOperationException>(() => pool.Join());
        var result = pool.MapAsync(x => { Thread.Sleep(20); return Square(x); }, Enumerable.Range(0, 10), chunksize: 1);
        pool.Close();
        var error = Assert.Throws<InvalidOperationException>(() => pool.Apply(() => 1));
        Assert.Contains("closed", error.Message);
        Assert.Throws<InvalidOperationException>(() => pool.Map(Square, [1]));
        Assert.Throws<InvalidOperationException>(() => pool.IMap(Square, [1]).ToList());
        await pool.JoinAsync().WaitAsync(Guard);
        Assert.Equal(Enumerable.Range(0, 10).Select(Square), result.Get(TimeSpan.Zero));
        pool.Dispose();
    }

    [Fact]
    public void Terminate_kills_workers_and_fails_pending_results()
    {
        var pool = Mp.Pool(processes: 1);
        using var scratch = new Scratch();
        var go = scratch.File("never");
        var running = pool.ApplyAsync(() => { ChildProcessTests.WaitForFile(go); return 1; });
        var queued = pool.MapAsync(Square, Enumerable.Range(0, 5));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        pool.Terminate();
        pool.Join();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5));
        Assert.Throws<PoolTerminatedException>(() => running.Get(Guard));
        Assert.Throws<PoolTerminatedException>(() => queued.Get(Guard));
        Assert.Throws<InvalidOperationException>(() => pool.Apply(() => 1));
        pool.Dispose();
    }

    [Fact]
    public async Task Using_terminates_like_pythons_with_and_DisposeAsync_does_too()
    {
        AsyncResult<int> pending;
        using var scratch = new Scratch();
        var go = scratch.File("never");
        using (var pool = Mp.Pool(processes: 1))
        {
            pending = pool.ApplyAsync(() => { ChildProcessTests.WaitForFile(go); return 1; });
        }

        Assert.Throws<PoolTerminatedException>(() => pending.Get(Guard));

        var asyncPool = Mp.Pool(processes: 1);
        var later = asyncPool.ApplyAsync(() => { ChildProcessTests.WaitForFile(go); return 1; });
        await asyncPool.DisposeAsync();
        await Assert.ThrowsAsync<PoolTerminatedException>(() => later.AsTask());
    }

    [Fact]
    public void Initializer_runs_once_in_each_worker_before_its_first_task()
    {
        using var scratch = new Scratch();
        var dir = scratch.Path;
        using var pool = Mp.Pool(processes: 2, initializer: () => File.AppendAllText(Path.Combine(dir, Environment.ProcessId + ".init"), "x"));
        var pids = pool.Map(_ => File.Exists(Path.Combine(dir, Environment.ProcessId + ".init")) ? Environment.ProcessId : -1, Enumerable.Range(0, 20), chunksize: 1);
        Assert.DoesNotContain(-1, pids);
        foreach (var pid in pids.Distinct()) Assert.Equal("x", File.ReadAllText(Path.Combine(dir, pid + ".init")));
    }

    [Fact]
    public void A_failing_initializer_stops_the_pool_with_its_error_instead_of_starting_workers_forever()
    {
        using var scratch = new Scratch();
        var starts = scratch.File("starts");
        using var pool = Mp.Pool(processes: 2, initializer: () =>
        {
            File.AppendAllText(starts, "x");
            throw new InvalidOperationException("no GPU here");
        });

        var error = Assert.Throws<PoolBrokenException>(() => pool.Map(Square, Enumerable.Range(0, 8), chunksize: 1));
        Assert.NotNull(error.InitializerError);
        Assert.Equal("System.InvalidOperationException", error.InitializerError.RemoteTypeName);
        Assert.Equal("no GPU here", error.InitializerError.RemoteMessage);
        Assert.Contains("initializer failed in worker process", error.Message);

        // New work is refused with the same cause, and the pool winds down like a terminated one.
        var refused = Assert.Throws<PoolBrokenException>(() => pool.ApplyAsync(() => 1));
        Assert.Equal("no GPU here", refused.InitializerError?.RemoteMessage);
        pool.Close();
        pool.Join();

        // Python's Pool would have started a replacement for every failure, for as long as it lived.
        Assert.InRange(File.ReadAllText(starts).Length, 1, 2);
    }

    [Fact]
    public void A_pool_that_cannot_start_a_replacement_worker_stops_instead_of_leaving_its_tasks_waiting()
    {
        int starts = 0;
        var options = new PoolOptions
        {
            WorkerEnvironment = _ => Interlocked.Increment(ref starts) == 1
                ? new Dictionary<string, string>()
                : throw new InvalidOperationException("no GPU left for a new worker"),
        };
        using var pool = Mp.Pool(processes: 1, maxTasksPerChild: 1, options: options);
        Assert.Equal(1, pool.Apply(() => 1));

        // The only worker retires after its task and nothing can take its place: the tasks fail, they do not wait.
        var error = Assert.Throws<PoolBrokenException>(() =>
        {
            var result = pool.MapAsync(Square, [1, 2, 3]);
            Assert.True(result.Wait(Guard), "the tasks are still waiting for a worker");
            result.Get();
        });
        Assert.Null(error.InitializerError);
        Assert.IsType<InvalidOperationException>(error.InnerException);
        Assert.Contains("no GPU left for a new worker", error.Message);
        pool.Close();
        pool.Join();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_input_that_throws_ends_imap_with_its_exception_after_the_chunks_read_before_it(bool ordered)
    {
        static IEnumerable<int> Throws(int total, int when)
        {
            for (int i = 0; i < total; i++)
            {
                if (i == when) throw new FormatException("say when");
                yield return i;
            }
        }

        List<int> Consume(IEnumerable<int> results)
        {
            var got = new List<int>();
            using var stream = results.GetEnumerator();
            var error = Assert.Throws<FormatException>(() =>
            {
                while (stream.MoveNext()) got.Add(stream.Current);
            });
            Assert.Equal("say when", error.Message);
            Assert.False(stream.MoveNext());
            return ordered ? got : [.. got.Order()];
        }

        using var pool = Mp.Pool(processes: 2);
        IEnumerable<int> Run(IEnumerable<int> input, int chunksize) =>
            ordered ? pool.IMap(Square, input, chunksize) : pool.IMapUnordered(Square, input, chunksize);

        Assert.Equal([0, 1, 4], Consume(Run(Throws(10, 3), 1)));
        Assert.Empty(Consume(Run(Throws(10, 0), 1)));

        // With chunks of 2 the failure at item 7 takes item 6, read in the same chunk, with it (CPython's tests ask
        // for exactly this).
        Assert.Equal([0, 1, 4, 9, 16, 25], Consume(Run(Throws(20, 7), 2)));

        // Python's map reads the whole input first, so the exception comes before any task; the pool lives on.
        Assert.Throws<FormatException>(() => pool.Map(Square, Throws(10, 3)));
        Assert.Equal(9, pool.Apply(() => Square(3)));
    }

    [Fact]
    public void A_recycled_worker_is_replaced_only_after_it_exits_so_no_more_than_processes_tasks_run_at_once()
    {
        using var running = Mp.Value(0);
        using var most = Mp.RawValue(0);
        using var pool = Mp.Pool(processes: 2, maxTasksPerChild: 1);
        var pids = pool.Map(
            _ =>
            {
                using (running.GetLock().Acquire())
                {
                    running.Value++;
                    if (running.Value > most.Value) most.Value = running.Value;
                }

                // Long enough for a replacement booted early to reach its first task meanwhile.
                Thread.Sleep(150);
                using (running.GetLock().Acquire()) running.Value--;
                return Environment.ProcessId;
            },
            Enumerable.Range(0, 8),
            chunksize: 1);

        Assert.Equal(8, pids.Distinct().Count());
        Assert.InRange(most.Value, 1, 2);
    }

    [Fact]
    public void MaxTasksPerChild_replaces_a_worker_after_n_tasks()
    {
        using var pool = Mp.Pool(processes: 1, maxTasksPerChild: 2);
        var pids = Enumerable.Range(0, 6).Select(_ => pool.Apply(() => Environment.ProcessId)).ToList();
        Assert.Equal(3, pids.Distinct().Count());
        Assert.Equal(pids[0], pids[1]);
        Assert.NotEqual(pids[1], pids[2]);
        Assert.Equal(Enumerable.Range(0, 50).Select(Square), pool.Map(Square, Enumerable.Range(0, 50), chunksize: 1));
    }

    [Fact]
    public void IMap_reads_an_endless_input_lazily_with_bounded_read_ahead()
    {
        long pulled = 0;
        IEnumerable<int> Endless()
        {
            for (int i = 0; ; i++)
            {
                Interlocked.Increment(ref pulled);
                yield return i;
            }
        }

        using var pool = Mp.Pool(processes: 2, options: new PoolOptions { MaxReadAhead = 500 });
        var first = pool.IMap(Square, Endless(), chunksize: 10).Take(2000).ToList();
        Assert.Equal(Enumerable.Range(0, 2000).Select(Square), first);
        Assert.InRange(Interlocked.Read(ref pulled), 2000, 2000 + 500 + 10);
        var unordered = pool.IMapUnordered(Square, Endless()).Take(100).ToList();
        Assert.Equal(100, unordered.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PoolOptions { MaxReadAhead = 0 });
    }

    [Fact]
    public void Progress_reports_done_and_total_and_workers_report_statistics()
    {
        using var pool = Mp.Pool(processes: 2);
        var log = new ProgressLog<MapProgress>();
        var result = pool.Map(x => { Thread.Sleep(2); return x; }, Enumerable.Range(0, 40), chunksize: 4, progress: log);
        Assert.Equal(40, result.Count);

        // Every report has run by the time Map returns.
        Assert.Contains(log.Reports, r => r.Value.Done == 40);
        Assert.All(log.Reports, r => Assert.Equal(40, r.Value.Total));
        Assert.Equal(10, log.Reports.Count);
        Assert.Single(log.Reports.Select(r => r.Thread).Distinct());

        var imapLog = new ProgressLog<MapProgress>();
        Assert.Equal(6, pool.IMap(Square, Enumerable.Range(0, 6), progress: imapLog).Count());
        Assert.True(Wait.Until(() => imapLog.Reports.Any(r => r.Value.Done == 6), Guard));

        Assert.True(Wait.Until(() => pool.GetWorkerStatistics().Sum(s => s.TasksCompleted) >= 16, Guard));
        var stats = pool.GetWorkerStatistics();
        Assert.Equal(2, stats.Count);
        Assert.Equal([0, 1], stats.Select(s => s.Index));
        Assert.All(stats, s => Assert.NotNull(s.Pid));
        Assert.True(stats.Sum(s => s.BusyTime.TotalMilliseconds) >= 60, "busy time should cover 40 sleeps of 2 ms");
        Assert.True(stats.All(s => s.IdleTime > TimeSpan.Zero && s.SerializationTime > TimeSpan.Zero));
    }

    [Fact]
    public void Each_worker_gets_its_own_environment_from_its_index_also_after_replacement()
    {
        var options = new PoolOptions
        {
            WorkerEnvironment = index => new Dictionary<string, string> { ["CUDA_VISIBLE_DEVICES"] = (index % 2).ToString() },
        };
        using var pool = Mp.Pool(processes: 2, maxTasksPerChild: 3, options: options);

        // The native environment, which is what CUDA reads, not only .NET's copy.
        var seen = pool.Map(
            _ =>
            {
                Thread.Sleep(5);
                var native = File.ReadAllText("/proc/self/environ").Split('\0').Single(v => v.StartsWith("CUDA_VISIBLE_DEVICES=", StringComparison.Ordinal));
                return $"{Environment.ProcessId}:{native}:{Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES")}";
            },
            Enumerable.Range(0, 24),
            chunksize: 1);
        var byPid = seen.Select(s => s.Split(':')).GroupBy(p => p[0]).ToList();
        Assert.True(byPid.Count >= 4, "maxTasksPerChild should have replaced workers");
        Assert.All(byPid, g => Assert.Single(g.Select(p => p[1]).Distinct()));
        Assert.All(seen, s => Assert.Equal(s.Split(':')[1], "CUDA_VISIBLE_DEVICES=" + s.Split(':')[2]));
        Assert.Equal(["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"], byPid.Select(g => g.First()[1]).Distinct().Order());
        Assert.Null(Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES"));
    }

    [Fact]
    public void Workers_make_no_runtime_diagnostic_files_unless_asked_and_a_killed_one_that_was_asked_leaves_none()
    {
        static string[] DiagnosticFiles(int pid) =>
        [
            .. Directory.EnumerateFileSystemEntries(Path.GetTempPath(), $"dotnet-diagnostic-{pid}-*"),
            .. Directory.EnumerateFileSystemEntries(Path.GetTempPath(), $"clr-debug-pipe-{pid}-*"),
        ];

        using (var pool = Mp.Pool(processes: 1))
        {
            var (pid, setting) = pool.Apply(() => (Environment.ProcessId, Environment.GetEnvironmentVariable("DOTNET_EnableDiagnostics")));
            Assert.Equal("0", setting);
            Assert.Empty(DiagnosticFiles(pid));
        }

        var options = new PoolOptions { WorkerEnvironment = _ => new Dictionary<string, string> { ["DOTNET_EnableDiagnostics"] = "1" } };
        using (var pool = Mp.Pool(processes: 1, options: options))
        {
            int pid = pool.Apply(() => Environment.ProcessId);

            // The runtime opens them before any managed code runs, so a tool could attach to this worker.
            Assert.Equal(3, DiagnosticFiles(pid).Length);
            pool.Terminate();
            pool.Join();
            Assert.Empty(DiagnosticFiles(pid));
        }
    }

    [Fact]
    public void Bad_arguments_are_rejected_clearly()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.Pool(processes: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.Pool(processes: 1, maxTasksPerChild: 0));
        using var pool = Mp.Pool(processes: 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Map(Square, [1], chunksize: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.IMap(Square, [1], chunksize: 0));
        Assert.Throws<ArgumentNullException>(() => pool.Map((Func<int, int>)null!, [1]));
        var stream = new MemoryStream();
        Assert.Throws<System.Runtime.Serialization.SerializationException>(() => pool.Apply(() => stream.Length));
        Assert.Equal(1, pool.Apply(() => 1));

        // An initializer that cannot travel fails the constructor, before any worker exists (the fixture checks).
        var error = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => Mp.Pool(processes: 2, initializer: () => stream.Flush()));
        Assert.Contains("stream", error.Message);
    }
}

public static class Thrower
{
    public static void Fail(string message) => throw new InvalidOperationException(message);
}
