namespace Multiprocessing;

/// <summary>
/// The process that held a lock, or a semaphore slot, died without releasing it. As with .NET's
/// <see cref="System.Threading.AbandonedMutexException"/>, the waiter that receives this exception now holds what
/// the dead process held; whatever it protected may be half-updated.
/// </summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class AbandonedLockException : MultiprocessingException
{
    /// <summary>Creates the exception for a holder with process id <paramref name="pid"/>.</summary>
    /// <param name="pid">The process that died holding the lock.</param>
    public AbandonedLockException(int pid)
        : base($"Process {pid} exited while holding this lock; the caller now holds it, and the state it protects may be inconsistent.")
    {
        Pid = pid;
    }

    /// <summary>The process that died holding the lock.</summary>
    public int Pid { get; }
}

/// <summary>
/// A <see cref="ProcessBarrier"/> was broken: reset or aborted while parties waited, a wait timed out, the
/// barrier's action threw, or a party died. Python's <c>threading.BrokenBarrierError</c>.
/// </summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class BrokenBarrierException : MultiprocessingException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">Why the barrier is broken.</param>
    /// <param name="inner">The action's exception, when that is why.</param>
    public BrokenBarrierException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
