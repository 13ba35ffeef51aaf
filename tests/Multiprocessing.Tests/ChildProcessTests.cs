using Xunit;

namespace Multiprocessing.Tests;

public sealed class ChildProcessTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void Start_and_join_a_static_method_gives_exit_code_zero()
    {
        var p = Mp.Process(Empty);
        Assert.Null(p.Pid);
        Assert.Null(p.ExitCode);
        Assert.False(p.IsAlive);
        p.Start();
        Assert.NotNull(p.Pid);
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.False(p.IsAlive);
    }

    [Fact]
    public void Unhandled_exception_gives_exit_code_one()
    {
        var p = Mp.Process(() => throw new InvalidOperationException("boom"));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(1, p.ExitCode);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(42)]
    [InlineData(255)]
    public void Environment_exit_code_is_reported(int code)
    {
        var p = Mp.Process(() => Environment.Exit(code));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(code, p.ExitCode);
    }

    [Fact]
    public void Kill_gives_minus_nine_and_terminate_gives_minus_fifteen()
    {
        using var scratch = new Scratch();
        var started = scratch.File("started");
        var killed = Mp.Process(() => SignalThenSleep(started + ".k"));
        var terminated = Mp.Process(() => SignalThenSleep(started + ".t"));
        killed.Start();
        terminated.Start();
        Assert.True(Wait.Until(() => File.Exists(started + ".k") && File.Exists(started + ".t"), Guard));
        Assert.True(killed.IsAlive);
        Assert.False(killed.Join(TimeSpan.FromMilliseconds(50)));

        killed.Kill();
        terminated.Terminate();
        Assert.True(killed.Join(Guard));
        Assert.True(terminated.Join(Guard));
        Assert.Equal(-9, killed.ExitCode);
        Assert.Equal(-15, terminated.ExitCode);

        // Signalling a process that has exited does nothing, as in Python.
        killed.Kill();
        terminated.Terminate();
        Assert.Equal(-9, killed.ExitCode);
    }

    [Fact]
    public async Task JoinAsync_completes_and_honours_cancellation()
    {
        using var scratch = new Scratch();
        var go = scratch.File("go");
        var p = Mp.Process(() => WaitForFile(go));
        p.Start();
        using (var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100)))
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => p.JoinAsync(cts.Token));
        }

        Assert.True(p.IsAlive);
        File.WriteAllText(go, "go");
        await p.JoinAsync().WaitAsync(Guard);
        Assert.Equal(0, p.ExitCode);
    }

    [Fact]
    public void Names_follow_python_and_can_be_set()
    {
        var first = Mp.Process(Empty);
        var second = Mp.Process(Empty);
        Assert.Matches(@"^Process-\d+$", first.Name);
        Assert.NotEqual(first.Name, second.Name);
        var named = Mp.Process(Empty, name: "worker");
        Assert.Equal("worker", named.Name);
        named.Name = "renamed";
        Assert.Equal("renamed", named.Name);
        Assert.Throws<ArgumentNullException>(() => named.Name = null!);
        Assert.Contains("renamed", named.ToString());
    }

    [Fact]
    public void Child_sees_its_name_pid_daemon_flag_and_parent()
    {
        using var scratch = new Scratch();
        var path = scratch.File("me");
        var p = Mp.Process(() => File.WriteAllText(path, $"{Mp.CurrentProcess.Name}|{Mp.CurrentProcess.Pid}|{Mp.CurrentProcess.Daemon}|{Mp.ParentProcess!.Name}|{Mp.ParentProcess.Pid}|{Mp.ParentProcess.IsAlive}"), name: "reporter", daemon: true);
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal($"reporter|{p.Pid}|True|MainProcess|{Environment.ProcessId}|True", scratch.Read("me"));
    }

    [Fact]
    public void Main_process_is_named_MainProcess_and_has_no_parent()
    {
        Assert.Equal("MainProcess", Mp.CurrentProcess.Name);
        Assert.Equal(Environment.ProcessId, Mp.CurrentProcess.Pid);
        Assert.False(Mp.CurrentProcess.Daemon);
        Assert.True(Mp.CurrentProcess.IsAlive);
        Assert.Null(Mp.ParentProcess);
        Assert.Throws<InvalidOperationException>(() => Mp.CurrentProcess.Join(TimeSpan.Zero));
        Assert.Equal(Environment.ProcessorCount, Mp.CpuCount);
        Assert.True(Mp.CpuCount >= 1);
    }

    [Fact]
    public void Active_children_lists_running_children_only()
    {
        using var scratch = new Scratch();
        var go = scratch.File("go");
        var p = Mp.Process(() => WaitForFile(go));
        Assert.DoesNotContain(p, Mp.ActiveChildren());
        p.Start();
        Assert.Contains(p, Mp.ActiveChildren());
        File.WriteAllText(go, "go");
        Assert.True(p.Join(Guard));
        Assert.DoesNotContain(p, Mp.ActiveChildren());
    }

    [Fact]
    public void Misuse_throws_invalid_operation_with_a_clear_message()
    {
        using var scratch = new Scratch();
        var go = scratch.File("go");
        var p = Mp.Process(() => WaitForFile(go));
        Assert.Contains("not been started", Assert.Throws<InvalidOperationException>(() => p.Join()).Message);
        Assert.Contains("not been started", Assert.Throws<InvalidOperationException>(() => p.Kill()).Message);
        Assert.Contains("not been started", Assert.Throws<InvalidOperationException>(() => p.Terminate()).Message);
        p.Start();
        Assert.Contains("already been started", Assert.Throws<InvalidOperationException>(() => p.Start()).Message);
        Assert.Contains("Daemon", Assert.Throws<InvalidOperationException>(() => p.Daemon = true).Message);
        Assert.Contains("still running", Assert.Throws<InvalidOperationException>(() => p.Close()).Message);

        File.WriteAllText(go, "go");
        Assert.True(p.Join(Guard));
        p.Close();
        p.Close();
        Assert.Contains("closed", Assert.Throws<InvalidOperationException>(() => p.Join()).Message);
        Assert.Contains("closed", Assert.Throws<InvalidOperationException>(() => p.Start()).Message);
        Assert.Contains("closed", Assert.Throws<InvalidOperationException>(() => p.Kill()).Message);
        Assert.Equal(0, p.ExitCode);
    }

    [Fact]
    public void Null_target_and_unknown_start_method_are_rejected()
    {
        Assert.Throws<ArgumentNullException>(() => Mp.Process((Action)null!));
        Assert.Throws<ArgumentNullException>(() => Mp.Process((Func<Task>)null!));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.SetStartMethod((StartMethod)42));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.ParentExitGracePeriod = TimeSpan.FromSeconds(-1));
    }

    [Fact]
    public void Dispose_kills_a_running_child_and_closes()
    {
        var p = Mp.Process(() => Thread.Sleep(Timeout.Infinite));
        p.Start();
        p.Dispose();
        Assert.Equal(-9, p.ExitCode);
        Assert.Throws<InvalidOperationException>(() => p.Join());
        p.Dispose();
    }

    [Fact]
    public async Task DisposeAsync_kills_a_running_child()
    {
        var p = Mp.Process(() => Thread.Sleep(Timeout.Infinite));
        p.Start();
        await p.DisposeAsync();
        Assert.Equal(-9, p.ExitCode);
    }

    [Fact]
    public void Environment_and_working_directory_changes_reach_the_child()
    {
        using var scratch = new Scratch();
        var path = scratch.File("env");
        var cwd = Environment.CurrentDirectory;
        Environment.SetEnvironmentVariable("MP_TEST_VALUE", "from-parent");
        try
        {
            Environment.CurrentDirectory = scratch.Path;
            var p = Mp.Process(() => File.WriteAllText(path, Environment.GetEnvironmentVariable("MP_TEST_VALUE") + "|" + Environment.CurrentDirectory));
            p.Start();
            Assert.True(p.Join(Guard));
            Assert.Equal($"from-parent|{scratch.Path}", scratch.Read("env"));
        }
        finally
        {
            Environment.CurrentDirectory = cwd;
            Environment.SetEnvironmentVariable("MP_TEST_VALUE", null);
        }
    }

    internal static void Empty()
    {
    }

    internal static void WaitForFile(string path)
    {
        if (!Wait.Until(() => File.Exists(path), Guard)) Environment.Exit(99);
    }

    private static void SignalThenSleep(string started)
    {
        File.WriteAllText(started, "up");
        Thread.Sleep(Timeout.Infinite);
    }
}
