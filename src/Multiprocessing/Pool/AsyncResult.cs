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
public sealed class AsyncResult<T>
{
    private readonly TaskCompletionSource<T> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Sync waiters wake on this directly: a Task.Wait would hop through the thread pool first.
    private readonly ManualResetEventSlim _done = new(false);

    /// <summary>Why the call was cancelled: a cancelled task carries no exception of its own.</summary>
    private OperationCanceledException? _canceled;

    private readonly Multiprocessing.Synchronization.AdaptiveSpin? _spin;

    /// <summary>How a sync waiter helps its result along before it sleeps; set once, before the result is handed out.</summary>
    internal Multiprocessing.Pool.IWaitAssist? Assist { get; set; }

    internal AsyncResult(Multiprocessing.Synchronization.AdaptiveSpin? spin = null)
    {
        _spin = spin;
    }

    /// <summary>Whether the call has completed, successfully or not (Python's <c>ready()</c>).</summary>
    public bool Ready => _done.IsSet;

    /// <summary>Whether the call completed without an exception (Python's <c>successful()</c>).</summary>
    /// <exception cref="InvalidOperationException">The call has not completed yet.</exception>
    public bool Successful => Ready
        ? _completion.Task.IsCompletedSuccessfully
        : throw new InvalidOperationException("The result is not ready yet; Successful is only defined once Ready is true.");

    /// <summary>Waits for the result and returns it (Python's <c>get(timeout)</c>).</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>The result.</returns>
    /// <exception cref="TimeoutException">The result did not arrive in time; the task keeps running.</exception>
    /// <exception cref="RemoteException">The task threw in its worker.</exception>
    /// <exception cref="WorkerLostException">The worker running the task died.</exception>
    /// <exception cref="PoolTerminatedException">The pool was terminated first.</exception>
    /// <exception cref="OperationCanceledException">The call was cancelled through its token.</exception>
    public T Get(TimeSpan? timeout = null)
    {
        if (!Wait(timeout)) throw new TimeoutException($"The result did not arrive within {timeout}; the task is still running.");
        return _completion.Task.IsCompletedSuccessfully ? _completion.Task.Result : throw Failure();
    }

    /// <summary>Waits until the result is ready (Python's <c>wait(timeout)</c>).</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>True when the result is ready.</returns>
    public bool Wait(TimeSpan? timeout = null)
    {
        if (_done.IsSet) return true;
        if (timeout != TimeSpan.Zero)
        {
            if (Assist is { } assist ? assist.WaitBriefly(_done) : _spin is not null && _spin.Spin(static done => done.IsSet, _done)) return true;
        }

        return _done.Wait(timeout ?? Timeout.InfiniteTimeSpan);
    }

    /// <summary>Waits for the result without blocking a thread.</summary>
    /// <param name="cancellationToken">Stops the wait (not the task).</param>
    /// <returns>The result.</returns>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    /// <exception cref="RemoteException">The task threw in its worker.</exception>
    public Task<T> GetAsync(CancellationToken cancellationToken = default) => _completion.Task.WaitAsync(cancellationToken);

    /// <summary>Makes the result awaitable.</summary>
    /// <returns>The awaiter of the underlying task.</returns>
    public TaskAwaiter<T> GetAwaiter() => _completion.Task.GetAwaiter();

    /// <summary>The result as a task.</summary>
    /// <returns>A task that completes with the result.</returns>
    public Task<T> AsTask() => _completion.Task;

    internal void SetResult(T value)
    {
        if (_completion.TrySetResult(value)) _done.Set();
    }

    internal void SetException(Exception error)
    {
        if (_completion.TrySetException(error)) _done.Set();
    }

    internal void SetCanceled(OperationCanceledException error)
    {
        // Kept first: a Get that sees the cancelled task reads it.
        Volatile.Write(ref _canceled, error);
        if (_completion.TrySetCanceled(error.CancellationToken)) _done.Set();
    }

    private Exception Failure()
    {
        // A cancelled task carries no exception; Get throws the one the pool made, which says what happened.
        var error = _completion.Task.IsCanceled ? Volatile.Read(ref _canceled)! : _completion.Task.Exception!.InnerException!;

        // Rethrown as is, so callers catch RemoteException, not AggregateException; the original stack is kept
        // inside it.
        System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(error).Throw();
        return error;
    }
}
