using System.Collections;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Multiprocessing.Platform;

namespace Multiprocessing.Processes;

/// <summary>A launched child runtime, before or after it has been given its job.</summary>
internal sealed record LaunchedChild(int Pid, Socket Control, IReadOnlyDictionary<string, string> Environment);

/// <summary>
/// Starts child runtimes. The fast path runs this assembly's entry point under the parent's own runtimeconfig and
/// deps (<c>dotnet exec --runtimeconfig P.runtimeconfig.json --depsfile P.deps.json Multiprocessing.dll</c>), so the
/// child resolves every assembly the parent can, and the user's Main is never involved. Where there is no muxer
/// (self-contained apps) it re-runs the parent's own command line with a startup hook that takes over before Main.
/// </summary>
internal static class Launcher
{
    internal const string ChildArgument = "--multiprocessing-child";
    internal const string HookVariable = "MULTIPROCESSING_CHILD";
    internal const string ModeVariable = "MULTIPROCESSING_LAUNCH";

    private static readonly Lazy<Command> Resolved = new(Resolve);
    private static readonly object SpareGate = new();
    private static LaunchedChild? _spare;

    /// <summary>Gets a child runtime ready for a job: the warm spare when the start method allows and the
    /// environment still matches what it booted with, else a new one.</summary>
    internal static LaunchedChild Acquire(StartMethod method, IReadOnlyDictionary<string, string>? extraEnvironment, out IReadOnlyList<KeyValuePair<string, string?>> environmentDelta)
    {
        var environment = CurrentEnvironment();
        if (extraEnvironment is not null)
        {
            foreach (var (key, value) in extraEnvironment) environment[key] = value;
        }

        environmentDelta = [];
        if (method != StartMethod.Prespawn)
        {
            DrainSpare();
            return Launch(environment);
        }

        LaunchedChild? spare;
        lock (SpareGate)
        {
            spare = _spare;
            _spare = null;
        }

        if (spare is not null && (OsProcess.HasExited(spare.Pid, block: false) || !TryDiff(spare.Environment, environment, out environmentDelta)))
        {
            Discard(spare);
            spare = null;
            environmentDelta = [];
        }

        var result = spare ?? Launch(environment);

        // The next spare boots with the plain environment; per-worker variables are applied as a delta.
        var next = Launch(extraEnvironment is null ? environment : CurrentEnvironment());
        lock (SpareGate)
        {
            (_spare, next) = (next, _spare);
        }

        if (next is not null) Discard(next);
        return result;
    }

    /// <summary>Kills and reaps the warm spare, if any.</summary>
    internal static void DrainSpare()
    {
        LaunchedChild? spare;
        lock (SpareGate)
        {
            spare = _spare;
            _spare = null;
        }

        if (spare is not null) Discard(spare);
    }

    private static void Discard(LaunchedChild child)
    {
        OsProcess.Signal(child.Pid, Posix.SIGKILL);
        child.Control.Dispose();
        OsProcess.HasExited(child.Pid, block: true);
        OsProcess.Reap(child.Pid);
    }

    private static LaunchedChild Launch(Dictionary<string, string> environment)
    {
        var command = Resolved.Value;
        var envp = new List<string>(environment.Count + command.Environment.Count);
        foreach (var (key, value) in environment)
        {
            if (!command.Environment.ContainsKey(key)) envp.Add($"{key}={value}");
        }

        foreach (var (key, value) in command.Environment)
        {
            var merged = key == "DOTNET_STARTUP_HOOKS" && environment.TryGetValue(key, out var existing) && existing.Length > 0
                ? existing + Path.PathSeparator + value
                : value;
            envp.Add($"{key}={merged}");
        }

        var (control, childFd) = OsProcess.CreateControlPair();
        try
        {
            int pid = OsProcess.Spawn(command.Path, command.Arguments, envp, childFd);
            return new LaunchedChild(pid, control, environment);
        }
        catch
        {
            control.Dispose();
            throw;
        }
        finally
        {
            OsProcess.Close(childFd);
        }
    }

    private static Dictionary<string, string> CurrentEnvironment()
    {
        // .NET's copy, so Environment.SetEnvironmentVariable before Start reaches the child, as os.environ does.
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            result[(string)entry.Key] = (string?)entry.Value ?? string.Empty;
        }

        return result;
    }

    /// <summary>The variables that changed since a spare booted, unless one of them is read only at boot.</summary>
    private static bool TryDiff(IReadOnlyDictionary<string, string> then, Dictionary<string, string> now, out IReadOnlyList<KeyValuePair<string, string?>> delta)
    {
        var changes = new List<KeyValuePair<string, string?>>();
        foreach (var (key, value) in now)
        {
            if (!then.TryGetValue(key, out var old) || old != value) changes.Add(new(key, value));
        }

        foreach (var key in then.Keys)
        {
            if (!now.ContainsKey(key)) changes.Add(new(key, null));
        }

        delta = changes;
        return !changes.Any(c => c.Key.StartsWith("DOTNET_", StringComparison.Ordinal) || c.Key.StartsWith("COMPlus_", StringComparison.Ordinal)
            || c.Key.StartsWith("LD_", StringComparison.Ordinal) || c.Key.StartsWith("MULTIPROCESSING_", StringComparison.Ordinal));
    }

    private sealed record Command(string Mode, string Path, IReadOnlyList<string> Arguments, IReadOnlyDictionary<string, string> Environment);

    private static Command Resolve()
    {
        var library = typeof(Launcher).Assembly.Location;
        if (string.IsNullOrEmpty(library))
            throw new PlatformNotSupportedException("Multiprocessing.dll has no file location (single-file or in-memory load); children cannot be started.");

        var forced = Environment.GetEnvironmentVariable(ModeVariable);
        if (forced != "hook" && TryExec(library) is { } exec) return exec;

        // The fallback: the parent's exact command line, taken over by a startup hook before its Main runs.
        var cmdline = File.ReadAllText("/proc/self/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);
        var path = Environment.ProcessPath ?? cmdline[0];
        return new Command("hook", path, cmdline, new Dictionary<string, string>
        {
            ["DOTNET_STARTUP_HOOKS"] = library,
            [HookVariable] = "1",
        });
    }

    private static Command? TryExec(string library)
    {
        var muxer = System.IO.Path.GetFullPath(System.IO.Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", "..", "dotnet"));
        var deps = (AppContext.GetData("APP_CONTEXT_DEPS_FILES") as string)?.Split(';', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault();
        if (!File.Exists(muxer) || deps is null || !deps.EndsWith(".deps.json", StringComparison.Ordinal)) return null;
        var runtimeConfig = deps[..^".deps.json".Length] + ".runtimeconfig.json";
        if (!File.Exists(runtimeConfig)) return null;

        var args = new List<string> { muxer, "exec", "--runtimeconfig", runtimeConfig, "--depsfile", deps };
        if (AppContext.GetData("PROBING_DIRECTORIES") is string probing)
        {
            foreach (var dir in probing.Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            {
                args.Add("--additionalprobingpath");
                args.Add(dir);
            }
        }

        args.Add(library);
        args.Add(ChildArgument);
        return new Command("exec", muxer, args, new Dictionary<string, string>());
    }
}
