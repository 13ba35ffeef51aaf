namespace Multiprocessing;

/// <summary>The root of the library's own exceptions: failures that happened in, or to, another process.
/// Misuse of the API throws BCL exceptions instead.</summary>
public abstract class MultiprocessingException : Exception
{
    /// <summary>Creates the exception.</summary>
    protected MultiprocessingException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}

/// <summary>
/// User code threw in another process. Carries what the remote exception was: its type name, message and stack
/// trace (the exception object itself stays behind: its type may not even exist here).
/// </summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class RemoteException : MultiprocessingException
{
    /// <summary>Creates a remote exception from its parts.</summary>
    /// <param name="remoteTypeName">The full name of the exception type thrown remotely.</param>
    /// <param name="remoteMessage">Its message.</param>
    /// <param name="remoteStackTrace">Its stack trace, as the remote process printed it.</param>
    /// <param name="remoteDetails">Its full text (ToString), inner exceptions included.</param>
    public RemoteException(string remoteTypeName, string remoteMessage, string remoteStackTrace, string remoteDetails)
        : base($"{remoteTypeName}: {remoteMessage}")
    {
        RemoteTypeName = remoteTypeName;
        RemoteMessage = remoteMessage;
        RemoteStackTrace = remoteStackTrace;
        RemoteDetails = remoteDetails;
    }

    /// <summary>The full name of the exception type thrown remotely, e.g. "System.InvalidOperationException".</summary>
    public string RemoteTypeName { get; }

    /// <summary>The remote exception's message.</summary>
    public string RemoteMessage { get; }

    /// <summary>The remote exception's stack trace.</summary>
    public string RemoteStackTrace { get; }

    /// <summary>The remote exception's full text, inner exceptions included.</summary>
    public string RemoteDetails { get; }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{base.ToString()}{Environment.NewLine}--- remote exception ---{Environment.NewLine}{RemoteDetails}";

    internal static RemoteException From(Exception ex) =>
        new(ex.GetType().FullName ?? ex.GetType().Name, ex.Message, ex.StackTrace ?? string.Empty, ex.ToString());
}

/// <summary>The worker process running a task died before it could answer: killed by a signal, crashed, or exited.</summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class WorkerLostException : MultiprocessingException
{
    /// <summary>Creates the exception for a worker that exited with <paramref name="exitCode"/>.</summary>
    /// <param name="pid">The worker's process id.</param>
    /// <param name="exitCode">Its exit code as Python reports it (minus the signal number for a death by signal).</param>
    public WorkerLostException(int pid, int exitCode)
        : base(exitCode < 0
            ? $"The worker process {pid} running this task was killed by signal {-exitCode} ({SignalName(-exitCode)})."
            : $"The worker process {pid} running this task exited with code {exitCode} before finishing it.")
    {
        Pid = pid;
        ExitCode = exitCode;
    }

    /// <summary>The lost worker's process id.</summary>
    public int Pid { get; }

    /// <summary>Its exit code: minus the signal number when a signal killed it.</summary>
    public int ExitCode { get; }

    private static string SignalName(int signal) => signal switch
    {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal " + signal,
    };
}

/// <summary>The pool was terminated (or disposed) before the task completed.</summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class PoolTerminatedException : MultiprocessingException
{
    /// <summary>Creates the exception.</summary>
    public PoolTerminatedException()
        : base("The pool was terminated before this task completed.")
    {
    }
}

/// <summary>
/// The pool stopped because it can no longer run tasks, as concurrent.futures' <c>BrokenProcessPool</c>: a worker's
/// initializer threw (Python's Pool instead starts replacement workers, each failing the same way, for as long as it
/// lives), or no worker was left and none could be started. Its workers are killed, every pending task fails with
/// this exception, and new work is refused with it.
/// </summary>
/// <remarks>Immutable; safe to share between threads.</remarks>
public sealed class PoolBrokenException : MultiprocessingException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">Why the pool stopped.</param>
    /// <param name="innerException">The cause: the initializer's <see cref="RemoteException"/>, or the error that
    /// kept a worker from starting.</param>
    public PoolBrokenException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>What a worker's initializer threw, when that is why the pool stopped; otherwise null.</summary>
    public RemoteException? InitializerError => InnerException as RemoteException;
}
