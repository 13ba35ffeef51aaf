using System.Runtime.Loader;
using Multiprocessing.Platform;
using Multiprocessing.Serialization;

namespace Multiprocessing.Processes;

/// <summary>
/// The child's side: wait for a job on descriptor 3, become the described process, run the target, exit.
/// A dedicated thread watches descriptor 3 for the rest of the child's life: when it closes, the parent is gone
/// (even if it was SIGKILLed), and the child follows after a short grace period. Nothing here depends on which
/// thread of the parent started the child, unlike PR_SET_PDEATHSIG.
/// </summary>
internal static class ChildRuntime
{
    /// <summary>The control descriptor, for a target started with <see cref="ProcessJob.OwnsChannel"/>.</summary>
    internal static int Channel { get; private set; } = -1;

    /// <summary>Runs the child and returns its exit code.</summary>
    internal static int Run()
    {
        const int control = OsProcess.ChildControlFd;
        OsProcess.SetCloseOnExec(control);

        // A spare blocks here until it is given work; if the parent goes away first there is nothing to do. A
        // child whose job is not there yet (a spare, booted ahead of need) first runs the steps every job takes, so
        // that the job, when it comes, does not pay for their first run; a job already waiting goes first.
        if (!OsIo.WaitReadable(control, 0)) WarmUp();
        var frame = ControlFrames.Read(control);
        if (frame is null) OsProcess.ExitNow(0);

        // SIGTERM keeps its default action (the runtime installs no handler unless the user's code asks for one),
        // so Terminate() kills at once without exit handlers and the parent sees -15, as in Python.

        var job = ProcessJob.Decode(frame);
        foreach (var (name, value) in job.Environment) OsProcess.SetEnvironment(name, value);
        OsProcess.TryChangeDirectory(job.WorkingDirectory);
        InstallAssemblyPaths(job.Assemblies);

        var parentExited = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ProcessRuntime.BecomeChild(job, parentExited.Task);
        if (job.OwnsChannel)
        {
            // The target reads the channel itself and treats its end as the parent's death.
            Channel = control;
        }
        else
        {
            var lifeline = new Thread(() => WatchParent(control, parentExited, job.ParentExitGracePeriod))
            {
                IsBackground = true,
                Name = "Multiprocessing parent lifeline",
            };
            lifeline.Start();
        }

        try
        {
            if (job.Kind == JobKind.PoolWorker)
            {
                Pool.PoolWorker.Start(job.Target);
                return 0;
            }

            var target = DelegateSerializer.Deserialize(job.Target);
            switch (target)
            {
                case Action action:
                    action();
                    break;
                case Func<Task> asyncAction:
                    asyncAction().GetAwaiter().GetResult();
                    break;
                default:
                    throw new NotSupportedException($"a target of type {target.GetType()} cannot be run");
            }

            return 0;
        }
        catch (Exception ex)
        {
            // Python prints the traceback under the process's name and exits with 1.
            Console.Error.WriteLine($"Process {job.Name}:{Environment.NewLine}{ex}");
            return 1;
        }
    }

    /// <summary>
    /// Runs once what taking a job runs: decoding a job and a delegate whose closure holds fields, as a pool
    /// worker's does. The first call of each precompiled method binds its call sites and loads its types, and that,
    /// not the work itself, is most of the 8-10 ms a fresh runtime takes from its job to its first task; a spare
    /// pays it while it waits. Nothing it touches outlives it but those bindings and type loads.
    /// </summary>
    private static void WarmUp()
    {
        Action? initializer = null;
        int index = Environment.ProcessId;
        var sample = new ProcessJob
        {
            Name = "warm-up", Identity = [index], Daemon = true, ParentPid = index, ParentName = "warm-up",
            WorkingDirectory = Directory.GetCurrentDirectory(), ParentExitGracePeriod = TimeSpan.FromSeconds(1), OwnsChannel = true,
            Environment = [new("MULTIPROCESSING_WARM_UP", null)], Assemblies = [],
            Target = DelegateSerializer.Serialize(() => initializer?.Invoke()),
        };
        var job = ProcessJob.Decode(sample.Encode().ToArray());
        var target = DelegateSerializer.Deserialize(job.Target);
        GC.KeepAlive(target);
    }

    private static void WatchParent(int control, TaskCompletionSource parentExited, TimeSpan grace)
    {
        // Frames after the job are reserved for later use; only the end of the stream matters here.
        while (ControlFrames.Read(control) is not null)
        {
        }

        parentExited.TrySetResult();
        Thread.Sleep(grace);
        OsProcess.ExitNow(1);
    }

    private static void InstallAssemblyPaths(IReadOnlyList<KeyValuePair<string, string>> assemblies)
    {
        if (assemblies.Count == 0) return;
        var byName = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var (name, path) in assemblies) byName[name] = path;
        AssemblyLoadContext.Default.Resolving += (context, name) =>
            name.Name is not null && byName.TryGetValue(name.Name, out var path) && File.Exists(path)
                ? context.LoadFromAssemblyPath(path)
                : null;
    }

    /// <summary>The assemblies a child will not find through the app's own probing: loaded from other paths.</summary>
    internal static IReadOnlyList<KeyValuePair<string, string>> ForeignAssemblies()
    {
        var trusted = TrustedAssemblies.Value;
        var result = new List<KeyValuePair<string, string>>();
        foreach (var assembly in AppDomain.CurrentDomain.GetAssemblies())
        {
            if (assembly.IsDynamic || string.IsNullOrEmpty(assembly.Location) || trusted.Contains(assembly.Location)) continue;
            result.Add(new(assembly.GetName().Name!, assembly.Location));
        }

        return result;
    }

    private static readonly Lazy<HashSet<string>> TrustedAssemblies = new(() =>
        new HashSet<string>(
            ((AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string) ?? string.Empty).Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries),
            StringComparer.Ordinal));
}
