using Multiprocessing.Platform;
using Xunit;

namespace Multiprocessing.Tests;

public sealed class LifetimeTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData("orphans", 2)]
    [InlineData("orphans-prespawn", 3)]
    public void When_the_parent_is_sigkilled_every_child_exits_within_two_seconds(string scenario, int expectedChildren)
    {
        using var app = TestApp.Start(scenario);
        app.WaitForValue("pids");

        // Every child of the app counts, the warm spare of Prespawn included.
        Assert.True(Wait.Until(() => Leaks.ChildrenOf(app.Pid).Count == expectedChildren, TimeSpan.FromSeconds(30)));
        var pids = Leaks.ChildrenOf(app.Pid).ToArray();
        Assert.All(pids, pid => Assert.False(Leaks.IsDead(pid)));

        OsProcess.Signal(app.Pid, Posix.SIGKILL);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.True(Wait.Until(() => pids.All(Leaks.IsDead), TimeSpan.FromSeconds(10)), "children outlived their SIGKILLed parent");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"children took {clock.Elapsed.TotalMilliseconds:F0} ms to exit");
    }

    [Fact]
    public void At_normal_exit_daemons_are_terminated_and_other_children_are_joined()
    {
        using var scratch = new Scratch();
        var go = scratch.File("go");
        using var app = TestApp.Start("exit-with-children", go);
        var pids = app.WaitForValue("pids").Split(',').Select(int.Parse).ToArray();
        app.WaitForLine("main-returning");

        // Main has returned, yet the app waits for its non-daemon child; the daemon is gone.
        Assert.True(Wait.Until(() => Leaks.IsDead(pids[0]), Guard), "the daemon child was not terminated at exit");
        Assert.False(app.HasExited);
        Assert.False(Leaks.IsDead(pids[1]));

        File.WriteAllText(go, "go");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("worker-finished", app.Stdout);
        Assert.True(Wait.Until(() => Leaks.IsDead(pids[1]), Guard));
    }

    [Fact]
    public void A_child_outlives_the_thread_that_started_it()
    {
        using var scratch = new Scratch();
        var go = scratch.File("go");
        var done = scratch.File("done");
        var p = Mp.Process(() =>
        {
            ChildProcessTests.WaitForFile(go);
            File.WriteAllText(done, "done");
        });

        // PR_SET_PDEATHSIG would kill the child when this short-lived thread exits.
        var starter = new Thread(p.Start);
        starter.Start();
        starter.Join();
        Assert.True(p.IsAlive);

        File.WriteAllText(go, "go");
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal("done", scratch.Read("done"));
    }

    [Fact]
    public void A_grandchild_sees_its_parent_die_then_exits_after_the_grace_period()
    {
        using var scratch = new Scratch();
        var pidFile = scratch.File("grandchild-pid");
        var report = scratch.File("report");
        var child = Mp.Process(() =>
        {
            var grandchild = Mp.Process(() =>
            {
                var parent = Mp.ParentProcess!;
                var aliveBefore = parent.IsAlive;
                File.WriteAllText(pidFile + ".tmp", Environment.ProcessId.ToString());
                File.Move(pidFile + ".tmp", pidFile);
                var joined = parent.Join(TimeSpan.FromSeconds(20));
                File.WriteAllText(report, $"{aliveBefore}|{joined}|{parent.IsAlive}");
                Thread.Sleep(Timeout.Infinite);
            });
            grandchild.Start();
            Thread.Sleep(Timeout.Infinite);
        });
        child.Start();
        Assert.True(Wait.Until(() => File.Exists(pidFile), Guard));
        int grandchildPid = int.Parse(File.ReadAllText(pidFile));

        child.Terminate();
        Assert.True(child.Join(Guard));
        Assert.Equal(-15, child.ExitCode);

        Assert.True(Wait.Until(() => File.Exists(report) && File.ReadAllText(report).Length > 0, Guard));
        Assert.Equal("True|True|False", File.ReadAllText(report));
        Assert.True(Wait.Until(() => Leaks.IsDead(grandchildPid), TimeSpan.FromSeconds(5)), "grandchild outlived its grace period");
    }
}

public sealed class ConsoleAppTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(60);

    [Fact]
    public void Works_from_a_plain_console_app()
    {
        using var app = TestApp.Start("basic");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("exitcode=7", app.Stdout);
    }

    [Fact]
    public void Child_output_appears_on_the_parents_stdout_and_stderr()
    {
        using var app = TestApp.Start("output");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("child-stdout-line", app.Stdout);
        Assert.Contains("child-stderr-line", app.Stderr);
        Assert.DoesNotContain("child-stderr-line", app.Stdout);
        Assert.Contains("exitcode=0", app.Stdout);
    }

    [Fact]
    public void An_unhandled_exception_prints_type_message_and_stack_to_the_childs_stderr()
    {
        using var app = TestApp.Start("throw");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("exitcode=1", app.Stdout);
        Assert.Contains("Process thrower:", app.Stderr);
        Assert.Contains("System.InvalidOperationException: boom from the child", app.Stderr);
        Assert.Contains("at Thrower.Fail(", app.Stderr);
    }

    [Fact]
    public void The_startup_hook_launcher_works_where_the_muxer_path_is_not_used()
    {
        using var app = TestApp.StartFrom(TestApp.BuiltPath, new Dictionary<string, string> { ["MULTIPROCESSING_LAUNCH"] = "hook" }, "basic");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("exitcode=7", app.Stdout);
    }

    [Fact]
    public async Task Works_from_a_dotnet_publish_output()
    {
        using var scratch = new Scratch();
        var publish = new System.Diagnostics.ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        // Its own artifacts folder: the build leaves the repository's bin and obj folders (which a Release build of
        // the benchmarks or the tour may be using) alone.
        var output = Path.Combine(scratch.Path, "out");
        foreach (var arg in new[] { "publish", TestApp.ProjectPath, "-c", "Release", "-o", output, "--artifacts-path", Path.Combine(scratch.Path, "artifacts"), "--nologo", "--disable-build-servers" })
            publish.ArgumentList.Add(arg);
        using (var build = System.Diagnostics.Process.Start(publish)!)
        {
            var stdout = build.StandardOutput.ReadToEndAsync();
            var stderr = build.StandardError.ReadToEndAsync();
            try
            {
                await build.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(4));
            }
            catch (TimeoutException)
            {
                build.Kill(entireProcessTree: true);
                throw;
            }

            Assert.True(build.ExitCode == 0, $"dotnet publish failed: {await stdout} {await stderr}");
        }

        using var app = TestApp.StartFrom(Path.Combine(output, "Multiprocessing.TestApp.dll"), null, "basic");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Contains("exitcode=7", app.Stdout);
    }
}
