using System.Diagnostics;
using Multiprocessing.Platform;
using Xunit;

namespace Multiprocessing.Tests;

public sealed class SharedMemoryTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    public struct Point
    {
        public int X;
        public double Y;
        public long Z;
    }

    [Fact]
    public void The_seed_example_a_child_sets_a_double_and_negates_an_array()
    {
        using var num = Mp.Value(0.0);
        using var arr = Mp.Array<int>(Enumerable.Range(0, 10));
        using var p = Mp.Process(() =>
        {
            num.Value = 3.1415927;
            for (int i = 0; i < arr.Length; i++) arr[i] = -arr[i];
        });
        p.Start();
        p.Join(Guard);
        Assert.Equal(0, p.ExitCode);
        Assert.Equal(3.1415927, num.Value);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => -i), arr.ToArray());
    }

    [Fact]
    public void Values_hold_any_unmanaged_type_and_start_zeroed()
    {
        using var point = Mp.Value(new Point { X = 1, Y = 2.5, Z = 3 });
        using var raw = Mp.RawValue<long>();
        using var zeros = Mp.Array<Point>(100);
        Assert.Equal(0, raw.Value);
        Assert.All(zeros, pt => Assert.Equal(default, pt));
        Assert.False(raw.IsSynchronized);
        Assert.Throws<InvalidOperationException>(() => raw.GetLock());
        Assert.IsType<ProcessRLock>(point.GetLock());

        using var p = Mp.Process(() =>
        {
            var v = point.Value;
            point.Value = new Point { X = v.X + 1, Y = v.Y * 2, Z = v.Z + 1 };
            raw.Value = 42;
            zeros[99] = new Point { X = 99 };
        });
        p.Start();
        p.Join(Guard);
        Assert.Equal(0, p.ExitCode);
        Assert.Equal(new Point { X = 2, Y = 5, Z = 4 }, point.Value);
        Assert.Equal(42, raw.Value);
        Assert.Equal(99, zeros[99].X);
    }

    [Fact]
    public void The_lock_of_a_value_makes_increments_from_many_processes_exact()
    {
        using var counter = Mp.Value(0);
        var children = Enumerable.Range(0, 4).Select(_ => Mp.Process(() =>
        {
            for (int i = 0; i < 2000; i++)
            {
                using (counter.GetLock().Acquire()) counter.Value += 1;
            }
        })).ToList();
        children.ForEach(c => c.Start());
        children.ForEach(c => c.Join(Guard));
        Assert.All(children, c => Assert.Equal(0, c.ExitCode));
        Assert.Equal(8000, counter.Value);
        children.ForEach(c => c.Dispose());

        // A given lock is used as given, and shared between values.
        using var shared = Mp.Lock();
        using var a = Mp.Value(1, shared);
        using var b = Mp.Array<int>(3, shared);
        Assert.Same(shared, a.GetLock());
        using (a.GetLock().Acquire())
        {
            // Holding a non-reentrant lock while touching values it guards must not deadlock.
            a.Value = 2;
            b[0] = a.Value;
            b.CopyFrom([7, 8], 1);
        }

        Assert.Equal(new[] { 2, 7, 8 }, b.ToArray());
    }

    [Fact]
    public void Arrays_check_their_bounds_and_copy_ranges()
    {
        using var arr = Mp.RawArray<double>(4);
        Assert.Equal(4, arr.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => arr[4]);
        Assert.Throws<ArgumentOutOfRangeException>(() => arr[-1] = 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => arr.CopyFrom([1, 2, 3], 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.Array<int>(-1));
        arr.CopyFrom([1, 2, 3], 1);
        var part = new double[2];
        arr.CopyTo(part, 2);
        Assert.Equal(new[] { 2.0, 3.0 }, part);
        Assert.Equal(new[] { 1.0, 2.0 }, arr[1..3]);
        Assert.Equal(3.0, arr[^1]);
        arr.AsSpan().Fill(5);
        Assert.Equal(20, arr.Sum());
        using var empty = Mp.Array<int>(0);
        Assert.Empty(empty.ToArray());
    }

    [Fact]
    public void Values_and_arrays_travel_to_pool_tasks()
    {
        using var total = Mp.Value(0L);
        using var slots = Mp.Array<int>(50);
        using var pool = Mp.Pool(2);
        pool.Map(i =>
        {
            slots[i] = i * i;
            using (total.GetLock().Acquire()) total.Value += i;
            return 0;
        }, Enumerable.Range(0, 50), chunksize: 5);
        Assert.Equal(Enumerable.Range(0, 50).Sum(), total.Value);
        Assert.Equal(Enumerable.Range(0, 50).Select(i => i * i), slots.ToArray());
        pool.Close();
        pool.Join();
    }

    [Fact]
    public void Named_blocks_attach_by_name_and_refuse_bad_names()
    {
        using var block = Mp.SharedMemory(create: true, size: 4096);
        Assert.StartsWith("psm_", block.Name);
        Assert.Equal(4096, block.Size);
        Assert.True(File.Exists("/dev/shm/" + block.Name));
        block.Span[..5].Fill(7);

        using (var same = Mp.SharedMemory(block.Name))
        {
            Assert.Equal(4096, same.Size);
            Assert.Equal(7, same.Span[4]);
        }

        using var p = Mp.Process(() => block.Span[0] = 42);
        p.Start();
        p.Join(Guard);
        Assert.Equal(0, p.ExitCode);
        Assert.Equal(42, block.Span[0]);

        Assert.Throws<IOException>(() => Mp.SharedMemory(block.Name, create: true, size: 10));
        Assert.Throws<FileNotFoundException>(() => Mp.SharedMemory("mp-test-no-such-block"));
        Assert.Throws<ArgumentException>(() => Mp.SharedMemory());
        Assert.Throws<ArgumentException>(() => Mp.SharedMemory("a/b", create: true, size: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.SharedMemory(create: true, size: 0));

        block.Unlink();
        Assert.False(File.Exists("/dev/shm/" + block.Name));
        Assert.Throws<FileNotFoundException>(block.Unlink);

        // Still mapped here after the unlink, as in Python.
        Assert.Equal(42, block.Span[0]);
        block.Close();
        Assert.Throws<ObjectDisposedException>(() => block.Span[0]);
    }

    [Fact]
    public void Python_attaches_to_our_block_and_we_attach_to_Pythons()
    {
        using var ours = Mp.SharedMemory(create: true, size: 64);
        "hello from C#"u8.CopyTo(ours.Span);
        var script = $$"""
            from multiprocessing import shared_memory, resource_tracker
            theirs = shared_memory.SharedMemory(name="{{ours.Name}}")
            resource_tracker.unregister(theirs._name, "shared_memory")
            print(bytes(theirs.buf[:13]).decode())
            mine = shared_memory.SharedMemory(create=True, size=32)
            mine.buf[:15] = b"hello from Py!!"
            print(mine.name, flush=True)
            input()
            mine.close()
            mine.unlink()
            theirs.close()
            """;
        var python = Process.Start(new ProcessStartInfo("python3", ["-c", script])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
        })!;
        try
        {
            Assert.Equal("hello from C#", python.StandardOutput.ReadLine());
            var name = python.StandardOutput.ReadLine()!;
            using (var theirs = Mp.SharedMemory(name))
            {
                Assert.Equal("hello from Py!!", System.Text.Encoding.ASCII.GetString(theirs.Span[..15]));
            }

            python.StandardInput.WriteLine();
            Assert.True(python.WaitForExit(Guard));
            Assert.Equal(0, python.ExitCode);
        }
        finally
        {
            if (!python.HasExited) python.Kill();
            python.WaitForExit();
            ours.Unlink();
        }
    }

    [Fact]
    public void When_the_parent_is_sigkilled_nothing_shared_is_left_two_seconds_later()
    {
        using var app = TestApp.Start("shared-memory");
        var name = app.WaitForValue("block");
        int child = int.Parse(app.WaitForValue("pids"));
        Assert.True(File.Exists("/dev/shm/" + name));
        var everyone = Leaks.ChildrenOf(app.Pid);
        Assert.Contains(child, everyone);
        Assert.Equal(2, everyone.Count); // the child and the tracker

        OsProcess.Signal(app.Pid, Posix.SIGKILL);
        var clock = Stopwatch.StartNew();
        Assert.True(Wait.Until(() => !File.Exists("/dev/shm/" + name) && everyone.All(Leaks.IsDead), Guard), "something outlived the SIGKILLed parent");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"cleanup took {clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    [Fact]
    public void Unlinking_the_last_block_stops_the_tracker()
    {
        var block = Mp.SharedMemory(create: true, size: 16);
        var name = block.Name;
        block.Close();
        Assert.True(File.Exists("/dev/shm/" + name));
        block.Unlink();
        Assert.False(File.Exists("/dev/shm/" + name));
        Assert.Empty(Leaks.ChildrenOf(Environment.ProcessId));
    }
}
