namespace Multiprocessing;

/// <summary>
/// Describes a process of this process tree that the caller does not control: the current process
/// (<see cref="Mp.CurrentProcess"/>) or its parent (<see cref="Mp.ParentProcess"/>), as Python's
/// <c>current_process()</c> and <c>parent_process()</c>.
/// </summary>
/// <remarks>Thread-safe. A parent is seen as dead when its control channel to this process closes; a child then
/// has <see cref="Mp.ParentExitGracePeriod"/> to finish before it exits too.</remarks>
public sealed class ProcessInfo
{
    private readonly Task _exited;
    private readonly bool _isCurrent;

    internal ProcessInfo(string name, int pid, bool daemon, Task exited, bool isCurrent)
    {
        Name = name;
        Pid = pid;
        Daemon = daemon;
        _exited = exited;
        _isCurrent = isCurrent;
    }

    /// <summary>The process's name: "MainProcess" for the main process, else the name its parent gave it.</summary>
    public string Name { get; }

    /// <summary>The operating-system process id.</summary>
    public int Pid { get; }

    /// <summary>Whether the process was started as a daemon.</summary>
    public bool Daemon { get; }

    /// <summary>Whether the process is still running.</summary>
    public bool IsAlive => !_exited.IsCompleted;

    /// <summary>Waits for the process to exit.</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>True if the process has exited.</returns>
    /// <exception cref="InvalidOperationException">This describes the current process, which cannot wait for itself.</exception>
    public bool Join(TimeSpan? timeout = null)
    {
        ThrowIfCurrent();
        return _exited.Wait(timeout ?? Timeout.InfiniteTimeSpan);
    }

    /// <summary>Waits for the process to exit without blocking a thread.</summary>
    /// <exception cref="InvalidOperationException">This describes the current process.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first.</exception>
    public Task JoinAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfCurrent();
        return _exited.WaitAsync(cancellationToken);
    }

    /// <inheritdoc/>
    public override string ToString() => $"<ProcessInfo name='{Name}' pid={Pid}{(Daemon ? " daemon" : string.Empty)}{(IsAlive ? string.Empty : " stopped")}>";

    private void ThrowIfCurrent()
    {
        if (_isCurrent) throw new InvalidOperationException($"Process '{Name}' cannot join itself.");
    }
}
