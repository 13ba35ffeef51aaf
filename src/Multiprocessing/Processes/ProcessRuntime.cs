using Microsoft.Extensions.Logging;

namespace Multiprocessing.Processes;

/// <summary>What this process knows about its own place in the tree, and the children it has started.</summary>
internal static class ProcessRuntime
{
    private static readonly HashSet<ChildProcess> Children = [];
    private static int _childCounter;
    private static int _exitHookInstalled;

    internal static ProcessInfo Current { get; private set; } =
        new("MainProcess", Environment.ProcessId, daemon: false, new TaskCompletionSource().Task, isCurrent: true);

    internal static ProcessInfo? Parent { get; private set; }

    internal static int[] Identity { get; private set; } = [];

    internal static ILogger Logger => Mp.LoggerFactory.CreateLogger("Multiprocessing");

    /// <summary>Python names children "Process-1", and a child's own children "Process-1:1".</summary>
    internal static int[] NextChildIdentity() => [.. Identity, Interlocked.Increment(ref _childCounter)];

    internal static void BecomeChild(ProcessJob job, Task parentExited)
    {
        Identity = job.Identity;
        Current = new ProcessInfo(job.Name, Environment.ProcessId, job.Daemon, new TaskCompletionSource().Task, isCurrent: true);
        Parent = new ProcessInfo(job.ParentName, job.ParentPid, daemon: false, parentExited, isCurrent: false);
    }

    internal static void Track(ChildProcess child)
    {
        if (Interlocked.Exchange(ref _exitHookInstalled, 1) == 0) AppDomain.CurrentDomain.ProcessExit += (_, _) => OnExit();
        lock (Children) Children.Add(child);
    }

    internal static void Untrack(ChildProcess child)
    {
        lock (Children) Children.Remove(child);
    }

    internal static ChildProcess[] Snapshot()
    {
        lock (Children) return [.. Children];
    }

    /// <summary>What a child does before it leaves with _exit, as Python's children do: its own children are dealt
    /// with as at a normal exit.</summary>
    internal static void RunExitHandler()
    {
        if (Volatile.Read(ref _exitHookInstalled) == 1) OnExit();
    }

    /// <summary>Python's exit handler: daemons are terminated, everyone else is waited for.</summary>
    private static void OnExit()
    {
        var children = Snapshot();
        foreach (var child in children)
        {
            if (child.Daemon) child.Terminate();
        }

        foreach (var child in children) child.Join();
        Launcher.DrainSpare();
    }
}
