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
    private static readonly List<LaunchedChild> Spares = [];

    // How many spares to keep: one for Process, as many as the largest pool started under Prespawn (so a pool made
    // again, or a pool's replacement workers, start from booted runtimes), at most MaxSpares.
    private static int _spareTarget = 1;

    /// <summary>The most warm spares kept, whatever pools ask for: each is an idle runtime's memory.</summary>
    internal static int MaxSpares => Math.Max(2, 2 * Environment.ProcessorCount);

    /// <summary>Under Prespawn, keeps at least <paramref name="count"/> spares from now on (at most
    /// <see cref="MaxSpares"/>); they are launched by later Acquires and <see cref="Replenish"/> calls.</summary>
    internal static void Reserve(int count)
    {
        lock (SpareGate) _spareTarget = Math.Clamp(count, _spareTarget, MaxSpares);
    }

    /// <summary>Under Prespawn, launches spares until there are as many as wanted.</summary>
    internal static void Replenish()
    {
        if (Mp.StartMethod == StartMethod.Prespawn) TopUp(CurrentEnvironment());
    }

    /// <summary>Gets a child runtime ready for a job: a warm spare when the start method allows and the
    /// environment still matches what it booted with, else a new one.</summary>
    /// <param name="method">The start method in force.</param>
    /// <param name="extraEnvironment">Variables for this child only, on top of the current environment.</param>
    /// <param name="environmentDelta">What the child must set before its job runs (a spare booted earlier).</param>
    /// <param name="replenish">Whether to launch the replacement spares now; otherwise the caller calls
    /// <see cref="Replenish"/> later.</param>
    internal static LaunchedChild Acquire(StartMethod method, IReadOnlyDictionary<string, string>? extraEnvironment, out IReadOnlyList<KeyValuePair<string, string?>> environmentDelta,
        bool replenish = true)
    {
        var environment = CurrentEnvironment();
        var plain = extraEnvironment is null ? environment : new Dictionary<string, string>(environment, StringComparer.Ordinal);
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

        LaunchedChild? taken = null;
        List<LaunchedChild> stale = [];
        lock (SpareGate)
        {
            // Oldest first: it has had the longest to boot.
            while (taken is null && Spares.Count > 0)
            {
                var spare = Spares[0];
                Spares.RemoveAt(0);
                if (!OsProcess.HasExited(spare.Pid, block: false) && TryDiff(spare.Environment, environment, out environmentDelta)) taken = spare;
                else stale.Add(spare);
            }
        }

        foreach (var spare in stale) Discard(spare);
        if (taken is null) environmentDelta = [];
        var result = taken ?? Launch(environment);

        // Spares boot with the plain environment; per-worker variables are applied as a delta.
        if (replenish) TopUp(plain);
        return result;
    }

    /// <summary>Kills and reaps the warm spares, if any, and goes back to keeping one.</summary>
    internal static void DrainSpare()
    {
        LaunchedChild[] spares;
        lock (SpareGate)
        {
            spares = [.. Spares];
            Spares.Clear();
            _spareTarget = 1;
        }

        foreach (var spare in spares) Discard(spare);
    }

    /// <summary>Launches spares until there are as many as wanted.</summary>
    private static void TopUp(Dictionary<string, string> environment)
    {
        while (true)
        {
            lock (SpareGate)
            {
                if (Spares.Count >= _spareTarget) return;
            }

            var spare = Launch(environment);
            bool kept;
            lock (SpareGate)
            {
                // Another thread may have filled the list meanwhile, or switched to another start method and drained
                // it: a spare launched across that switch would be left behind.
                kept = Mp.StartMethod == StartMethod.Prespawn && Spares.Count < _spareTarget;
                if (kept) Spares.Add(spare);
            }

            if (!kept)
            {
                Discard(spare);
                return;
            }
        }
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

        // The runtime's diagnostic socket and debugger pipes in the temp directory outlive a child that leaves with
        // _exit or is killed, so children run without them unless the environment asks for them.
        bool diagnostics = DiagnosticsEnabled(environment);
        if (!environment.ContainsKey(DiagnosticsVariable) && !environment.ContainsKey(LegacyDiagnosticsVariable)) envp.Add(DiagnosticsVariable + "=0");

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
            if (diagnostics)
            {
                var temp = environment.TryGetValue("TMPDIR", out var dir) && dir.Length > 0 ? dir : "/tmp";
                OsProcess.RemoveDiagnosticFilesOnReap(pid, temp);
            }

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

    private const string DiagnosticsVariable = "DOTNET_EnableDiagnostics";
    private const string LegacyDiagnosticsVariable = "COMPlus_EnableDiagnostics";

    /// <summary>Whether a child with this environment opens the runtime's diagnostic socket and debugger pipes; an
    /// environment that does not name the setting gets it switched off.</summary>
    private static bool DiagnosticsEnabled(Dictionary<string, string> environment) =>
        (environment.TryGetValue(DiagnosticsVariable, out var value) || environment.TryGetValue(LegacyDiagnosticsVariable, out value)) && value.Trim() != "0";

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
