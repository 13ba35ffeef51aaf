using System.Diagnostics;
using Multiprocessing.Platform;

namespace Multiprocessing.Synchronization;

/// <summary>
/// The one wait loop every primitive uses: sleep on a futex word in slices, re-check the condition after every
/// wake, and between slices look for dead holders. Waking is done by bumping the word and FUTEX_WAKE, so a waiter
/// that read the word before a change can never sleep through it.
/// </summary>
internal static unsafe class Blocking
{
    /// <summary>How often a sleeping waiter looks for a holder that died; bounds how late abandonment is noticed.</summary>
    internal static readonly TimeSpan CheckInterval = TimeSpan.FromMilliseconds(100);

    private static readonly long CheckIntervalTicks = (long)(CheckInterval.TotalSeconds * Stopwatch.Frequency);

    internal static readonly int Pid = Environment.ProcessId;

    /// <summary>Who "I" am for ownership: this process and this managed thread.</summary>
    internal static long OwnerId => ((long)Pid << 32) | (uint)Environment.CurrentManagedThreadId;

    internal static int PidOf(long owner) => (int)(owner >> 32);

    /// <summary>Converts a Python-style timeout (null waits forever) to a deadline in Stopwatch ticks.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The timeout is negative.</exception>
    internal static long Deadline(TimeSpan? timeout)
    {
        if (timeout is null) return long.MaxValue;
        var t = timeout.Value;
        if (t == Timeout.InfiniteTimeSpan) return long.MaxValue;
        if (t < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), t, "a timeout cannot be negative; pass null to wait forever");
        if (t.TotalDays > 10_000) return long.MaxValue;
        return Stopwatch.GetTimestamp() + (long)(t.TotalSeconds * Stopwatch.Frequency);
    }

    /// <summary>Python's <c>wait_for</c>: re-checks the predicate after each wait until it holds or time runs out.</summary>
    internal static bool WaitFor(Func<bool> predicate, TimeSpan? timeout, Func<TimeSpan?, bool> wait)
    {
        long deadline = Deadline(timeout);
        bool result = predicate();
        while (!result)
        {
            var remaining = Remaining(deadline);
            if (remaining != Timeout.InfiniteTimeSpan && remaining <= TimeSpan.Zero) break;
            wait(remaining == Timeout.InfiniteTimeSpan ? null : remaining);
            result = predicate();
        }

        return result;
    }

    internal static TimeSpan Remaining(long deadline) =>
        deadline == long.MaxValue ? Timeout.InfiniteTimeSpan : Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), deadline);

    /// <summary>Waits until <paramref name="tryTake"/> succeeds (true) or the deadline passes (false).</summary>
    /// <param name="seq">The futex word that wakers bump.</param>
    /// <param name="waiters">Counts sleepers, so that wakers skip the syscall when there are none.</param>
    /// <param name="deadline">From <see cref="Deadline"/>.</param>
    /// <param name="tryTake">Attempts the operation; must not block.</param>
    /// <param name="check">Runs every <see cref="CheckInterval"/> while waiting (dead-holder detection); may throw.</param>
    /// <param name="cancellationToken">Observed between slices; cancelling bumps nothing by itself, so the async
    /// twins register a wake on the word.</param>
    /// <param name="wakePending">The flag <see cref="WakeOne"/> sets, cleared whenever this waiter wakes.</param>
    internal static bool Wait(int* seq, int* waiters, long deadline, Func<bool> tryTake, Action? check, CancellationToken cancellationToken = default, int* wakePending = null)
    {
        Interlocked.Increment(ref *waiters);
        try
        {
            long nextCheck = Stopwatch.GetTimestamp() + CheckIntervalTicks;
            while (true)
            {
                int observed = Volatile.Read(ref *seq);
                if (tryTake()) return true;
                cancellationToken.ThrowIfCancellationRequested();
                long now = Stopwatch.GetTimestamp();
                if (now >= deadline) return false;
                if (check is not null && now >= nextCheck)
                {
                    check();
                    nextCheck = now + CheckIntervalTicks;
                    continue;
                }

                // Without a deadline or a check, wake once a second anyway: a wake lost to a killed waker costs a
                // second, not forever.
                long wakeAt = Math.Min(deadline, check is null ? long.MaxValue : nextCheck);
                var slice = wakeAt == long.MaxValue ? TimeSpan.FromSeconds(1) : Stopwatch.GetElapsedTime(now, wakeAt);
                OsShared.FutexWait(seq, observed, slice);
                if (wakePending != null) Volatile.Write(ref *wakePending, 0);
            }
        }
        finally
        {
            Interlocked.Decrement(ref *waiters);

            // A wake meant for this waiter may still be marked pending; clearing it only costs a later waker a
            // syscall, while leaving it set would make wakers skip a sleeper.
            if (wakePending != null) Volatile.Write(ref *wakePending, 0);
        }
    }

    /// <summary>Wakes sleepers after a state change made with a full fence (an Interlocked operation).</summary>
    internal static void Wake(int* seq, int* waiters, int count)
    {
        if (Volatile.Read(ref *waiters) == 0) return;
        Interlocked.Increment(ref *seq);
        OsShared.FutexWake(seq, count);
    }

    /// <summary>Wakes one sleeper unless a wake is already on its way: a lock released and retaken in a tight loop
    /// while another process sleeps on it would otherwise pay a syscall on every release.</summary>
    internal static void WakeOne(int* seq, int* waiters, int* wakePending)
    {
        if (Volatile.Read(ref *waiters) == 0) return;
        if (Interlocked.Exchange(ref *wakePending, 1) != 0) return;
        Interlocked.Increment(ref *seq);
        OsShared.FutexWake(seq, 1);
    }

    /// <summary>Wakes everyone so they re-check their condition (cancellation, abort).</summary>
    internal static void Nudge(int* seq)
    {
        Interlocked.Increment(ref *seq);
        OsShared.FutexWake(seq, int.MaxValue);
    }

    /// <summary>Spins briefly: a holder on another core usually lets go within a few hundred nanoseconds, far
    /// sooner than a futex round trip.</summary>
    internal static bool Spin(Func<bool> tryTake)
    {
        if (Environment.ProcessorCount == 1) return false;
        for (int i = 0; i < 100; i++)
        {
            Thread.SpinWait(8 << Math.Min(i, 3));
            if (tryTake()) return true;
        }

        return false;
    }

    /// <summary>Runs a blocking wait on a dedicated thread, so an async caller never ties up a thread-pool
    /// thread; cancellation nudges the futex word so the waiter notices at once.</summary>
    internal static Task<T> OffThread<T>(Func<CancellationToken, T> wait, Action nudge, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<T>(cancellationToken);
        var completion = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            using var registration = cancellationToken.Register(nudge);
            try
            {
                completion.TrySetResult(wait(cancellationToken));
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                completion.TrySetCanceled(cancellationToken);
            }
            catch (Exception ex)
            {
                completion.TrySetException(ex);
            }
        })
        {
            IsBackground = true,
            Name = "Multiprocessing async wait",
        };
        thread.Start();
        return completion.Task;
    }
}

