using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;
using Multiprocessing.Platform;
using Multiprocessing.Pool;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing;

/// <summary>
/// A pool of worker processes, Python's <c>multiprocessing.Pool</c>: Map, StarMap, IMap, IMapUnordered, Apply and their
/// Async forms, with Python's semantics. Created by <see cref="Mp.Pool"/>.
/// </summary>
/// <remarks>
/// Thread-safe: any thread may submit work. Each worker holds several chunks at once and answers them in one write,
/// so tiny tasks cost microseconds. Callbacks, error callbacks and progress reports run in this process on one
/// result thread, in completion order, as Python's do; one that throws is logged and the pool goes on.
/// <c>using</c> ends the pool as Python's <c>with</c> does: <see cref="Terminate"/>, then <see cref="Join"/>.
/// Call <see cref="Close"/> and <see cref="Join"/> first to let queued work finish.
/// </remarks>
public sealed class ProcessPool : IDisposable, IAsyncDisposable
{
    private static int _workerCounter;
    private static int _callCounter;

    private readonly object _gate = new();
    private readonly PoolOptions _options;
    private readonly Action? _initializer;
    private readonly int? _maxTasksPerChild;
    private readonly WorkerHandle?[] _slots;
    private readonly SlotTotals[] _totals;
    private readonly List<WorkerHandle> _workers = [];
    private readonly ChunkQueue _pending = new();
    private readonly HashSet<PoolCall> _calls = [];
    private readonly TaskCompletionSource _allExited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lazy<ResultThread> _resultThread;

    /// <summary>How long a caller waiting for a result spins first: an Apply answered within microseconds then
    /// skips the sleep and wake-up of its thread.</summary>
    private readonly Multiprocessing.Synchronization.AdaptiveSpin _waitSpin = new();

    // Up to 200 µs: long enough to cover waking a worker that slept, so that a caller reading its own answers keeps
    // doing so, and the worker, answered at once, learns to stay awake for the next task.
    private readonly Multiprocessing.Synchronization.AdaptiveSpin _readSpin = new(System.Diagnostics.Stopwatch.Frequency / 5_000);
    private State _state = State.Running;

    internal ProcessPool(int? processes, Action? initializer, int? maxTasksPerChild, PoolOptions? options)
    {
        if (processes is < 1) throw new ArgumentOutOfRangeException(nameof(processes), processes, "Number of processes must be at least 1.");
        if (maxTasksPerChild is < 1) throw new ArgumentOutOfRangeException(nameof(maxTasksPerChild), maxTasksPerChild, "maxTasksPerChild must be at least 1, or null for no limit.");
        Processes = processes ?? Mp.CpuCount;
        _initializer = initializer;
        _maxTasksPerChild = maxTasksPerChild;
        _options = options ?? new PoolOptions();
        _slots = new WorkerHandle?[Processes];
        _totals = new SlotTotals[Processes];
        _resultThread = new(() => new ResultThread(ProcessRuntime.Logger));
        // Under Prespawn, as many booted runtimes as this pool has workers wait for the next pool (or for this
        // one's replacements); they are launched once its workers are ready.
        if (Mp.StartMethod == StartMethod.Prespawn) Multiprocessing.Processes.Launcher.Reserve(Processes);
        lock (_gate)
        {
            try
            {
                for (int i = 0; i < Processes; i++) StartWorker(i);
            }
            catch
            {
                _state = State.Terminated;
                foreach (var worker in _workers) worker.Process.Kill();
                throw;
            }
        }
    }

    /// <summary>Set when the pool stopped because it can no longer run tasks (see <see cref="Break"/>).</summary>
    private PoolBrokenException? _broken;

    private enum State
    {
        Running,
        Closed,
        Terminated,
    }

    /// <summary>The number of worker processes.</summary>
    public int Processes { get; }

    /// <summary>
    /// Inside a pool task: the token of the task's call, cancelled when the caller cancels the call, so the task can
    /// stop early (by returning or throwing <see cref="OperationCanceledException"/>). A task that is still running
    /// <see cref="PoolOptions.CancellationGracePeriod"/> later is killed with its worker. Outside a pool task,
    /// <see cref="CancellationToken.None"/>. The overloads whose function takes a <see cref="CancellationToken"/>
    /// pass this token.
    /// </summary>
    /// <remarks>A worker runs one task at a time, so any thread of the worker process reads the running task's token.
    /// Callbacks registered on it run on a watcher thread of the worker.</remarks>
    public static CancellationToken CurrentTaskCancellationToken => PoolWorker.CurrentToken;

    /// <summary>Applies <paramref name="func"/> to every item and returns the results in order (Python's <c>map</c>).
    /// The input is read whole first, as Python does; use <see cref="IMap{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/> for lazy input.</summary>
    /// <param name="func">The function; it and what it captures travel to the workers once per call.</param>
    /// <param name="iterable">The items.</param>
    /// <param name="chunksize">Items per task; by default Python's rule, about len / (4 x processes).</param>
    /// <param name="progress">Receives (done, total) on the result thread as chunks complete.</param>
    /// <param name="taskTimeout">How long one task may run before its worker is killed and it fails with
    /// <see cref="TimeoutException"/>; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the call: its tasks that have not started are dropped at once, running
    /// ones see <see cref="CurrentTaskCancellationToken"/> and are killed after the grace period.</param>
    /// <returns>The results, in input order.</returns>
    /// <exception cref="RemoteException">A task threw; the earliest failing item's exception is raised after the
    /// other tasks finished.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    /// <exception cref="System.Runtime.Serialization.SerializationException"><paramref name="func"/> captures something that cannot travel.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chunksize"/> is less than 1.</exception>
    public List<TResult> Map<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int? chunksize = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        MapAsync(func, iterable, chunksize, progress: progress, taskTimeout: taskTimeout, cancellationToken: cancellationToken).Get();

    /// <summary><see cref="Map{T, TResult}(Func{T, TResult}, IEnumerable{T}, int?, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token (<see cref="CurrentTaskCancellationToken"/>).</summary>
    /// <exception cref="RemoteException">A task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public List<TResult> Map<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int? chunksize = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Map(WithToken(func), iterable, chunksize, progress, taskTimeout, cancellationToken);

    /// <summary>Starts a <see cref="Map{T, TResult}(Func{T, TResult}, IEnumerable{T}, int?, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// and returns at once (Python's <c>map_async</c>).</summary>
    /// <param name="func">The function.</param>
    /// <param name="iterable">The items.</param>
    /// <param name="chunksize">Items per task; by default Python's rule.</param>
    /// <param name="callback">Runs on the result thread with the results, before the result is ready.</param>
    /// <param name="errorCallback">Runs on the result thread with the failure (or the
    /// <see cref="OperationCanceledException"/> of a cancellation), before the result is ready.</param>
    /// <param name="progress">Receives (done, total) on the result thread.</param>
    /// <param name="taskTimeout">How long one task may run; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the call: the result is cancelled at once, tasks that have not started
    /// are dropped, running ones see <see cref="CurrentTaskCancellationToken"/> and are killed after the grace period.</param>
    /// <returns>The pending result; awaitable.</returns>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    /// <exception cref="System.Runtime.Serialization.SerializationException"><paramref name="func"/> captures something that cannot travel.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chunksize"/> is less than 1.</exception>
    public AsyncResult<List<TResult>> MapAsync<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int? chunksize = null,
        Action<List<TResult>>? callback = null, Action<Exception>? errorCallback = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(func);
        ArgumentNullException.ThrowIfNull(iterable);
        if (chunksize is < 1) throw new ArgumentOutOfRangeException(nameof(chunksize), chunksize, "Chunksize must be 1 or more.");
        var items = iterable.ToArray();
        int size = chunksize ?? DefaultChunksize(items.Length);
        var function = DelegateSerializer.Serialize(func);
        var result = new AsyncResult<List<TResult>>(_waitSpin);
        MapCall<T, TResult> call;
        lock (_gate)
        {
            ThrowIfNotRunning();
            call = new MapCall<T, TResult>(this, NextCallId(), NextCallId(), function, items, size, result, callback, errorCallback, progress);
            if (cancellationToken.IsCancellationRequested)
            {
                call.Cancel(Cancelled(cancellationToken));
                return result;
            }

            if (call.ChunkCount == 0)
            {
                call.FinishIfEmpty();
                return result;
            }

            Admit(call, taskTimeout, cancellationToken);
            for (int chunk = 0; chunk < call.ChunkCount; chunk++) Enqueue(call, chunk);
            Pump();
        }

