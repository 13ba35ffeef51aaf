using System.Diagnostics;
using System.Reflection;
using System.Text;
using Xunit;

// Tests start real processes and check for leftovers process-wide, so they must not overlap.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Multiprocessing.Tests;

/// <summary>
/// Base class for every test that may start a process: after each test it fails the test if any child process of
/// the test host is still around (running or unreaped), and it puts the start method back to Spawn.
/// </summary>
public abstract class ProcessTest : IDisposable
{
    public void Dispose()
    {
        Mp.SetStartMethod(StartMethod.Spawn);
        Leaks.AssertNoChildProcesses();
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
