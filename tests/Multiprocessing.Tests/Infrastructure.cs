using System.Diagnostics;
using System.Reflection;
using System.Text;
using Xunit;

// Tests start real processes and check for leftovers process-wide, so they must not overlap.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Multiprocessing.Tests;

/// <summary>
/// Base class for every test that may start a process: after each test it fails the test if any child process of
/// the test host is still around (running or unreaped), or if the test left a new /dev/shm segment, a bound
/// multiprocessing socket, or a dead child's runtime diagnostic files behind; and it puts the start method back to
/// Spawn.
/// </summary>
public abstract class ProcessTest : IDisposable
{
    private readonly Leaks.Snapshot _before = Leaks.Take();

    public void Dispose()
    {
        Mp.SetStartMethod(StartMethod.Spawn);
        Leaks.AssertNoChildProcesses();
        Leaks.AssertNothingNewSince(_before);
        GC.SuppressFinalize(this);
    }
}

public static class Leaks
{
    /// <summary>Gives children that were just killed or joined a moment to be reaped, then fails if any remain;
    /// the leftovers are killed so that one leak does not fail every later test.</summary>
    public static void AssertNoChildProcesses()
    {
        int self = Environment.ProcessId;
        if (Wait.Until(() => ChildrenOf(self).Count == 0, TimeSpan.FromSeconds(10))) return;
        var leftovers = ChildrenOf(self);
        var report = string.Join("; ", leftovers.Select(pid => $"{pid}: {CommandLine(pid)}"));
        foreach (var pid in leftovers)
        {
            try
            {
                System.Diagnostics.Process.GetProcessById(pid).Kill();
            }
            catch (ArgumentException)
            {
                // Already gone.
            }
        }

        throw new Xunit.Sdk.XunitException($"test left child processes behind: {report}");
    }

    /// <summary>What exists outside the process that a test could leave behind.</summary>
    public sealed record Snapshot(HashSet<string> Segments, HashSet<string> Sockets, HashSet<string> DiagnosticFiles);

    public static Snapshot Take() => new(SharedMemorySegments(), BoundLibrarySockets(), DeadDiagnosticFiles());

    /// <summary>Fails if a /dev/shm segment, a bound socket named for this library, or a runtime diagnostic file of a
    /// process that is gone appeared since <paramref name="before"/> and does not go away within a grace period.</summary>
    public static void AssertNothingNewSince(Snapshot before)
    {
        string[] New() =>
        [
            .. SharedMemorySegments().Except(before.Segments).Select(s => "/dev/shm/" + s),
            .. BoundLibrarySockets().Except(before.Sockets).Select(s => "socket " + s),
            .. DeadDiagnosticFiles().Except(before.DiagnosticFiles),
        ];

        if (Wait.Until(() => New().Length == 0, TimeSpan.FromSeconds(10))) return;
        throw new Xunit.Sdk.XunitException("test left behind: " + string.Join(", ", New()));
    }

    private static HashSet<string> SharedMemorySegments() => [.. Directory.EnumerateFileSystemEntries("/dev/shm").Select(path => Path.GetFileName(path))];

    /// <summary>Bound Unix sockets whose address names this library (listeners and managers use such abstract names
    /// by default), from /proc/net/unix, which lists every bound socket on the machine.</summary>
    private static HashSet<string> BoundLibrarySockets() =>
    [
        .. File.ReadLines("/proc/net/unix").Skip(1)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(fields => fields.Length >= 8 && fields[7].Contains("multiprocessing-", StringComparison.Ordinal))
            .Select(fields => fields[7] + " (inode " + fields[6] + ")"),
    ];

    /// <summary>The .NET runtime's diagnostic socket and debugger pipes in the temp directory whose process is gone:
    /// a runtime that leaves with _exit or is killed cannot remove them itself.</summary>
    private static HashSet<string> DeadDiagnosticFiles()
    {
        var result = new HashSet<string>(StringComparer.Ordinal);
        foreach (var path in Directory.EnumerateFileSystemEntries(Path.GetTempPath()))
        {
            var name = Path.GetFileName(path);
            var prefix = name.StartsWith("dotnet-diagnostic-", StringComparison.Ordinal) ? "dotnet-diagnostic-".Length
                : name.StartsWith("clr-debug-pipe-", StringComparison.Ordinal) ? "clr-debug-pipe-".Length : -1;
            if (prefix < 0) continue;
            var dash = name.IndexOf('-', prefix);
            if (dash > prefix && int.TryParse(name.AsSpan(prefix, dash - prefix), out int pid) && IsDead(pid)) result.Add(path);
        }

        return result;
    }

    public static List<int> ChildrenOf(int parent)
    {
        var result = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            if (ParentOf(pid) == parent) result.Add(pid);
        }

