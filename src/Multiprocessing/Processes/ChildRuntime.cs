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

        // A spare blocks here until it is given work; if the parent goes away first there is nothing to do.
        var frame = ControlFrames.Read(control);
        if (frame is null) OsProcess.ExitNow(0);

        // SIGTERM keeps its default action (the runtime installs no handler unless the user's code asks for one),
        // so Terminate() kills at once without exit handlers and the parent sees -15, as in Python.

        var job = ProcessJob.Decode(frame);
        foreach (var (name, value) in job.Environment) OsProcess.SetEnvironment(name, value);
        if (Directory.Exists(job.WorkingDirectory)) Directory.SetCurrentDirectory(job.WorkingDirectory);
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