        Watch(call, cancellationToken);
        return result;
    }

    /// <summary><see cref="MapAsync{T, TResult}(Func{T, TResult}, IEnumerable{T}, int?, Action{List{TResult}}?, Action{Exception}?, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public AsyncResult<List<TResult>> MapAsync<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int? chunksize = null,
        Action<List<TResult>>? callback = null, Action<Exception>? errorCallback = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default) =>
        MapAsync(WithToken(func), iterable, chunksize, callback, errorCallback, progress, taskTimeout, cancellationToken);

    /// <summary>Map over tuples, unpacking each into the function's arguments (Python's <c>starmap</c>).</summary>
    /// <exception cref="RemoteException">A task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public List<TResult> StarMap<T1, T2, TResult>(Func<T1, T2, TResult> func, IEnumerable<(T1, T2)> iterable, int? chunksize = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Map(Star(func), iterable, chunksize, progress, taskTimeout, cancellationToken);

    /// <summary>Map over 3-tuples, unpacking each into the function's arguments (Python's <c>starmap</c>).</summary>
    /// <exception cref="RemoteException">A task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public List<TResult> StarMap<T1, T2, T3, TResult>(Func<T1, T2, T3, TResult> func, IEnumerable<(T1, T2, T3)> iterable, int? chunksize = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Map(Star(func), iterable, chunksize, progress, taskTimeout, cancellationToken);

    /// <summary>Starts a <see cref="StarMap{T1, T2, TResult}"/> and returns at once (Python's <c>starmap_async</c>).</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public AsyncResult<List<TResult>> StarMapAsync<T1, T2, TResult>(Func<T1, T2, TResult> func, IEnumerable<(T1, T2)> iterable, int? chunksize = null,
        Action<List<TResult>>? callback = null, Action<Exception>? errorCallback = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default) =>
        MapAsync(Star(func), iterable, chunksize, callback, errorCallback, progress, taskTimeout, cancellationToken);

    /// <summary>Starts a <see cref="StarMap{T1, T2, T3, TResult}"/> and returns at once (Python's <c>starmap_async</c>).</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public AsyncResult<List<TResult>> StarMapAsync<T1, T2, T3, TResult>(Func<T1, T2, T3, TResult> func, IEnumerable<(T1, T2, T3)> iterable, int? chunksize = null,
        Action<List<TResult>>? callback = null, Action<Exception>? errorCallback = null, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default) =>
        MapAsync(Star(func), iterable, chunksize, callback, errorCallback, progress, taskTimeout, cancellationToken);

    /// <summary>Lazy, ordered map (Python's <c>imap</c>): results arrive in input order as the consumer asks for them. The
    /// input is read lazily, at most <see cref="PoolOptions.MaxReadAhead"/> items ahead, so an endless sequence works.</summary>
    /// <param name="func">The function.</param>
    /// <param name="iterable">The items; read on the consuming thread.</param>
    /// <param name="chunksize">Items per task (default 1, as Python).</param>
    /// <param name="progress">Receives (done, total) on the result thread.</param>
    /// <param name="taskTimeout">How long one task may run; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the call: the next step of the enumeration throws
    /// <see cref="OperationCanceledException"/>, tasks that have not started are dropped, running ones see
    /// <see cref="CurrentTaskCancellationToken"/> and are killed after the grace period.</param>
    /// <returns>The results; a failed item throws its <see cref="RemoteException"/> when reached. If reading
    /// <paramref name="iterable"/> throws, the whole chunks read before it still run, and the enumeration ends with
    /// that exception after their results, as Python's does.</returns>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chunksize"/> is less than 1.</exception>
    public IEnumerable<TResult> IMap<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(func, iterable, chunksize, ordered: true, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMap{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IEnumerable<TResult> IMap<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(WithToken(func), iterable, chunksize, ordered: true, progress, taskTimeout, cancellationToken);

    /// <summary>Lazy map in completion order (Python's <c>imap_unordered</c>).</summary>
    /// <param name="func">The function.</param>
    /// <param name="iterable">The items; read on the consuming thread.</param>
    /// <param name="chunksize">Items per task (default 1).</param>
    /// <param name="progress">Receives (done, total) on the result thread.</param>
    /// <param name="taskTimeout">How long one task may run; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the call, as for <see cref="IMap{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>.</param>
    /// <returns>The results as they complete. If reading <paramref name="iterable"/> throws, the enumeration ends with
    /// that exception after the results of the whole chunks read before it.</returns>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="chunksize"/> is less than 1.</exception>
    public IEnumerable<TResult> IMapUnordered<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(func, iterable, chunksize, ordered: false, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMapUnordered{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IEnumerable<TResult> IMapUnordered<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(WithToken(func), iterable, chunksize, ordered: false, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMap{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// as an async stream: waiting for results blocks no thread. <paramref name="cancellationToken"/>, and a token
    /// given to <c>WithCancellation</c>, cancel the call.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IAsyncEnumerable<TResult> IMapAsync<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(func, iterable, chunksize, ordered: true, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMapAsync{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IAsyncEnumerable<TResult> IMapAsync<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(WithToken(func), iterable, chunksize, ordered: true, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMapUnordered{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// as an async stream; <paramref name="cancellationToken"/> and <c>WithCancellation</c> cancel the call.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IAsyncEnumerable<TResult> IMapUnorderedAsync<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(func, iterable, chunksize, ordered: false, progress, taskTimeout, cancellationToken);

    /// <summary><see cref="IMapUnorderedAsync{T, TResult}(Func{T, TResult}, IEnumerable{T}, int, IProgress{MapProgress}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public IAsyncEnumerable<TResult> IMapUnorderedAsync<T, TResult>(Func<T, CancellationToken, TResult> func, IEnumerable<T> iterable, int chunksize = 1, IProgress<MapProgress>? progress = null, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Stream(WithToken(func), iterable, chunksize, ordered: false, progress, taskTimeout, cancellationToken);

    /// <summary>Runs <paramref name="func"/> in one worker and returns its result (Python's <c>apply</c>).</summary>
    /// <param name="func">The function, usually a lambda carrying its arguments: <c>pool.Apply(() =&gt; F(20))</c>.</param>
    /// <param name="taskTimeout">How long the task may run; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the task: dropped if it has not started, else it sees
    /// <see cref="CurrentTaskCancellationToken"/> and is killed after the grace period.</param>
    /// <returns>The result.</returns>
    /// <exception cref="RemoteException">The task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public TResult Apply<TResult>(Func<TResult> func, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        ApplyAsync(func, taskTimeout: taskTimeout, cancellationToken: cancellationToken).Get();

    /// <summary>Runs <paramref name="func"/> in one worker and returns its result; <paramref name="cancellationToken"/>
    /// cancels the task.</summary>
    /// <param name="func">The function.</param>
    /// <param name="cancellationToken">Cancels the task.</param>
    /// <returns>The result.</returns>
    /// <exception cref="RemoteException">The task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public TResult Apply<TResult>(Func<TResult> func, CancellationToken cancellationToken) => Apply(func, null, cancellationToken);

    /// <summary><see cref="Apply{TResult}(Func{TResult}, TimeSpan?, CancellationToken)"/> with a function that takes
    /// its task's cancellation token.</summary>
    /// <exception cref="RemoteException">The task threw.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public TResult Apply<TResult>(Func<CancellationToken, TResult> func, TimeSpan? taskTimeout = null, CancellationToken cancellationToken = default) =>
        Apply(WithToken(func), taskTimeout, cancellationToken);

    /// <summary>Starts <paramref name="func"/> in one worker and returns at once (Python's <c>apply_async</c>).</summary>
    /// <param name="func">The function.</param>
    /// <param name="callback">Runs on the result thread with the result, before the result is ready.</param>
    /// <param name="errorCallback">Runs on the result thread with the failure (or the cancellation).</param>
    /// <param name="taskTimeout">How long the task may run; null uses <see cref="PoolOptions.TaskTimeout"/>.</param>
    /// <param name="cancellationToken">Cancels the task: the result is cancelled at once; the task is dropped if it
    /// has not started, else it sees <see cref="CurrentTaskCancellationToken"/> and is killed after the grace period.</param>
    /// <returns>The pending result; awaitable.</returns>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    /// <exception cref="System.Runtime.Serialization.SerializationException"><paramref name="func"/> captures something that cannot travel.</exception>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public AsyncResult<TResult> ApplyAsync<TResult>(Func<TResult> func, Action<TResult>? callback = null, Action<Exception>? errorCallback = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(func);

        // A lambda's shape goes to each worker once; a task carries only what its closure holds.
        var template = DelegateSerializer.TemplateOf(func);
        var function = template is null ? DelegateSerializer.Serialize(func) : DelegateSerializer.SerializeState(func, template);
        var result = new AsyncResult<TResult>(_waitSpin);
        ApplyCall<TResult> call;
        lock (_gate)
        {
            ThrowIfNotRunning();
            call = new ApplyCall<TResult>(this, NextCallId(), NextCallId(), function, result, callback, errorCallback) { Template = template };
            result.Assist = call;
            if (cancellationToken.IsCancellationRequested)
            {
                call.Cancel(Cancelled(cancellationToken));
                return result;
            }

            Admit(call, taskTimeout, cancellationToken);
            Enqueue(call, 0);
            Pump();
        }

        Watch(call, cancellationToken);
        return result;
    }

    /// <summary><see cref="ApplyAsync{TResult}(Func{TResult}, Action{TResult}?, Action{Exception}?, TimeSpan?, CancellationToken)"/>
    /// with a function that takes its task's cancellation token.</summary>
    /// <exception cref="InvalidOperationException">The pool is closed or terminated.</exception>
    /// <exception cref="PoolBrokenException">The pool stopped: a worker's initializer failed, or no worker was left and none could start.</exception>
    public AsyncResult<TResult> ApplyAsync<TResult>(Func<CancellationToken, TResult> func, Action<TResult>? callback = null, Action<Exception>? errorCallback = null, TimeSpan? taskTimeout = null,
        CancellationToken cancellationToken = default) =>
        ApplyAsync(WithToken(func), callback, errorCallback, taskTimeout, cancellationToken);

    /// <summary>What each worker slot has done so far.</summary>
    /// <returns>One entry per slot.</returns>
    public IReadOnlyList<WorkerStatistics> GetWorkerStatistics()
    {
        lock (_gate)
        {
            var result = new WorkerStatistics[Processes];
            for (int i = 0; i < Processes; i++)
            {
                var totals = _totals[i];
                long tasks = totals.Tasks, busy = totals.Busy, idle = totals.Idle, serialize = totals.Serialize;
                if (_slots[i] is { } live)
                {
                    tasks += live.Tasks;
                    busy += live.BusyTicks;
                    idle += live.IdleTicks;
                    serialize += live.SerializeTicks;
                }

                result[i] = new WorkerStatistics(i, _slots[i]?.Process.Pid, tasks, Ticks(busy), Ticks(idle), Ticks(serialize));
            }

            return result;
        }
    }

    /// <summary>Accepts no more work; queued and running tasks finish, then the workers exit (Python's <c>close</c>).</summary>
    public void Close()
    {
        lock (_gate)
        {
            if (_state != State.Running) return;
            _state = State.Closed;
            RetireIfDrained();
        }
    }

    /// <summary>Kills the workers now; every pending result fails with <see cref="PoolTerminatedException"/>
    /// (Python's <c>terminate</c>). Returns without waiting for them to be reaped; see <see cref="Join"/>.</summary>
    public void Terminate() => Stop(new PoolTerminatedException());

    /// <summary>Terminate, with the error that pending results fail with.</summary>
    private void Stop(MultiprocessingException error)
    {
        List<PoolCall> calls;
        lock (_gate)
        {
            if (_state == State.Terminated) return;
            _state = State.Terminated;
            _watchdog?.Dispose();
            _watchdog = null;
            _watching = false;
            _timedCalls = 0;
            _cancelledCalls = 0;
            calls = [.. _calls];
            _calls.Clear();
            _pending.Clear();
            foreach (var worker in _workers)
            {
                worker.InFlight.Clear();
                worker.Process.Kill();
            }

            foreach (var call in calls)
            {
                call.Registration.Unregister();

                // A cancelled call has reported its cancellation already.
                if (!call.Cancelled) call.Abort(error);
            }

            CompleteIfAllExited();
        }
    }

    /// <summary>Waits for the workers to exit (Python's <c>join</c>).</summary>
    /// <exception cref="InvalidOperationException">The pool is still running: call <see cref="Close"/> or
    /// <see cref="Terminate"/> first.</exception>
    public void Join()
    {
        ThrowIfRunning();
        _allExited.Task.Wait();
    }

    /// <summary>Waits for the workers to exit without blocking a thread.</summary>
    /// <exception cref="InvalidOperationException">The pool is still running.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public Task JoinAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfRunning();
        return _allExited.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Terminates the pool and waits for its workers, as Python's <c>with</c> block does. Never throws.</summary>
    public void Dispose()
    {
        Terminate();
        _allExited.Task.Wait();
        StopResultThread();
    }

    /// <summary>As <see cref="Dispose"/>, without blocking a thread.</summary>
    public async ValueTask DisposeAsync()
    {
        Terminate();
        await _allExited.Task.ConfigureAwait(false);
        StopResultThread();
    }

    /// <summary>Runs user code (a callback, a progress report) on the result thread, then <paramref name="then"/>.</summary>
    internal void Post(Action user, Action? then = null) => _resultThread.Value.Post(user, then);

    /// <summary>The parent's ends of the live workers' sockets, for tests that look at how they are watched.</summary>
    internal int[] WorkerSocketDescriptors()
    {
        lock (_gate) return [.. _slots.OfType<WorkerHandle>().Select(w => (int)w.Socket.Handle)];
    }

    internal static int DefaultChunksize(int length, int processes)
    {
        // Python: chunksize, extra = divmod(len(iterable), len(self._pool) * 4); if extra: chunksize += 1
        int size = Math.DivRem(length, processes * 4, out int extra);
        return Math.Max(1, extra > 0 ? size + 1 : size);
    }

    private int DefaultChunksize(int length) => DefaultChunksize(length, Processes);

    private static int NextCallId() => Interlocked.Increment(ref _callCounter);

    private static TimeSpan Ticks(long stopwatchTicks) => TimeSpan.FromSeconds(stopwatchTicks / (double)System.Diagnostics.Stopwatch.Frequency);

    private static Func<(T1, T2), TResult> Star<T1, T2, TResult>(Func<T1, T2, TResult> func)
    {
        ArgumentNullException.ThrowIfNull(func);
        return args => func(args.Item1, args.Item2);
    }

    private static Func<(T1, T2, T3), TResult> Star<T1, T2, T3, TResult>(Func<T1, T2, T3, TResult> func)
    {
        ArgumentNullException.ThrowIfNull(func);
        return args => func(args.Item1, args.Item2, args.Item3);
    }

    /// <summary>The function that <see cref="CurrentTaskCancellationToken"/> is passed to, as a plain function.</summary>
    private static Func<T, TResult> WithToken<T, TResult>(Func<T, CancellationToken, TResult> func)
    {
        ArgumentNullException.ThrowIfNull(func);
        return item => func(item, PoolWorker.CurrentToken);
    }

    private static Func<TResult> WithToken<TResult>(Func<CancellationToken, TResult> func)
    {
        ArgumentNullException.ThrowIfNull(func);
        return () => func(PoolWorker.CurrentToken);
    }

    private static OperationCanceledException Cancelled(CancellationToken cancellationToken) =>
        new("The call was cancelled: its tasks that had not started were dropped, and running ones were asked to stop.", cancellationToken);

    // IMap and the rest check their arguments and open the call when called, not at the first MoveNext.
    private StreamResults<T, TResult> Stream<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize, bool ordered, IProgress<MapProgress>? progress, TimeSpan? taskTimeout, CancellationToken cancellationToken)
    {
        var (call, source) = OpenStream(func, iterable, chunksize, ordered, progress, taskTimeout, cancellationToken);
        return new StreamResults<T, TResult>(call, source, cancellationToken);
    }

    /// <summary>Tops up the input, then takes the next chunk of outcomes: false when the stream is over, true with
    /// null when the caller must wait for <see cref="StreamCall{T, TResult}.Signal"/>.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal bool NextOutcomes<T, TResult>(StreamCall<T, TResult> call, IEnumerator<T> source, out Outcome<TResult>[]? outcomes)
    {
        TopUp(call, source);
        lock (_gate)
        {
            outcomes = call.TryTake();
            return outcomes is not null || !call.Exhausted;
        }
    }

    private (StreamCall<T, TResult> Call, IEnumerator<T> Source) OpenStream<T, TResult>(Func<T, TResult> func, IEnumerable<T> iterable, int chunksize, bool ordered, IProgress<MapProgress>? progress, TimeSpan? taskTimeout, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(func);
        ArgumentNullException.ThrowIfNull(iterable);
        if (chunksize < 1) throw new ArgumentOutOfRangeException(nameof(chunksize), chunksize, "Chunksize must be 1 or more.");
        var function = DelegateSerializer.Serialize(func);
        long? total = iterable.TryGetNonEnumeratedCount(out int count) ? count : null;
        StreamCall<T, TResult> call;
        lock (_gate)
        {
            ThrowIfNotRunning();
            call = new StreamCall<T, TResult>(this, NextCallId(), NextCallId(), function, chunksize, ordered, total, progress);
            Admit(call, taskTimeout, cancellationToken);
        }

        Watch(call, cancellationToken);
        return (call, iterable.GetEnumerator());
    }

    /// <summary>Pulls from the source on the consumer's thread while the read-ahead allows, and queues the chunks.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private void TopUp<T, TResult>(StreamCall<T, TResult> call, IEnumerator<T> source)
    {
        int chunksize = call.Chunksize;
        while (true)
        {
            long room;
            lock (_gate)
            {
                room = _options.MaxReadAhead - (call.Taken - call.Yielded);
                if (call.SourceDone || (room < Math.Max(chunksize, _options.MaxReadAhead / 2) && call.Taken > call.Yielded)) return;
            }

            // Up to a batch of chunks per lock and per pump, so lazy input streams as fast as a list.
            var batch = new List<T[]>();
            bool more = true;
            System.Runtime.ExceptionServices.ExceptionDispatchInfo? sourceError = null;
            long budget = Math.Max(chunksize, Math.Min(room, 4096));
            for (int pulled = 0; more && pulled < budget;)
            {
                var items = new List<T>(chunksize);
                try
                {
                    while (items.Count < chunksize && (more = source.MoveNext())) items.Add(source.Current);
                }
                catch (Exception ex)
                {
                    // As Python's imap: the whole chunks before the failure are still run and yielded, then the
                    // consumer gets the source's exception where the failing item's chunk would have been (the part
                    // of that chunk read before the failure is dropped with it).
                    sourceError = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(ex);
                    more = false;
                    items.Clear();
                }

                if (items.Count > 0) batch.Add([.. items]);
                pulled += items.Count;
            }

            lock (_gate)
            {
                // The call may have been cancelled (from another thread) or the pool terminated while this pulled.
                if (_state == State.Terminated || call.Cancelled) return;
                if (!more) call.SourceDone = true;
                call.SourceError = sourceError;
                foreach (var items in batch) Enqueue(call, call.Add(items));
                Pump();
                if (!more) return;
            }
        }
    }

    internal void CloseStream(PoolCall call, IDisposable source)
    {
        source.Dispose();
        lock (_gate)
        {
            // A consumer that stopped early abandons its queued chunks; running ones finish and are dropped.
            call.Abandon();
            DropQueued(call);
            if (call.Finished) Retire(call);
        }
    }

    private void DropQueued(PoolCall call)
    {
        call.Outstanding -= _pending.RemoveAll(call);
    }

    /// <summary>Registers a new call, with its time limit (its own, else the pool's).</summary>
    private void Admit(PoolCall call, TimeSpan? taskTimeout, CancellationToken cancellationToken)
    {
        if (taskTimeout is { } own && own <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(taskTimeout), own, "taskTimeout must be positive, or null for the pool's default.");
        var limit = taskTimeout ?? _options.TaskTimeout;
        _calls.Add(call);
        call.Cancellable = cancellationToken.CanBeCanceled;
        if (limit is not { } t) return;
        call.Timeout = t;
        call.TimeoutTicks = Math.Max(1, (long)(t.TotalSeconds * System.Diagnostics.Stopwatch.Frequency));
        _timedCalls++;
        UpdateWatchdog();
    }

    /// <summary>Cancels <paramref name="call"/> when <paramref name="cancellationToken"/> is; the registration ends
    /// with the call.</summary>
    /// <returns>The registration, for a caller that outlives the call's own (a stream's enumerator).</returns>
    internal CancellationTokenRegistration Watch(PoolCall call, CancellationToken cancellationToken)
    {
        if (!cancellationToken.CanBeCanceled) return default;

        // Registered outside the lock: a token cancelled meanwhile runs the callback here, at once.
        var registration = cancellationToken.UnsafeRegister(static (state, token) =>
        {
            var call = (PoolCall)state!;
            call.Pool.Cancel(call, token);
        }, call);
        lock (_gate)
        {
            if (!_calls.Contains(call))
            {
                registration.Unregister();
            }
            else
            {
                // A stream's enumerator token arrives after the call opened, still before its first chunk is sent.
                call.Cancellable = true;
                if (call.Registration == default) call.Registration = registration;
            }
        }

        return registration;
    }

    /// <summary>Cancels a call: its queued chunks go, its result fails with <see cref="OperationCanceledException"/>
    /// now, and the workers that hold its chunks are told (they skip those not started, and the running task's
    /// token is cancelled). The watchdog kills a worker whose task outlives the grace period.</summary>
    private void Cancel(PoolCall call, CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            // A call that is over (or a terminated pool's) has nothing left to cancel.
            if (call.Cancelled || !_calls.Contains(call)) return;
            call.Cancelled = true;
            _cancelledCalls++;
            DropQueued(call);
            call.Cancel(Cancelled(cancellationToken));
            if (call.Finished)
            {
                Retire(call);
                return;
            }

            foreach (var worker in _workers)
            {
                if (worker.InFlight.Holds(call)) worker.Board.Cancel(call.FuncId);
            }

            UpdateWatchdog();
            StopCancelled(System.Diagnostics.Stopwatch.GetTimestamp());
        }
    }

    private const int WatchdogPeriodMs = 10;
    private Timer? _watchdog;
    private bool _watching;
    private int _timedCalls;

    /// <summary>Cancelled calls with chunks still held by workers.</summary>
    private int _cancelledCalls;

    /// <summary>Runs the watchdog while a call has a time limit or a cancelled call has chunks in workers.</summary>
    private void UpdateWatchdog()
    {
        bool needed = _state != State.Terminated && (_timedCalls > 0 || _cancelledCalls > 0);
        if (needed == _watching) return;
        _watching = needed;
        _watchdog ??= new Timer(static state => ((ProcessPool)state!).KillOverdue(), this, Timeout.Infinite, Timeout.Infinite);
        if (needed) _watchdog.Change(WatchdogPeriodMs, WatchdogPeriodMs);
        else _watchdog.Change(Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>Kills every worker whose running chunk is past its time limit; the chunk then fails with
    /// <see cref="TimeoutException"/> and the worker is replaced, like any lost worker. Then stops the tasks of
    /// cancelled calls.</summary>
    private void KillOverdue()
    {
        lock (_gate)
        {
            long now = System.Diagnostics.Stopwatch.GetTimestamp();
            foreach (var worker in _workers)
            {
                if (!worker.Ready || worker.KillReason is not null || !worker.InFlight.TryPeek(out var head) || head.Call.TimeoutTicks == 0) continue;
                if (now - worker.HeadStarted <= head.Call.TimeoutTicks * head.Call.ChunkItems(head.Chunk)) continue;
                worker.KillReason = new TimeoutException(
                    $"a task ran past its time limit of {head.Call.Timeout}; its worker (pid {worker.Process.Pid}) was killed and is being replaced");
                worker.Process.Kill();
            }

            if (_cancelledCalls > 0) StopCancelled(now);
        }
    }

    /// <summary>For each worker running a chunk of a cancelled call: tells it (again, once per chunk: the board's
    /// ring of cancellations may have moved on) and starts the grace period; kills it when that is over.</summary>
    private void StopCancelled(long now)
    {
        var grace = _options.CancellationGracePeriod;
        foreach (var worker in _workers)
        {
            if (worker.KillReason is not null || worker.InFlight.Count == 0) continue;

            // The board, not the oldest unanswered chunk, says what runs: answers wait up to a millisecond, and a
            // long task of another call may already run behind a finished one.
            long running = worker.Board.Running;
            long index = running - worker.Answered - 1;
            if (running == 0 || index < 0 || index >= worker.InFlight.Count) continue;
            var chunk = worker.InFlight[(int)index];
            if (!chunk.Call.Cancelled) continue;
            if (worker.CancelledChunk != running)
            {
                worker.CancelledChunk = running;
                worker.CancelDeadline = grace == Timeout.InfiniteTimeSpan ? long.MaxValue : now + (long)(grace.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
                worker.Board.Cancel(chunk.Call.FuncId);
            }

            if (now < worker.CancelDeadline) continue;
            worker.KillReason = new OperationCanceledException(
                $"a cancelled task did not stop within the grace period of {grace}; its worker (pid {worker.Process.Pid}) was killed and is being replaced");
            worker.Process.Kill();
        }
    }

    private void Enqueue(PoolCall call, int chunk)
    {
        call.Outstanding++;
        _pending.AddLast(new ChunkRef(call, chunk));
    }

    /// <summary>Hands queued chunks to workers with room in their window, least loaded first, then sends.</summary>
    private void Pump()
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        _touched.Clear();
        while (_pending.TryPeek(out var next))
        {
            WorkerHandle? target = null;
            foreach (var worker in _slots)
            {
                if (worker is null || worker.Retiring || worker.InFlight.Count >= worker.Window || worker.Stalled(now)) continue;
                if (target is null || worker.InFlight.Count < target.InFlight.Count) target = worker;
            }

            // Nobody free: the chunk waits for the first answer, as a task waits in Python's shared queue.
            if (target is null) break;
            if (target.InFlight.Count == 0)
            {
                target.LastProgress = now;
                target.HeadStarted = now;
            }

            _pending.Dequeue();
            var (call, chunk) = next;
            var output = target.Pending;
            if (call.Template is { } template)
            {
                if (target.Templates.Add(template.Id))
                {
                    int define = output.BeginFrame(PoolProtocol.DefineTemplate);
                    output.Int32(template.Id);
                    output.Bytes(template.Shape.Span);
                    output.EndFrame(define);
                }
            }
            else if (target.Defined.Add(call.FuncId))
            {
                int define = output.BeginFrame(PoolProtocol.Define);
                output.Int32(call.FuncId);
                output.Bytes(call.Function.Span);
                output.EndFrame(define);
            }

            int mark = output.Length;
            try
            {
                int run = output.BeginFrame(PoolProtocol.Run);
                output.Byte((byte)((call.TimeoutTicks > 0 ? PoolProtocol.Timed : 0) | (call.Cancellable ? PoolProtocol.Cancellable : 0)
                    | (call.Template is null ? 0 : PoolProtocol.Templated)));
                output.Int32(call.Id);
                output.Int32(chunk);
                output.Int32(call.FuncId);
                if (call.Template is { } shape)
                {
                    output.Int32(shape.Id);
                    output.Bytes(call.Function.Span);
                }

                call.Encode(chunk, output);
                output.EndFrame(run);
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                // An item that cannot be encoded fails its chunk, here, and nothing else.
                output.Truncate(mark);
                call.Outstanding--;
                call.Fail(chunk, new System.Runtime.Serialization.SerializationException($"An item of this call cannot be sent to a worker: {ex.Message}", ex));
                if (call.Finished) Retire(call);
                continue;
            }

            target.InFlight.AddLast(next);
            call.SentTo = target;
            target.Unsent++;
            target.Urgent |= call.WrittenAtOnce;
            target.ChunksSent++;
            if (_maxTasksPerChild is { } limit && target.ChunksSent >= limit) RetireWorker(target);
            _touched.Add(target);
        }

        // One write per worker for everything this pass queued: a send per chunk would cost a syscall per task.
        // Apply tasks for a worker that has two or more sent tasks to get on with wait for its next answer (see
        // ReadLoop), so a burst of ApplyAsync calls goes out in a few writes, not one syscall per call. Map-type
        // chunks go at once: held back, they cost IMap half its throughput, since a worker answers when its input
        // runs dry and then idled for a round trip every time.
        foreach (var worker in _touched)
        {
            if (worker.Urgent || worker.InFlight.Count - worker.Unsent < 2) Send(worker);
        }
    }

    private readonly HashSet<WorkerHandle> _touched = [];

    /// <summary>
    /// Writes a worker's pending frames now, as far as its socket takes them without waiting; a rest that does not
    /// fit is finished by the worker's reader thread when the socket has room again (<see cref="ContinueSend"/>).
    /// The socket never goes through the runtime's socket engine: once a socket is registered there, every answer
    /// the worker writes wakes the engine's thread and a thread-pool thread, which then spins for more work, and on
    /// two cores those threads take the CPU the caller and the worker need (an Apply round trip went from 8 µs to
    /// 50 µs).
    /// </summary>
    private void Send(WorkerHandle worker)
    {
        if (worker.Sending is not null || worker.Pending.Length == 0) return;
        var batch = worker.Pending;
        worker.PendingTaken();
        if (!TrySend(worker, batch.WrittenSpan, out int sent) || sent == batch.Length)
        {
            batch.Reset();
            return;
        }

        worker.Pending = worker.Spare ?? new WireWriter(4096);
        worker.Spare = null;
        worker.Sending = batch;
        worker.SendOffset = sent;
        worker.Rearm();
    }

    /// <summary>Goes on with a send that did not fit, on the reader thread once the socket has room; then sends
    /// what was queued meanwhile. The caller holds the pool's lock.</summary>
    private void ContinueSend(WorkerHandle worker)
    {
        if (worker.Sending is not { } batch) return;
        bool alive = TrySend(worker, batch.WrittenSpan[worker.SendOffset..], out int sent);
        worker.SendOffset += sent;
        if (alive && worker.SendOffset < batch.Length) return;
        batch.Reset();
        worker.Sending = null;
        worker.Spare = batch;
        if (alive) Send(worker);
    }

    /// <summary>One non-blocking write; false when the worker is gone, whose reader then sees the end of stream and
    /// settles its chunks, so what was not sent is dropped.</summary>
    private static bool TrySend(WorkerHandle worker, ReadOnlySpan<byte> data, out int sent)
    {
        try
        {
            sent = OsIo.TrySendNow((int)worker.Socket.Handle, data);
            return true;
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            sent = 0;
            return false;
        }
    }

    /// <summary>
    /// Reads one worker's answers on a thread of its own, asleep on the socket's readiness: a result wakes this
    /// thread directly, where an asynchronous receive would wake the socket engine's thread and then hop to the
    /// thread pool, and user code that starves the thread pool cannot stall the pool's results. While a caller waits
    /// on an Apply this worker runs, the caller reads for itself (<see cref="WaitReading"/>) and this thread is left
    /// asleep.
    /// </summary>
    private void ReadLoop(WorkerHandle worker)
    {
        // The socket stays open until this loop has seen its end and the worker is reaped, below.
        try
        {
            var watch = new OsIo.ReadinessWatch((int)worker.Socket.Handle);
            lock (worker.ReadGate) worker.Attach(watch);
            while (true)
            {
                watch.Wait();
                lock (worker.ReadGate)
                {
                    if (!Drain(worker)) break;
                }

                // Woken for room in the socket, or for an answer while a send waits for room (its reader is this
                // thread either way).
                if (worker.Sending is not null)
                {
                    lock (_gate) ContinueSend(worker);
                }

                worker.Rearm();
            }
        }
        catch (Exception ex)
        {
            ProcessRuntime.Logger.LogError(ex, "Pool worker {Pid}: reading its results failed; replacing it", worker.Process.Pid);
            worker.Process.Kill();
        }
        finally
        {
            lock (worker.ReadGate)
            {
                worker.Ended = true;
                worker.Detach();
            }
        }

        // Nobody else reaps a process whose channel the pool owns; this thread has nothing else to do meanwhile.
        worker.Process.ChannelClosed();
        lock (_gate) WorkerExited(worker);
    }

    /// <summary>Reads and handles whatever the worker's socket holds now, without waiting; false once the socket has
    /// ended. The caller holds <see cref="WorkerHandle.ReadGate"/>. A worker whose answers cannot be read is killed:
    /// its reader thread then settles its chunks.</summary>
    private bool Drain(WorkerHandle worker)
    {
        if (worker.Ended) return false;
        try
        {
            int fd = (int)worker.Socket.Handle;
            while (true)
            {
                var buffer = worker.ReadBuffer;
                int n = OsIo.TryReceiveNow(fd, buffer.AsSpan(worker.Filled));
                if (n < 0) return true;
                if (n == 0)
                {
                    worker.Ended = true;
                    return false;
                }

                int filled = worker.Filled + n;
                var frames = worker.Frames;
                frames.Clear();
                int consumed = PoolProtocol.CompleteFrames(buffer.AsSpan(0, filled), frames);
                if (frames.Count > 0)
                {
                    lock (_gate)
                    {
                        var reader = worker.FrameReader;
                        for (int f = 0; f < frames.Count; f++)
                        {
                            reader.Reset(buffer.AsMemory(frames.Offset(f), frames.Length(f)));
                            Handle(worker, reader);
                        }

                        Pump();

                        // Whatever waited for this worker's answer goes now.
                        Send(worker);
                        RetireIfDrained();
                    }
                }

                filled -= consumed;
                if (filled > 0) buffer.AsSpan(consumed, filled).CopyTo(buffer);
                if (filled == buffer.Length)
                {
                    Array.Resize(ref buffer, buffer.Length * 2);
                    worker.ReadBuffer = buffer;
                }
                worker.Filled = filled;
            }
        }
        catch (Exception ex)
        {
            worker.Ended = true;
            ProcessRuntime.Logger.LogError(ex, "Pool worker {Pid}: reading its results failed; replacing it", worker.Process.Pid);
            worker.Process.Kill();
            return false;
        }
    }

    /// <summary>
    /// Waits briefly for an Apply by reading its worker's socket on the caller's own thread. A round trip through
    /// the reader thread costs one more wake-up, and on a two-core machine the dearest one: a sleeping thread must
    /// be woken on a halted CPU while the caller spins on the other. The reader's watch is disarmed meanwhile, so
    /// it stays asleep for answers the caller reads.
    /// </summary>
    /// <returns>True when the result is ready; false when the spin budget ran out first.</returns>
    internal bool WaitReading(PoolCall call, ICompletion done)
    {
        WorkerHandle? worker;
        lock (_gate)
        {
            // Only when this is all the worker holds (a round trip): with a queue of tasks behind it, the reader
            // thread is awake for their answers anyway, and taking turns with it costs more than it saves.
            worker = call.SentTo is { InFlight.Count: 1 } sentTo && sentTo.InFlight.Peek().Call == call ? sentTo : null;
        }

        if (worker is not null)
        {
            lock (worker.ReadGate)
            {
                if (worker.Ended || !worker.Watched) worker = null;
                else if (worker.Claims++ == 0) worker.Rearm();
            }
        }

        if (worker is null) return _waitSpin.Spin(static d => d.Ready, done);

        try
        {
            return _readSpin.Spin(static s => s.Pool.ReadFor(s.Worker, s.Done), (Pool: this, Worker: worker, Done: done));
        }
        finally
        {
            lock (worker.ReadGate)
            {
                if (--worker.Claims == 0) worker.Rearm();
            }
        }
    }

    private bool ReadFor(WorkerHandle worker, ICompletion done)
    {
        if (done.Ready) return true;
        if (!Monitor.TryEnter(worker.ReadGate)) return false;
        try
        {
            Drain(worker);
        }
        finally
        {
            Monitor.Exit(worker.ReadGate);
        }

        return done.Ready;
    }

    private void Handle(WorkerHandle worker, WireReader reader)
    {
        switch (reader.Byte())
        {
            case PoolProtocol.Result:
                // After Terminate every call has failed already; answers still in the socket mean nothing.
                if (_state == State.Terminated) return;
                worker.LastProgress = System.Diagnostics.Stopwatch.GetTimestamp();
                int callId = reader.Int32();
                int chunk = reader.Int32();
                if (!worker.InFlight.TryDequeue(out var head) || head.Call.Id != callId || head.Chunk != chunk)
                    throw new InvalidDataException($"worker answered call {callId} chunk {chunk} out of order");
                worker.HeadStarted = worker.LastProgress;
                worker.Answered++;
                var call = head.Call;
                call.Outstanding--;

                // A cancelled call has failed already; its late answers only count.
                if (!call.Cancelled) call.Complete(chunk, reader);
                if (call.Finished) Retire(call);
                break;
            case PoolProtocol.InitializerFailed:
                var initializerError = PoolProtocol.ReadError(reader);
                if (_state == State.Terminated) return;
                ProcessRuntime.Logger.LogError("Pool worker {Pid}: the initializer failed ({Error}); the pool stops", worker.Process.Pid, initializerError.Message);
                Break($"The pool stopped because its initializer failed in worker process {worker.Process.Pid}: {initializerError.Message}. Create a new pool.", initializerError);
                break;
            case PoolProtocol.Stats:
                if (!worker.Ready)
                {
                    worker.Ready = true;
                    worker.HeadStarted = System.Diagnostics.Stopwatch.GetTimestamp();
                    _replenishDue |= Mp.StartMethod == StartMethod.Prespawn;
                    ReplenishWhenIdle();
                }

                worker.Tasks = reader.Int64();
                worker.BusyTicks = reader.Int64();
                worker.IdleTicks = reader.Int64();
                worker.SerializeTicks = reader.Int64();
                break;
            default:
                throw new InvalidDataException("unknown frame from a pool worker");
        }
    }

    /// <summary>A call is over: its function is forgotten by the workers that hold it.</summary>
    private void Retire(PoolCall call)
    {
        if (!_calls.Remove(call)) return;
        ReplenishWhenIdle();
        call.Registration.Unregister();
        if (call.TimeoutTicks > 0) _timedCalls--;
        if (call.Cancelled) _cancelledCalls--;
        UpdateWatchdog();
        foreach (var worker in _workers)
        {
            if (!worker.Defined.Remove(call.FuncId)) continue;
            int frame = worker.Pending.BeginFrame(PoolProtocol.Forget);
            worker.Pending.Int32(call.FuncId);
            worker.Pending.EndFrame(frame);
            Send(worker);
        }
    }

    private void WorkerExited(WorkerHandle worker)
    {
        _workers.Remove(worker);
        var totals = _totals[worker.Index];
        _totals[worker.Index] = new SlotTotals(totals.Tasks + worker.Tasks, totals.Busy + worker.BusyTicks, totals.Idle + worker.IdleTicks, totals.Serialize + worker.SerializeTicks);
        if (_slots[worker.Index] == worker) _slots[worker.Index] = null;

        if (worker.InFlight.Count > 0 && _state != State.Terminated) RecoverUnsent(worker);
        if (worker.InFlight.Count > 0)
        {
            // In-order execution: once the answers kept on the board are in, the oldest unanswered chunk is the one
            // that was running when the worker died. The others never started; they run elsewhere, exactly once,
            // ahead of newer work. A worker that died between chunks (loading a call's function, say) is charged
            // to its oldest chunk all the same, so that a chunk that kills every worker it reaches cannot go
            // through replacements forever.
            var running = worker.InFlight.Dequeue();
            running.Call.Outstanding--;
            if (!running.Call.Cancelled)
                running.Call.Fail(running.Chunk, worker.KillReason ?? new WorkerLostException(worker.Process.Pid!.Value, worker.Process.ExitCode ?? -1));
            if (running.Call.Finished) Retire(running.Call);
            _pending.AddFirst(worker.InFlight);
            worker.InFlight.Clear();
        }

        worker.Board.Dispose();

        if (_state != State.Terminated && _slots[worker.Index] is null && (_state == State.Running || _pending.Count > 0 || _calls.Count > 0))
        {
            StartReplacement(worker.Index);
        }

        Pump();
        RetireIfDrained();
        CompleteIfAllExited();
    }

    /// <summary>After a worker's death, handles the answers it had kept on its board and perhaps not sent. Those
    /// that did arrive (it died while sending) come first on the board and are skipped.</summary>
    private void RecoverUnsent(WorkerHandle worker)
    {
        var unsent = worker.Board.UnsentAnswers();
        if (unsent.Length == 0) return;
        var frames = new FrameList();
        var reader = new WireReader(ReadOnlyMemory<byte>.Empty);
        bool caughtUp = false;
        try
        {
            PoolProtocol.CompleteFrames(unsent, frames);
            for (int f = 0; f < frames.Count; f++)
            {
                int offset = frames.Offset(f), length = frames.Length(f);
                if (!worker.InFlight.TryPeek(out var head)) break;

                // A Result frame: [op][call][chunk]...
                var body = unsent.AsSpan(offset, length);
                if (!caughtUp && (head.Call.Id != System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(body[1..])
                    || head.Chunk != System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(body[5..]))) continue;
                caughtUp = true;
                reader.Reset(unsent.AsMemory(offset, length));
                Handle(worker, reader);
            }
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            ProcessRuntime.Logger.LogError(ex, "Pool worker {Pid}: the answers it kept but had not sent could not be read; the oldest unanswered task is charged with its death", worker.Process.Pid);
        }
    }

    private void StartWorker(int index)
    {
        var environment = _options.WorkerEnvironment?.Invoke(index);
        var initializer = _initializer;
        var board = WorkerBoard.Create();
        ChildProcess process;
        try
        {
            process = new ChildProcess(() => PoolWorker.Run(initializer, board), $"SpawnPoolWorker-{Interlocked.Increment(ref _workerCounter)}", daemon: true, environment, ownsChannel: true)
            {
                ReplenishesSpareItself = true,
                BuiltInTarget = (JobKind.PoolWorker, () => PoolWorker.EncodeStart(initializer, board)),
            };
            process.Start();
        }
        catch
        {
            board.Dispose();
            throw;
        }

        var worker = new WorkerHandle(index, process, board);
        _workers.Add(worker);
        _slots[index] = worker;

        // Started from the thread pool: Thread.Start waits until the new thread runs, which took milliseconds while
        // the workers just launched were booting on every core, and nothing needs the reader before the worker's
        // first answer. Tasks are written by whoever submits them.
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Pool.StartReader(state.Worker), (Pool: this, Worker: worker), preferLocal: false);
    }

    /// <summary>Starts a worker in a slot whose worker is gone or going. A failure (the system refused a process, the
    /// WorkerEnvironment callback threw) leaves the slot empty, for the next worker's exit to try again; with no
    /// worker left at all, the pool stops rather than leave its tasks waiting for a worker that never comes.</summary>
    private void StartReplacement(int index)
    {
        try
        {
            StartWorker(index);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            ProcessRuntime.Logger.LogError(ex, "Pool: a worker to replace the one in slot {Index} could not be started", index);
            if (_workers.Count == 0) Break($"The pool stopped: no worker is left, and starting one failed ({ex.GetType().Name}: {ex.Message}). Create a new pool.", ex);
        }
    }

    /// <summary>Stops the pool for good, as <see cref="Terminate"/> does, and refuses new work, both with
    /// <see cref="PoolBrokenException"/>.</summary>
    private void Break(string reason, Exception cause)
    {
        _broken = new PoolBrokenException(reason, cause);
        Stop(_broken);
    }

    private void StartReader(WorkerHandle worker)
    {
        try
        {
            new Thread(() => Read(worker))
            {
                IsBackground = true,
                Name = "Multiprocessing pool reader",
            }.Start();
        }
        catch (Exception ex) when (ex is OutOfMemoryException or ThreadStartException)
        {
            // The worker's answers still need a reader: this thread-pool thread becomes it.
            ProcessRuntime.Logger.LogWarning(ex, "Pool worker {Pid}: no thread could be started to read it; a thread-pool thread reads it instead", worker.Process.Pid);
            Read(worker);
        }
    }

    private void Read(WorkerHandle worker)
    {
        try
        {
            ReadLoop(worker);
        }
        catch (Exception ex)
        {
            // Past the reading itself: reaping the worker or starting its replacement failed. An exception must not
            // end the whole process from this thread; the pool reports what it can.
            ProcessRuntime.Logger.LogError(ex, "Pool worker {Pid}: handling its exit failed", worker.Process.Pid);
        }
    }

    /// <summary>
    /// Under Prespawn, boots the spares this pool's workers were taken from once the pool has had nothing to run for
    /// a moment, or once a closed pool's workers have all exited. Booting while the pool works, or while its workers
    /// shut down, takes the CPU they need: a spare is some 30 ms of CPU, and two of them booting beside a new
    /// Pool(2)'s first map and teardown made it half again as slow. The caller holds the pool's lock.
    /// </summary>
    private void ReplenishWhenIdle()
    {
        if (!_replenishDue) return;
        if (_state == State.Running)
        {
            if (_calls.Count > 0) return;
            _idleTimer ??= new Timer(static pool => ((ProcessPool)pool!).IdleTimerFired(), this, Timeout.Infinite, Timeout.Infinite);
            _idleTimer.Change(IdleBeforeReplenish, Timeout.InfiniteTimeSpan);
            return;
        }

        if (_workers.Count == 0) QueueReplenish();
    }

    private void IdleTimerFired()
    {
        lock (_gate)
        {
            if (_replenishDue && _state == State.Running && _calls.Count == 0) QueueReplenish();
        }
    }

    private void QueueReplenish()
    {
        _replenishDue = false;
        ThreadPool.UnsafeQueueUserWorkItem(static _ => ReplenishSpares(), null);
    }

    private static readonly TimeSpan IdleBeforeReplenish = TimeSpan.FromMilliseconds(20);
    private bool _replenishDue;
    private Timer? _idleTimer;

    /// <summary>Boots the spares that replace those this pool's workers were taken from.</summary>
    private static void ReplenishSpares()
    {
        try
        {
            Multiprocessing.Processes.Launcher.Replenish();
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Only the next pool's start is slower for it: it spawns what it cannot take.
            ProcessRuntime.Logger.LogWarning(ex, "Booting spare processes for Prespawn failed");
        }
    }

    /// <summary>After its last allowed task (or when a closed pool is done) a worker is told to finish and exit. Its
    /// replacement starts when it has exited, as in Python: never more than <see cref="Processes"/> workers run
    /// tasks, or hold what an initializer acquired (a GPU's memory, say), at once.</summary>
    private void RetireWorker(WorkerHandle worker)
    {
        worker.Retiring = true;
        int frame = worker.Pending.BeginFrame(PoolProtocol.Shutdown);
        worker.Pending.EndFrame(frame);
        if (_slots[worker.Index] == worker) _slots[worker.Index] = null;
    }

    /// <summary>A closed pool lets its workers go once every call is over.</summary>
    private void RetireIfDrained()
    {
        if (_state != State.Closed || _calls.Count > 0 || _pending.Count > 0) return;
        foreach (var worker in _workers.ToArray())
        {
            if (worker.Retiring) continue;
            RetireWorker(worker);
            Send(worker);
        }

        CompleteIfAllExited();
    }

    private void CompleteIfAllExited()
    {
        if (_state == State.Running || _workers.Count > 0) return;
        _idleTimer?.Dispose();
        ReplenishWhenIdle();
        _allExited.TrySetResult();
    }

    private void ThrowIfNotRunning()
    {
        if (_broken is { } broken) throw new PoolBrokenException(broken.Message, broken.InnerException);
        if (_state != State.Running)
            throw new InvalidOperationException($"The pool is {(_state == State.Closed ? "closed" : "terminated")}; it accepts no new work.");
    }

    private void ThrowIfRunning()
    {
        lock (_gate)
        {
            if (_state == State.Running)
                throw new InvalidOperationException("The pool is still running; call Close() or Terminate() before Join().");
        }
    }

    private void StopResultThread()
    {
        if (_resultThread.IsValueCreated) _resultThread.Value.Complete();
    }

    private readonly record struct SlotTotals(long Tasks, long Busy, long Idle, long Serialize);
}

/// <summary>The one thread that runs a pool's callbacks and progress reports, in order, as Python's result
/// handler thread does; one that throws is logged and the thread goes on (Python's would die).</summary>
internal sealed class ResultThread
{
    private readonly BlockingCollection<(Action User, Action? Then)> _queue = [];
    private readonly ILogger _logger;

    internal ResultThread(ILogger logger)
    {
        _logger = logger;
        new Thread(Run) { IsBackground = true, Name = "Multiprocessing pool results" }.Start();
    }

    internal void Post(Action user, Action? then)
    {
        try
        {
            _queue.Add((user, then));
        }
        catch (InvalidOperationException)
        {
            // The pool is disposed: nobody listens for callbacks any more, but a waiter may still need its result.
            then?.Invoke();
        }
    }

    internal void Complete() => _queue.CompleteAdding();

    private void Run()
    {
        foreach (var (user, then) in _queue.GetConsumingEnumerable())
        {
            try
            {
                user();
            }
            catch (Exception ex)
            {
                _logger.LogError(ex, "A pool callback or progress report threw; the pool goes on");
            }

            then?.Invoke();
        }
    }
}