        return result;
    }

    /// <summary>The parent pid from /proc/PID/stat, or null when the process is gone.</summary>
    public static int? ParentOf(int pid)
    {
        var stat = ReadStat(pid);
        if (stat is null) return null;
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[1]);
    }

    /// <summary>Whether a process is gone or only a zombie (dead, waiting to be reaped by whoever adopted it).</summary>
    public static bool IsDead(int pid)
    {
        var stat = ReadStat(pid);
        return stat is null || stat[stat.LastIndexOf(')') + 2] is 'Z' or 'X';
    }

    private static string? ReadStat(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim();
        }
        catch (IOException)
        {
            return "(gone)";
        }
    }
}

public static class Wait
{
    /// <summary>Polls <paramref name="condition"/> until it holds or the deadline passes.</summary>
    public static bool Until(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (deadline.Elapsed > timeout) return false;
            Thread.Sleep(10);
        }

        return true;
    }
}

/// <summary>A scratch directory that children write their results into; deleted afterwards.</summary>
public sealed class Scratch : IDisposable
{
    public Scratch() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "mp-tests-" + Guid.NewGuid().ToString("N"));

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Read(string name) => System.IO.File.ReadAllText(File(name));

    public void Dispose() => Directory.Delete(Path, recursive: true);
}

/// <summary>Paths that the test project's build wrote into the test assembly.</summary>
public static class BuildInfo
{
    public static string Get(string key) =>
        typeof(BuildInfo).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value ?? string.Empty;
}

/// <summary>Runs the test app (a plain console app using the library) as a separate parent process.</summary>
public sealed class TestApp : IDisposable
{
    private readonly System.Diagnostics.Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly TaskCompletionSource _outputClosed = new();
    private readonly TaskCompletionSource _errorClosed = new();

    private TestApp(string dll, IEnumerable<string> args, IDictionary<string, string>? environment)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(dll);
        foreach (var arg in args) start.ArgumentList.Add(arg);

        // Tests kill the app on purpose, and a killed runtime cannot remove its diagnostic socket and pipes.
        start.Environment["DOTNET_EnableDiagnostics"] = "0";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) start.Environment[key] = value;
        _process = new System.Diagnostics.Process { StartInfo = start };
        _process.OutputDataReceived += (_, e) => Append(_stdout, e.Data, _outputClosed);
        _process.ErrorDataReceived += (_, e) => Append(_stderr, e.Data, _errorClosed);
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public static string BuiltPath => BuildInfo.Get("TestAppPath");

    public static string ProjectPath => BuildInfo.Get("TestAppProject");

    public int Pid => _process.Id;

    public string Stdout
    {
        get
        {
            lock (_stdout) return _stdout.ToString();
        }
    }

    public string Stderr
    {
        get
        {
            lock (_stderr) return _stderr.ToString();
        }
    }

    public bool HasExited => _process.HasExited;

    public static TestApp Start(params string[] args) => new(BuiltPath, args, null);

    public static TestApp StartFrom(string dll, IDictionary<string, string>? environment, params string[] args) => new(dll, args, environment);

    /// <summary>Waits for the app to exit and its output to be fully read.</summary>
    public int WaitForExit(TimeSpan? timeout = null)
    {
        if (!_process.WaitForExit(timeout ?? TimeSpan.FromSeconds(30)))
            throw new TimeoutException($"test app still running; stdout: {Stdout} stderr: {Stderr}");
        Task.WaitAll([_outputClosed.Task, _errorClosed.Task], TimeSpan.FromSeconds(10));
        return _process.ExitCode;
    }

    /// <summary>Waits for a "key=value" line on stdout and returns the value.</summary>
    public string WaitForValue(string key, TimeSpan? timeout = null)
    {
        string? value = null;
        bool found = Wait.Until(
            () =>
            {
                value = Stdout.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith(key + "=", StringComparison.Ordinal))?[(key.Length + 1)..];
                return value is not null || _process.HasExited;
            },
            timeout ?? TimeSpan.FromSeconds(30));
        return found && value is not null ? value : throw new TimeoutException($"no '{key}=' line; stdout: {Stdout} stderr: {Stderr}");
    }

    /// <summary>Waits for a line on stdout.</summary>
    public void WaitForLine(string line, TimeSpan? timeout = null)
    {
        if (!Wait.Until(() => Stdout.Split('\n').Any(l => l.Trim() == line) || _process.HasExited, timeout ?? TimeSpan.FromSeconds(30))
            || !Stdout.Split('\n').Any(l => l.Trim() == line))
            throw new TimeoutException($"no '{line}' line; stdout: {Stdout} stderr: {Stderr}");
    }

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit();
        _process.Dispose();
    }

    private static void Append(StringBuilder sink, string? line, TaskCompletionSource closed)
    {
        if (line is null)
        {
            closed.TrySetResult();
            return;
        }

        lock (sink) sink.AppendLine(line);
    }
}
