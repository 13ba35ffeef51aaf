using System.Runtime.CompilerServices;

namespace Multiprocessing;

/// <summary>
/// The pending result of <see cref="ProcessPool.ApplyAsync{TResult}(Func{TResult}, Action{TResult}, Action{Exception}, TimeSpan?, CancellationToken)"/>, <see cref="ProcessPool.MapAsync{T, TResult}(Func{T, TResult}, IEnumerable{T}, int?, Action{List{TResult}}, Action{Exception}, IProgress{MapProgress}, TimeSpan?, CancellationToken)"/> and
/// the other *Async calls, as Python's <c>AsyncResult</c>: <see cref="Get"/>, <see cref="Wait"/>, <see cref="Ready"/>,
/// <see cref="Successful"/>. It is also awaitable: <c>var squares = await pool.MapAsync(F, items);</c>.
/// </summary>
/// <typeparam name="T">The result type.</typeparam>
/// <remarks>Thread-safe. Waiting never holds a pool lock; an abandoned wait (timeout, cancellation) leaves the task
/// running.</remarks>
public sealed class AsyncResult<T> : Multiprocessing.Pool.ICompletion
{
    private const int Pending = 0;
    private const int Completing = 1;
    private const int Succeeded = 2;
    private const int Failed = 3;
    private const int Canceled = 4;

    // A plain state word, not a TaskCompletionSource and an event: ApplyAsync in a loop keeps tens of thousands of
    // these alive at once, and the task, its source and the event tripled the bytes each one cost (and the time the
    // GC spent promoting them). The event and the task are made only for a caller that blocks or awaits.
    private int _state;
    private T _value = default!;

    /// <summary>The task's exception, or for a cancelled call the <see cref="OperationCanceledException"/> the pool made.</summary>
    private Exception? _error;

    private ManualResetEventSlim? _event;
    private TaskCompletionSource<T>? _task;

    private readonly Multiprocessing.Synchronization.AdaptiveSpin? _spin;

    /// <summary>How a sync waiter helps its result along before it sleeps; set once, before the result is handed out.</summary>
    internal Multiprocessing.Pool.IWaitAssist? Assist { get; set; }

    internal AsyncResult(Multiprocessing.Synchronization.AdaptiveSpin? spin = null)
    {
        _spin = spin;
    }

    /// <summary>Whether the call has completed, successfully or not (Python's <c>ready()</c>).</summary>
    public bool Ready => Volatile.Read(ref _state) >= Succeeded;

    /// <summary>Whether the call completed without an exception (Python's <c>successful()</c>).</summary>
    /// <exception cref="InvalidOperationException">The call has not completed yet.</exception>
    public bool Successful => Ready
        ? _state == Succeeded
        : throw new InvalidOperationException("The result is not ready yet; Successful is only defined once Ready is true.");

    /// <summary>Waits for the result and returns it (Python's <c>get(timeout)</c>).</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>The result.</returns>
    /// <exception cref="TimeoutException">The result did not arrive in time; the task keeps running.</exception>
    /// <exception cref="RemoteException">The task threw in its worker.</exception>
    /// <exception cref="WorkerLostException">The worker running the task died.</exception>
    /// <exception cref="PoolTerminatedException">The pool was terminated first.</exception>
    /// <exception cref="OperationCanceledException">The call was cancelled through its token.</exception>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public T Get(TimeSpan? timeout = null)
    {
        if (!Wait(timeout)) throw new TimeoutException($"The result did not arrive within {timeout}; the task is still running.");
        if (_state == Succeeded) return _value;

        // Rethrown as is, so callers catch RemoteException, not AggregateException; the original stack is kept
        // inside it.
        System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_error!).Throw();
        return default!;
    }

    /// <summary>Waits until the result is ready (Python's <c>wait(timeout)</c>).</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>True when the result is ready.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative (other than infinite).</exception>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool Wait(TimeSpan? timeout = null)
    {
        if (Ready) return true;
        if (timeout != TimeSpan.Zero)
        {
            if (Assist is { } assist ? assist.WaitBriefly(this) : _spin is not null && _spin.Spin(static self => self.Ready, this)) return true;
        }

        var signal = _event;
        if (signal is null)
        {
            signal = new ManualResetEventSlim(false);

            // Published before the state is read again: a completion that came in between sees the event, or this
            // read sees the completion (both sides write, fence, then read the other's word).
            signal = Interlocked.CompareExchange(ref _event, signal, null) ?? signal;
        }

        return Ready || signal.Wait(timeout ?? Timeout.InfiniteTimeSpan);
    }

    /// <summary>Waits for the result without blocking a thread.</summary>
    /// <param name="cancellationToken">Stops the wait (not the task).</param>
    /// <returns>The result.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="RemoteException">The task threw in its worker.</exception>
    public Task<T> GetAsync(CancellationToken cancellationToken = default) => AsTask().WaitAsync(cancellationToken);

    /// <summary>Makes the result awaitable.</summary>
    /// <returns>The awaiter of the underlying task.</returns>
    public TaskAwaiter<T> GetAwaiter() => AsTask().GetAwaiter();

    /// <summary>The result as a task.</summary>
    /// <returns>A task that completes with the result.</returns>
    public Task<T> AsTask()
    {
        var source = _task;
        if (source is null)
        {
            source = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            source = Interlocked.CompareExchange(ref _task, source, null) ?? source;
        }

        // Completed here too when the result came first, or raced in while the source was being published.
        if (Ready) Forward(source);
        return source.Task;
    }

    internal bool SetResult(T value)
    {
        if (Interlocked.CompareExchange(ref _state, Completing, Pending) != Pending) return false;
        _value = value;
        Publish(Succeeded);
        return true;
    }

    internal bool SetException(Exception error)
    {
        if (Interlocked.CompareExchange(ref _state, Completing, Pending) != Pending) return false;
        _error = error;
        Publish(Failed);
        return true;
    }

    internal bool SetCanceled(OperationCanceledException error)
    {
        if (Interlocked.CompareExchange(ref _state, Completing, Pending) != Pending) return false;
        _error = error;
        Publish(Canceled);
        return true;
    }

    private void Publish(int state)
    {
        Interlocked.Exchange(ref _state, state);
        Volatile.Read(ref _event)?.Set();
        if (Volatile.Read(ref _task) is { } source) Forward(source);
    }

    private void Forward(TaskCompletionSource<T> source)
    {
        switch (_state)
        {
            case Succeeded: source.TrySetResult(_value); break;
            case Failed: source.TrySetException(_error!); break;
            default: source.TrySetCanceled(((OperationCanceledException)_error!).CancellationToken); break;
        }
    }
}
