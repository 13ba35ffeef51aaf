namespace Multiprocessing;

/// <summary>Settings of a <see cref="ProcessPool"/> beyond Python's four arguments. Values are checked as they are set.</summary>
/// <remarks>Read when the pool is created and when it starts a worker; not thread-safe to change while in use.</remarks>
public sealed class PoolOptions
{
    private int _maxReadAhead = 10_000;
    private TimeSpan? _taskTimeout;
    private TimeSpan _cancellationGracePeriod = TimeSpan.FromSeconds(2);

    /// <summary>How long one task may run before its worker is killed (and replaced) and the task fails with
    /// <see cref="TimeoutException"/>; null (the default) for no limit. A call's own <c>taskTimeout</c> overrides it.
    /// A chunk of n items may run n times as long. Unlike <c>Get(timeout)</c>, which only stops waiting, this stops
    /// the work.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Zero or negative.</exception>
    public TimeSpan? TaskTimeout
    {
        get => _taskTimeout;
        set => _taskTimeout = value is null || value > TimeSpan.Zero ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "TaskTimeout must be positive, or null for no limit.");
    }

    /// <summary>How long a running task of a cancelled call may take to stop by itself (it sees
    /// <see cref="ProcessPool.CurrentTaskCancellationToken"/> cancelled) before its worker is killed and replaced;
    /// default 2 seconds. <see cref="TimeSpan.Zero"/> kills at once; <see cref="Timeout.InfiniteTimeSpan"/> never
    /// kills, and a task that ignores its token then holds its worker until it returns.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative, other than <see cref="Timeout.InfiniteTimeSpan"/>.</exception>
    public TimeSpan CancellationGracePeriod
    {
        get => _cancellationGracePeriod;
        set => _cancellationGracePeriod = value >= TimeSpan.Zero || value == Timeout.InfiniteTimeSpan ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "CancellationGracePeriod must be zero or more, or Timeout.InfiniteTimeSpan to never kill.");
    }

    /// <summary>
    /// Environment variables for each worker, computed from its index (0 to processes - 1, kept by a worker that
    /// replaces another). They are set before the worker's runtime or any native library starts, so for example
    /// <c>i =&gt; new Dictionary&lt;string, string&gt; { ["CUDA_VISIBLE_DEVICES"] = (i % gpus).ToString() }</c> gives each worker
    /// one GPU.
    /// </summary>
    public Func<int, IReadOnlyDictionary<string, string>>? WorkerEnvironment { get; set; }

    /// <summary>How many input items IMap and IMapUnordered may have taken from their source but not yet handed to
    /// the consumer (default 10,000). Bounds memory for endless inputs.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1.</exception>
    public int MaxReadAhead
    {
        get => _maxReadAhead;
        set => _maxReadAhead = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "MaxReadAhead must be at least 1.");
    }
}

/// <summary>Progress of a map-type call: items done out of the total (null while a lazy input's length is unknown).</summary>
/// <param name="Done">Items completed, successfully or not.</param>
/// <param name="Total">All items of the call, when known.</param>
public readonly record struct MapProgress(long Done, long? Total);

/// <summary>What one worker slot has done so far (summed over the processes that filled it), as mpire reports.</summary>
/// <param name="Index">The slot's index, 0 to processes - 1.</param>
/// <param name="Pid">The process that fills the slot now; null when none does.</param>
/// <param name="TasksCompleted">Tasks (chunks) run.</param>
/// <param name="BusyTime">Time spent running user code.</param>
/// <param name="IdleTime">Time spent waiting for work.</param>
/// <param name="SerializationTime">Time spent decoding arguments and encoding results.</param>
public sealed record WorkerStatistics(int Index, int? Pid, long TasksCompleted, TimeSpan BusyTime, TimeSpan IdleTime, TimeSpan SerializationTime);