/// <summary>
/// A spin budget that learns: a wait that spinning ended doubles it (up to 50 µs by default), a wait that had to
/// sleep anyway halves it (down to a few microseconds). Spinning pays when the other process answers within
/// microseconds on another core; on a loaded machine the spinner takes the very core the answering process needs,
/// so there it must give up almost at once, as a plain blocking wait would. At the floor, every sixteenth wait spins
/// the whole budget again: two spinners that wait on each other (a caller and a worker) would otherwise both settle
/// at the floor, each too short to catch the other, and never find out that the load has gone.
/// </summary>
/// <remarks>Per object, per process; races on the budget only blur the heuristic.</remarks>
internal sealed class AdaptiveSpin
{
    private static readonly long DefaultMaxTicks = Stopwatch.Frequency / 20_000;
    private readonly long _maxTicks;
    private readonly long _minTicks;
    private long _budget;
    private int _atFloor;

    /// <summary>A budget of at most 50 µs.</summary>
    internal AdaptiveSpin()
        : this(DefaultMaxTicks)
    {
    }

    /// <summary>A budget of at most <paramref name="maxTicks"/> Stopwatch ticks.</summary>
    internal AdaptiveSpin(long maxTicks)
    {
        _maxTicks = maxTicks;
        _minTicks = maxTicks / 16;
        _budget = maxTicks;
    }

    /// <summary>Whether spinning can help at all: with one CPU the other side cannot run while this one spins.</summary>
    private static bool Useful => Environment.ProcessorCount > 1;

    /// <summary>How long the next wait may spin, in Stopwatch ticks.</summary>
    internal long Budget()
    {
        long budget = Volatile.Read(ref _budget);
        if (budget <= _minTicks && (Interlocked.Increment(ref _atFloor) & 15) == 0) return _maxTicks;
        return budget;
    }

    /// <summary>Learns from a wait that spun <paramref name="budget"/>: <paramref name="ended"/> when spinning ended it.</summary>
    internal void Learn(long budget, bool ended) =>
        Volatile.Write(ref _budget, ended ? Math.Min(_maxTicks, budget * 2) : Math.Max(_minTicks, Math.Min(budget, Volatile.Read(ref _budget)) / 2));

    /// <summary>Spins while the budget lasts; true once <paramref name="ready"/> holds.</summary>
    internal bool Spin<TState>(Func<TState, bool> ready, TState state)
    {
        if (!Useful) return false;
        long budget = Budget();
        long until = Stopwatch.GetTimestamp() + budget;
        while (true)
        {
            Thread.SpinWait(20);
            if (ready(state))
            {
                Learn(budget, ended: true);
                return true;
            }

            if (Stopwatch.GetTimestamp() >= until) break;
        }

        Learn(budget, ended: false);
        return false;
    }
}

/// <summary>Runs per-process cleanup of shared primitives when this process exits normally (a killed process
/// runs nothing, which is exactly what the dead-holder checks are for).</summary>
internal static class ExitHooks
{
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<object, Action> Hooks = new();
    private static int _installed;

    internal static void Register(object owner, Action hook)
    {
        if (Interlocked.Exchange(ref _installed, 1) == 0) AppDomain.CurrentDomain.ProcessExit += (_, _) => RunAll();
        Hooks.AddOrUpdate(owner, hook);
    }

    internal static void Unregister(object owner) => Hooks.Remove(owner);

    private static void RunAll()
    {
        foreach (var (_, hook) in Hooks) hook();
    }
}
