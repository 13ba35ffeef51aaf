using System.Diagnostics;
using Xunit;

namespace Multiprocessing.Tests;

public sealed class SynchronizationTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void Lock_has_Pythons_semantics_in_one_process()
    {
        using var lck = Mp.Lock();
        Assert.False(lck.Locked);
        Assert.True(lck.Acquire());
        Assert.True(lck.Locked);
        Assert.False(lck.TryAcquire());
        Assert.False(lck.Acquire(TimeSpan.Zero));
        Assert.False(lck.Acquire(TimeSpan.FromMilliseconds(50)));
        Assert.False(lck.Acquire(block: false));
        lck.Release();
        Assert.False(lck.Locked);
        Assert.Throws<InvalidOperationException>(lck.Release);
        Assert.Throws<ArgumentOutOfRangeException>(() => lck.Acquire(TimeSpan.FromSeconds(-1)));
        using (lck.Acquire())
        {
            Assert.True(lck.Locked);
        }

        Assert.False(lck.Locked);

        // Any thread may release a Lock, as in Python.
        lck.Acquire();
        var other = new Thread(lck.Release);
        other.Start();
        other.Join();
        Assert.False(lck.Locked);
    }

    [Fact]
    public void An_adaptive_spin_that_keeps_missing_settles_at_its_floor_and_still_tries_the_whole_budget_now_and_then()
    {
        var spin = new Multiprocessing.Synchronization.AdaptiveSpin(1600);
        Assert.Equal(1600, spin.Budget());
        for (int i = 0; i < 10; i++) spin.Learn(spin.Budget(), ended: false);

        // At the floor a sixteenth of the waits spin the whole budget, so two spinners waiting on each other can
        // find their way back from the floor together.
        var budgets = Enumerable.Range(0, 32).Select(_ => spin.Budget()).ToList();
        Assert.Equal(100, budgets.Min());
        Assert.Equal(2, budgets.Count(b => b == 1600));
        Assert.Equal(30, budgets.Count(b => b == 100));

        spin.Learn(1600, ended: true);
        Assert.Equal(1600, spin.Budget());
    }

    [Fact]
    public void A_lock_excludes_ten_processes_from_each_other()
    {
        using var scratch = new Scratch();
        var counter = scratch.File("counter");
        File.WriteAllText(counter, "0");
        using var lck = Mp.Lock();
        var children = Enumerable.Range(0, 10).Select(i => Mp.Process(() =>
        {
            for (int k = 0; k < 20; k++)
            {
                using (lck.Acquire())
                {
                    // A read-modify-write that loses updates unless the lock excludes the others.
                    int n = int.Parse(File.ReadAllText(counter));
                    File.WriteAllText(counter, (n + 1).ToString());
                }
            }
        })).ToList();
        children.ForEach(c => c.Start());
        children.ForEach(c => c.Join(Guard));
        Assert.All(children, c => Assert.Equal(0, c.ExitCode));
        Assert.Equal("200", File.ReadAllText(counter));
        children.ForEach(c => c.Dispose());
    }

    [Fact]
    public void A_lock_held_by_a_child_blocks_the_parent_until_released()
    {
        using var lck = Mp.Lock();
        using var held = Mp.Event();
        using var letGo = Mp.Event();
        using var child = Mp.Process(() =>
        {
            lck.Acquire();
            held.Set();
            letGo.Wait();
            lck.Release();
        });
        child.Start();
        Assert.True(held.Wait(Guard));
        Assert.True(lck.Locked);
        Assert.False(lck.Acquire(TimeSpan.FromMilliseconds(100)));
        letGo.Set();
        Assert.True(lck.Acquire(Guard));
        lck.Release();
        child.Join(Guard);
        Assert.Equal(0, child.ExitCode);
    }

    public static TheoryData<string> Holders => new() { "lock", "rlock", "semaphore" };

    [Theory]
    [MemberData(nameof(Holders))]
    public void When_a_holder_is_killed_the_next_waiter_gets_abandoned_and_holds_it(string kind)
    {
        IProcessLock lck = kind switch
        {
            "lock" => Mp.Lock(),
            "rlock" => Mp.RLock(),
            _ => Mp.Semaphore(1),
        };
        using var _ = lck;
        using var held = Mp.Event();
        using var child = Mp.Process(() =>
        {
            lck.Acquire();
            held.Set();
            Thread.Sleep(Timeout.Infinite);
        });
        child.Start();
        Assert.True(held.Wait(Guard));
        Assert.False(lck.TryAcquire());

        var waiting = Background.Run(() => lck.Acquire(Guard));
        Assert.False(waiting.Join(TimeSpan.FromMilliseconds(100)));
        child.Kill();
        var clock = Stopwatch.StartNew();
        Assert.True(waiting.Join(Guard));
        var abandoned = Assert.IsType<AbandonedLockException>(waiting.Error);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"abandonment took {clock.Elapsed.TotalMilliseconds:F0} ms");
        Assert.Equal(child.Pid, abandoned.Pid);

        // The waiter holds it now: nobody else gets it until it lets go.
        Assert.False(lck.TryAcquire());
        if (kind == "rlock")
        {
            // The waiting thread owns an RLock, so this thread may not release it.
            Assert.Throws<InvalidOperationException>(lck.Release);
            return;
        }

        lck.Release();
        Assert.True(lck.TryAcquire());
        lck.Release();
    }

    [Fact]
    public void RLock_counts_reentry_and_only_its_owner_releases_it()
    {
        using var rlock = Mp.RLock();
        Assert.True(rlock.Acquire());
        Assert.True(rlock.Acquire(TimeSpan.Zero));
        Assert.Equal(2, rlock.RecursionCount);
        Assert.True(rlock.IsOwnedByCurrentThread);

        Exception? fromOther = null;
        bool otherAcquired = true;
        var other = new Thread(() =>
        {
            otherAcquired = rlock.Acquire(TimeSpan.FromMilliseconds(50));
            fromOther = Record.Exception(rlock.Release);
        });
        other.Start();
        other.Join();
        Assert.False(otherAcquired);
        Assert.IsType<InvalidOperationException>(fromOther);

        rlock.Release();
        Assert.True(rlock.Locked);
        rlock.Release();
        Assert.False(rlock.Locked);
        Assert.Throws<InvalidOperationException>(rlock.Release);

        // Another process cannot release it either.
        rlock.Acquire();
        using var child = Mp.Process(() => rlock.Release());
        child.Start();
        child.Join(Guard);
        Assert.Equal(1, child.ExitCode);
        Assert.True(rlock.IsOwnedByCurrentThread);
        rlock.Release();
    }

    [Fact]
    public void Semaphores_count_grow_and_bounded_ones_refuse_over_release()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.Semaphore(-1));
        using var sem = Mp.Semaphore(2);
        Assert.True(sem.Acquire());
        Assert.True(sem.Acquire(TimeSpan.Zero));
        Assert.False(sem.TryAcquire());
        Assert.False(sem.Acquire(TimeSpan.FromMilliseconds(20)));
        Assert.Equal(0, sem.Value);
        sem.Release();
        sem.Release();
        sem.Release();
        Assert.Equal(3, sem.Value);

        using var bounded = Mp.BoundedSemaphore(1);
        Assert.True(bounded.IsBounded);
        Assert.Throws<InvalidOperationException>(bounded.Release);
        bounded.Acquire();
        bounded.Release();
        Assert.Throws<InvalidOperationException>(bounded.Release);
        Assert.Equal(1, bounded.Value);
    }

    [Fact]
    public void A_semaphore_released_by_children_wakes_the_parent()
    {
        using var sem = Mp.Semaphore(0);
        var children = Enumerable.Range(0, 3).Select(_ => Mp.Process(() => sem.Release())).ToList();
        children.ForEach(c => c.Start());
        for (int i = 0; i < 3; i++) Assert.True(sem.Acquire(Guard));
        Assert.False(sem.TryAcquire());
        children.ForEach(c => c.Join(Guard));
        children.ForEach(c => c.Dispose());

        // Children that exited normally took nothing, so nothing is reported abandoned.
        sem.Release();
        Assert.True(sem.Acquire(TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public void Event_wakes_waiters_in_other_processes()
    {
        using var go = Mp.Event();
        using var seen = Mp.Semaphore(0);
        Assert.False(go.IsSet);
        Assert.False(go.Wait(TimeSpan.FromMilliseconds(20)));
        var children = Enumerable.Range(0, 3).Select(_ => Mp.Process(() =>
        {
            if (go.Wait(TimeSpan.FromSeconds(30))) seen.Release();
        })).ToList();
        children.ForEach(c => c.Start());
        go.Set();
        Assert.True(go.IsSet);
        for (int i = 0; i < 3; i++) Assert.True(seen.Acquire(Guard));
        children.ForEach(c => c.Join(Guard));
        children.ForEach(c => c.Dispose());
        go.Clear();
        Assert.False(go.IsSet);
        Assert.False(go.Wait(TimeSpan.Zero));
    }

    [Fact]
    public void Notify_wakes_exactly_n_waiters_across_processes()
    {
        using var cond = Mp.Condition();
        using var sleeping = Mp.Semaphore(0);
        using var woken = Mp.Semaphore(0);
        var children = Enumerable.Range(0, 3).Select(_ => Mp.Process(() =>
        {
            using (cond.Acquire())
            {
                sleeping.Release();
                if (cond.Wait(TimeSpan.FromSeconds(30))) woken.Release();
            }
        })).ToList();
        children.ForEach(c => c.Start());
        for (int i = 0; i < 3; i++) Assert.True(sleeping.Acquire(Guard));

        // Each child released "sleeping" while holding the lock, so taking the lock means it is inside Wait.
        using (cond.Acquire()) cond.Notify();
        Assert.True(woken.Acquire(Guard));
        Assert.False(woken.Acquire(TimeSpan.FromMilliseconds(300)));
        using (cond.Acquire()) cond.NotifyAll();
        Assert.True(woken.Acquire(Guard));
        Assert.True(woken.Acquire(Guard));
        children.ForEach(c => c.Join(Guard));
        Assert.All(children, c => Assert.Equal(0, c.ExitCode));
        children.ForEach(c => c.Dispose());
    }

    [Fact]
    public void Condition_misuse_timeouts_and_WaitFor()
    {
        using var cond = Mp.Condition(Mp.Lock());
        Assert.Throws<InvalidOperationException>(() => cond.Wait(TimeSpan.Zero));
        Assert.Throws<InvalidOperationException>(() => cond.Notify());
        using (cond.Acquire())
        {
            Assert.False(cond.Wait(TimeSpan.FromMilliseconds(30)));
            Assert.True(cond.Lock.Locked);
            Assert.False(cond.WaitFor(() => false, TimeSpan.FromMilliseconds(30)));
        }

        using var flag = Mp.Event();
        using var child = Mp.Process(() =>
        {
            using (cond.Acquire())
            {
                flag.Set();
                cond.NotifyAll();
            }
        });
        using (cond.Acquire())
        {
            child.Start();
            Assert.True(cond.WaitFor(() => flag.IsSet, Guard));
        }

        child.Join(Guard);
        Assert.Equal(0, child.ExitCode);
    }

    [Fact]
    public void Barrier_releases_all_parties_together_and_runs_its_action_once_per_pass()
    {
        using var passes = Mp.Value(0);
        using var barrier = Mp.Barrier(4, () => passes.Value += 1);
        Assert.Equal(4, barrier.Parties);
        using var indexes = Mp.Array<int>(6);
        var children = Enumerable.Range(0, 3).Select(i => Mp.Process(() =>
        {
            for (int pass = 0; pass < 2; pass++) indexes[i * 2 + pass] = barrier.Wait(TimeSpan.FromSeconds(30));
        })).ToList();
        children.ForEach(c => c.Start());
        var mine = new[] { barrier.Wait(Guard), barrier.Wait(Guard) };
        children.ForEach(c => c.Join(Guard));
        Assert.All(children, c => Assert.Equal(0, c.ExitCode));
        var all = indexes.ToArray().Concat(mine).OrderBy(x => x).ToArray();
        Assert.Equal(new[] { 0, 0, 1, 1, 2, 2, 3, 3 }, all);
        Assert.Equal(2, passes.Value);
        Assert.False(barrier.Broken);
        Assert.Equal(0, barrier.NWaiting);
        children.ForEach(c => c.Dispose());
    }

    [Fact]
    public void A_barrier_breaks_on_timeout_abort_and_action_failure_and_Reset_repairs_it()
    {
        using var barrier = Mp.Barrier(2);
        Assert.Throws<BrokenBarrierException>(() => barrier.Wait(TimeSpan.FromMilliseconds(30)));
        Assert.True(barrier.Broken);
        Assert.Throws<BrokenBarrierException>(() => barrier.Wait(TimeSpan.FromSeconds(1)));
        barrier.Reset();
        Assert.False(barrier.Broken);

        var waiting = Background.Run(() => barrier.Wait(Guard));
        Assert.True(Wait.Until(() => barrier.NWaiting == 1, Guard));
        barrier.Abort();
        Assert.True(waiting.Join(Guard));
        Assert.IsType<BrokenBarrierException>(waiting.Error);
        barrier.Reset();

        waiting = Background.Run(() => barrier.Wait(Guard));
        Assert.True(Wait.Until(() => barrier.NWaiting == 1, Guard));
        barrier.Reset();
        Assert.True(waiting.Join(Guard));
        Assert.IsType<BrokenBarrierException>(waiting.Error);
        Assert.False(barrier.Broken);

        using var failing = Mp.Barrier(1, () => throw new FormatException("action failed"));
        Assert.Throws<FormatException>(() => failing.Wait(Guard));
        Assert.True(failing.Broken);
    }

    [Fact]
    public void A_party_that_dies_breaks_the_barrier_for_the_others()
    {
        using var barrier = Mp.Barrier(3);
        using var attached = Mp.Event();
        using var child = Mp.Process(() =>
        {
            // Receiving the barrier makes this process one of its users.
            if (barrier.Parties == 3) attached.Set();
            Thread.Sleep(Timeout.Infinite);
        });
        child.Start();
        Assert.True(attached.Wait(Guard));
        var waiting = Background.Run(() => barrier.Wait(Guard));
        Assert.True(Wait.Until(() => barrier.NWaiting == 1, Guard));
        child.Kill();
        var clock = Stopwatch.StartNew();
        Assert.True(waiting.Join(Guard));
        Assert.IsType<BrokenBarrierException>(waiting.Error);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"breaking took {clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    [Fact]
    public async Task Async_twins_wait_without_blocking_and_honour_cancellation()
    {
        using var lck = Mp.Lock();
        using var ev = Mp.Event();
        using var sem = Mp.Semaphore(0);
        lck.Acquire();
        var acquiring = lck.AcquireAsync(TimeSpan.FromSeconds(30));
        Assert.False(acquiring.IsCompleted);
        using var child = Mp.Process(() =>
        {
            lck.Release();
            ev.Set();
        });
        child.Start();
        Assert.True(await acquiring.WaitAsync(Guard));
        await ev.WaitAsync().WaitAsync(Guard);
        lck.Release();
        using (await lck.AcquireAsync())
        {
            Assert.True(lck.Locked);
        }

        using var cts = new CancellationTokenSource();
        var semWait = sem.AcquireAsync(cts.Token);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => semWait.WaitAsync(Guard));
        Assert.False(await sem.AcquireAsync(TimeSpan.FromMilliseconds(20)));
        sem.Release();
        using (await sem.AcquireAsync())
        {
            Assert.Equal(0, sem.Value);
        }

        child.Join(Guard);
    }

    [Fact]
    public void Primitives_travel_to_pool_tasks()
    {
        using var lck = Mp.Lock();
        using var sem = Mp.BoundedSemaphore(2);
        using var ev = Mp.Event();
        ev.Set();
        using var pool = Mp.Pool(2);
        var results = pool.Map(i =>
        {
            using (lck.Acquire())
            using (sem.Acquire())
            {
                return ev.Wait(TimeSpan.Zero) ? i * 2 : -1;
            }
        }, Enumerable.Range(0, 40), chunksize: 1);
        Assert.Equal(Enumerable.Range(0, 40).Select(i => i * 2), results);
        Assert.False(lck.Locked);
        Assert.Equal(2, sem.Value);
        pool.Close();
        pool.Join();
    }

    [Fact]
    public void A_primitive_created_in_a_worker_works_in_the_parent()
    {
        using var pool = Mp.Pool(1);
        using var lck = pool.Apply(() =>
        {
            var made = Mp.Lock();
            made.Acquire();
            return made;
        });
        Assert.True(lck.Locked);
        lck.Release();
        Assert.True(lck.TryAcquire());
        Assert.True(pool.Apply(() => lck.Locked));
        lck.Release();
        pool.Close();
        pool.Join();
    }

    [Fact]
    public void Nothing_of_a_primitive_is_left_once_every_user_has_disposed_it()
    {
        int before = MemfdCount();
        var shm = Directory.GetFiles("/dev/shm").Length;
        var lck = Mp.Lock();
        var cond = Mp.Condition();
        var barrier = Mp.Barrier(2);
        Assert.True(MemfdCount() >= before + 4);
        using (var child = Mp.Process(() => { lck.Acquire(); lck.Release(); barrier.Abort(); }))
        {
            child.Start();
            child.Join(Guard);
            Assert.Equal(0, child.ExitCode);
        }

        Assert.True(barrier.Broken);
        lck.Dispose();
        cond.Lock.Dispose();
        cond.Dispose();
        barrier.Dispose();
        Assert.Equal(before, MemfdCount());
        Assert.Equal(shm, Directory.GetFiles("/dev/shm").Length);
        Assert.Throws<ObjectDisposedException>(() => lck.Acquire(TimeSpan.Zero));
    }

    private static int MemfdCount() =>
        new DirectoryInfo("/proc/self/fd").GetFileSystemInfos().Count(f => f.LinkTarget?.StartsWith("/memfd:mp-", StringComparison.Ordinal) == true);
}

/// <summary>Runs a blocking call on its own thread, so a test can watch it block and then see how it ended.</summary>
public sealed class Background
{
    private readonly Thread _thread;

    private Background(Func<object?> body)
    {
        _thread = new Thread(() =>
        {
            try
            {
                Result = body();
            }
            catch (Exception ex)
            {
                Error = ex;
            }
        }) { IsBackground = true };
        _thread.Start();
    }

    public object? Result { get; private set; }

    public Exception? Error { get; private set; }

    public static Background Run<T>(Func<T> body) => new(() => body());

    public bool Join(TimeSpan timeout) => _thread.Join(timeout);
}
