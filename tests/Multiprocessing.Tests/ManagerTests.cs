using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using Xunit;

namespace Multiprocessing.Tests;

public interface ICounter
{
    int Add(int n);

    int Total { get; }

    string Describe(string prefix);

    void Fail(string message);
}

public sealed class Counter : ICounter
{
    private int _total;

    public int Total => _total;

    public int Add(int n) => _total += n;

    public string Describe(string prefix) => $"{prefix}{_total}";

    public void Fail(string message) => throw new InvalidOperationException(message);
}

public interface IBoard
{
    void Post(string message);

    string[] Read();
}

public sealed class Board : IBoard
{
    public static readonly Board Shared = new();

    private readonly List<string> _posts = [];

    public void Post(string message)
    {
        lock (_posts) _posts.Add(message);
    }

    public string[] Read()
    {
        lock (_posts) return [.. _posts];
    }
}

public sealed class ManagerTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void The_seed_example_a_child_fills_a_dict_and_reverses_a_list()
    {
        using var m = Mp.Manager();
        var d = m.Dict<object, object?>();
        var l = m.List<int>(Enumerable.Range(0, 10));
        using var p = Mp.Process(() =>
        {
            d[1] = "1";
            d["2"] = 2;
            d[0.25] = null;
            l.Reverse();
        });
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal("{1: '1', '2': 2, 0.25: None}", d.ToString());
        Assert.Equal("[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]", l.ToString());
    }

    [Fact]
    public void Dict_behaves_as_an_IDictionary_and_missing_keys_throw()
    {
        using var m = Mp.Manager();
        var d = m.Dict<int, string>();
        foreach (int i in Enumerable.Range(65, 5)) d[i] = ((char)i).ToString();
        Assert.Equal(5, d.Count);
        Assert.Equal(Enumerable.Range(65, 5).ToDictionary(i => i, i => ((char)i).ToString()), d.Copy());
        Assert.Equal([65, 66, 67, 68, 69], d.Keys.Order());
        Assert.Equal("C", d[67]);
        Assert.True(d.ContainsKey(66));
        Assert.False(d.ContainsKey(1));
        var missing = Assert.Throws<KeyNotFoundException>(() => d[1]);
        Assert.Contains("not present", missing.Message);
        Assert.Throws<ArgumentException>(() => d.Add(65, "again"));
        Assert.False(d.TryGetValue(1, out _));
        Assert.Equal("x", d.Get(1, "x"));
        Assert.Equal("A", d.Pop(65));
        Assert.Throws<KeyNotFoundException>(() => d.Pop(65));
        Assert.Equal("Z", d.SetDefault(90, "Z"));
        Assert.Equal("Z", d.SetDefault(90, "other"));
        Assert.True(d.Remove(90));
        Assert.False(d.Remove(90));
        d.Update([new(1, "one"), new(2, "two")]);
        Assert.Equal(6, d.Count);
        d.Clear();
        Assert.Empty(d);

        // Larger than the shared-memory rings a private manager talks through: it streams.
        var big = m.Dict<string, byte[]>();
        var blob = Enumerable.Range(0, 3 << 20).Select(i => (byte)i).ToArray();
        big["blob"] = blob;
        Assert.Equal(blob, big["blob"]);
    }

    [Fact]
    public void List_behaves_as_an_IList_and_bad_indexes_throw()
    {
        using var m = Mp.Manager();
        var a = m.List(Enumerable.Range(0, 10));
        Assert.Equal(Enumerable.Range(0, 10), a.ToList());
        var b = m.List<int>();
        Assert.Empty(b);
        b.Extend(Enumerable.Range(0, 5));
        Assert.Equal([0, 1, 2, 3, 4], b.ToList());
        Assert.Equal(2, b[2]);
        Assert.Throws<ArgumentOutOfRangeException>(() => b[5]);
        Assert.Throws<ArgumentOutOfRangeException>(() => b[-1] = 3);
        b.Insert(0, 7);
        Assert.Equal(0, b.IndexOf(7));
        Assert.Equal(-1, b.IndexOf(42));
        Assert.True(b.Remove(7));
        Assert.Equal(4, b.Pop());
        Assert.Equal(0, b.Pop(0));
        Assert.Equal([1, 2, 3], b.GetRange(0, 3));
        b.RemoveAt(0);
        Assert.Equal([2, 3], b);
        b.Clear();
        Assert.Throws<InvalidOperationException>(() => b.Pop());
    }

    [Fact]
    public void A_list_stored_in_a_dict_stays_a_live_proxy_in_another_process()
    {
        using var m = Mp.Manager();
        var d = m.Dict<string, ManagedList<int>>();
        using (var inner = m.List<int>([1]))
        {
            d["inner"] = inner;
        }

        using var p = Mp.Process(() => d["inner"].Add(2));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal([1, 2], d["inner"].ToList());

        var e = m.List<ManagedList<int>>([d["inner"]]);
        Assert.Equal([1, 2], e[0].ToList());
    }

    [Fact]
    public void A_child_makes_objects_through_a_captured_manager_and_hands_them_back_in_a_managed_queue()
    {
        using var m = Mp.Manager();
        var q = m.Queue<ManagedList<int>>();
        using var p = Mp.Process(() =>
        {
            using var inChild = m;
            q.Put(inChild.List<int>([5, 6]));
        });
        p.Start();
        var made = q.Get(Guard);
        Assert.True(p.Join(Guard));
        Assert.Equal(0, p.ExitCode);
        Assert.Equal([5, 6], made.ToList());
        made.Add(7);
        Assert.Equal(3, made.Count);
    }

    [Fact]
    public void Namespace_has_attribute_access_and_Python_repr()
    {
        using var m = Mp.Manager();
        dynamic n = m.Namespace();
        n.name = "Bob";
        n.job = "Builder";
        n._hidden = "hidden";
        Assert.Equal("Bob", (string)n.name);
        Assert.Equal("Builder", (string)n.job);
        using var p = Mp.Process(() => ((ManagedNamespace)n).Set("age", 42));
        p.Start();
        Assert.True(p.Join(Guard));
        Assert.Equal(42, (int)n.age);
        ((ManagedNamespace)n).Delete("job");
        Assert.Equal("Namespace(name='Bob', age=42)", n.ToString());
        Assert.Throws<MissingMemberException>(() => (object)n.job);
    }

    [Fact]
    public void Proxies_travel_to_pool_tasks()
    {
        using var m = Mp.Manager();
        var d = m.Dict<int, int>();
        var l = m.List<int>();
        using var pool = Mp.Pool(2);
        pool.Map(i => { d[i] = i * i; l.Add(i); return 0; }, Enumerable.Range(0, 20));
        Assert.Equal(20, d.Count);
        Assert.Equal(81, d[9]);
        Assert.Equal(Enumerable.Range(0, 20), l.ToList().Order());
    }

    [Fact]
    public void Value_Array_and_a_lock_guard_increments_from_several_processes()
    {
        using var m = Mp.Manager();
        var v = m.Value(0);
        var lck = m.Lock();
        var arr = m.Array<int>(4);
        var children = Enumerable.Range(0, 3).Select(c => Mp.Process(() =>
        {
            for (int i = 0; i < 50; i++)
            {
                using (lck.Acquire()) v.Value += 1;
            }

            arr[c] = c + 1;
        })).ToList();
        children.ForEach(c => c.Start());
        foreach (var c in children)
        {
            Assert.True(c.Join(Guard));
            Assert.Equal(0, c.ExitCode);
            c.Dispose();
        }

        Assert.Equal(150, v.Value);
        Assert.Equal([1, 2, 3, 0], arr.ToArray());
        Assert.Equal(4, arr.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => arr[4]);
        Assert.Throws<ArgumentException>(() => arr.SetAll([1]));
    }

    [Fact]
    public void Queue_and_JoinableQueue_across_processes_with_Python_errors()
    {
        using var m = Mp.Manager();
        var q = m.JoinableQueue<string>(maxSize: 2);
        Assert.Throws<TimeoutException>(() => q.Get(TimeSpan.FromMilliseconds(20)));
        Assert.False(q.TryGet(out _));
        using var p = Mp.Process(() =>
        {
            for (int i = 0; i < 5; i++)
            {
                q.Put($"item {i}");
            }
        });
        p.Start();
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal($"item {i}", q.Get(Guard));
            q.TaskDone();
        }

        Assert.True(p.Join(Guard));
        Assert.True(q.Join(Guard));
        Assert.Throws<InvalidOperationException>(() => q.TaskDone());
        q.Put("a");
        q.Put("b");
        Assert.True(q.IsFull);
        Assert.Throws<TimeoutException>(() => q.Put("c", TimeSpan.FromMilliseconds(20)));
        Assert.False(q.TryPut("c"));
        Assert.False(q.Join(TimeSpan.FromMilliseconds(20)));
    }

    [Fact]
    public void Event_Condition_Semaphore_and_Barrier_work_across_processes()
    {
        using var m = Mp.Manager();
        var ready = m.Event();
        var go = m.Condition();
        var state = m.Value(0);
        var sem = m.BoundedSemaphore(2);
        var barrier = m.Barrier(3);
        var children = Enumerable.Range(0, 2).Select(_ => Mp.Process(() =>
        {
            using (go.Acquire())
            {
                ready.Set();
                Assert.True(go.WaitFor(() => state.Value == 1, Guard));
            }

            using (sem.Acquire())
            {
                barrier.Wait(Guard);
            }
        })).ToList();
        children.ForEach(c => c.Start());
        Assert.True(ready.Wait(Guard));
        using (go.Acquire())
        {
            state.Value = 1;
            go.NotifyAll();
        }

        int index = barrier.Wait(Guard);
        Assert.InRange(index, 0, 2);
        foreach (var c in children)
        {
            Assert.True(c.Join(Guard));
            Assert.Equal(0, c.ExitCode);
            c.Dispose();
        }

        Assert.Equal(2, sem.Value);
        Assert.Throws<InvalidOperationException>(() => sem.Release());
        Assert.Throws<InvalidOperationException>(() => go.Notify());
        Assert.Throws<InvalidOperationException>(() => go.Wait(TimeSpan.Zero));

        var lonely = m.Barrier(2, TimeSpan.FromMilliseconds(50));
        Assert.Throws<BrokenBarrierException>(() => lonely.Wait());
        Assert.True(lonely.Broken);
        Assert.Throws<BrokenBarrierException>(() => lonely.Wait());
        lonely.Reset();
        Assert.False(lonely.Broken);
    }

    [Fact]
    public void A_lock_held_by_a_killed_process_is_released()
    {
        using var m = Mp.Manager();
        var lck = m.Lock();
        var held = m.Event();
        using var p = Mp.Process(() =>
        {
            lck.Acquire();
            held.Set();
            Thread.Sleep(Timeout.Infinite);
        });
        p.Start();
        Assert.True(held.Wait(Guard));
        Assert.False(lck.Acquire(TimeSpan.FromMilliseconds(20)));
        p.Kill();
        Assert.True(p.Join(Guard));
        Assert.True(lck.Acquire(Guard));
        lck.Release();
    }

    [Fact]
    public void Objects_are_freed_when_the_last_proxy_in_any_process_is_gone()
    {
        using var m = Mp.Manager();
        Assert.Equal(0, m.GetObjectCount());
        var d = m.Dict<string, ManagedList<int>>();
        var inner = m.List<int>();
        d["x"] = inner;
        var q = m.Queue<int>();
        Assert.Equal(3, m.GetObjectCount());
        using (var p = Mp.Process(() => { q.Put(d["x"].Count); }))
        {
            p.Start();
            Assert.Equal(0, q.Get(Guard));
            Assert.True(p.Join(Guard));
        }

        inner.Dispose();
        Assert.Equal(3, m.GetObjectCount());
        q.Dispose();
        d.Dispose();
        Assert.True(Wait.Until(() => m.GetObjectCount() == 0, Guard), $"{m.GetObjectCount()} objects left");
    }

    [Fact]
    public void Registered_types_are_reached_through_their_interface_and_errors_carry_their_meaning()
    {
        var options = new ManagerOptions().Register<ICounter, Counter>();
        using var m = Mp.Manager(options);
        var counter = m.Create<ICounter>();
        Assert.Equal(5, counter.Add(5));
        Assert.Equal(7, counter.Add(2));
        Assert.Equal(7, counter.Total);
        Assert.Equal("total=7", counter.Describe("total="));
        var ex = Assert.Throws<RemoteException>(() => counter.Fail("boom"));
        Assert.Equal("System.InvalidOperationException", ex.RemoteTypeName);
        Assert.Equal("boom", ex.RemoteMessage);
        Assert.Equal(7, counter.Total);
        Assert.Throws<InvalidOperationException>(() => m.Create<IDisposable>());
        Assert.Throws<ArgumentException>(() => new ManagerOptions().Register<Counter, Counter>());
    }

    [Fact]
    public void Register_with_the_interface_alone_finds_its_one_implementation()
    {
        using (var m = Mp.Manager(new ManagerOptions().Register<ICounter>()))
        {
            var counter = m.Create<ICounter>();
            Assert.Equal(3, counter.Add(3));
            Assert.Equal("n=3", counter.Describe("n="));
        }

        // No implementation, several, or a class instead of an interface: each named in the error.
        var none = Assert.Throws<ArgumentException>(() => new ManagerOptions().Register<IUnimplemented>());
        Assert.Contains("no class", none.Message);
        var several = Assert.Throws<ArgumentException>(() => new ManagerOptions().Register<IShape>());
        Assert.Contains(typeof(Square).FullName!, several.Message);
        Assert.Contains(typeof(Circle).FullName!, several.Message);
        Assert.Throws<ArgumentException>(() => new ManagerOptions().Register<Counter>());
    }

    public interface IUnimplemented
    {
        void Nothing();
    }

    public interface IShape
    {
        double Area();
    }

    public sealed class Square : IShape
    {
        public double Area() => 1;
    }

    public sealed class Circle : IShape
    {
        public double Area() => Math.PI;
    }

    [Fact]
    public void A_dead_manager_fails_proxy_calls_fast()
    {
        var m = Mp.Manager();
        var d = m.Dict<int, int>();
        var q = m.Queue<int>();
        d[1] = 1;
        var asking = m.Event();
        var getting = Task.Run(() =>
        {
            asking.Set();
            return q.Get();
        });

        // The getter's next request is its Get; whether the kill lands before or during it, it must fail fast.
        Assert.True(asking.Wait(Guard));
        System.Diagnostics.Process.GetProcessById(m.Pid!.Value).Kill();
        var blocked = Assert.ThrowsAny<Exception>(() => getting.Wait(Guard));
        Assert.IsType<ManagerUnavailableException>(blocked.InnerException);
        var started = System.Diagnostics.Stopwatch.StartNew();
        Assert.Throws<ManagerUnavailableException>(() => d[1]);
        Assert.Throws<ManagerUnavailableException>(() => d[1] = 2);
        Assert.True(started.Elapsed < TimeSpan.FromSeconds(2));
        m.Dispose();
    }

    [Fact]
    public void A_remote_manager_serves_TCP_clients_and_refuses_a_wrong_key()
    {
        var key = "secret"u8.ToArray();
        using var server = Mp.Manager(new IPEndPoint(IPAddress.Loopback, 0), key);
        var port = ((IPEndPoint)server.Address).Port;
        Assert.NotEqual(0, port);
        using (var client = Mp.ConnectManager(server.Address, key))
        {
            var d = client.Dict<string, int[]>();
            d["a"] = [1, 2, 3];
            Assert.Equal([1, 2, 3], d["a"]);
            var l = client.List<string>();
            l.Add("x");
            Assert.Equal(["x"], l.ToList());
        }

        Assert.Throws<AuthenticationException>(() => Mp.ConnectManager(server.Address, "wrong"u8.ToArray()));
        using var again = Mp.ConnectManager(server.Address, key);
        Assert.Equal(7, again.Value(7).Value);
    }

    [Fact]
    public void A_program_we_did_not_start_reaches_a_TCP_manager_with_the_key()
    {
        var key = "secret"u8.ToArray();
        var options = new ManagerOptions().Register<IBoard>(() => Board.Shared);
        using var server = Mp.Manager(new IPEndPoint(IPAddress.Loopback, 0), key, options);
        var board = server.Create<IBoard>();
        using var app = TestApp.Start("manager-client", ((IPEndPoint)server.Address).Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "secret");
        Assert.Equal(0, app.WaitForExit(Guard));
        Assert.Equal(["hello from the app, d has 1 item"], board.Read());
        Assert.True(Wait.Until(() => server.GetObjectCount() == 1, Guard), "the app's objects were not freed when it exited");
    }

    private static byte[] Text(string s)
    {
        var utf8 = System.Text.Encoding.UTF8.GetBytes(s);
        return [.. BitConverter.GetBytes(utf8.Length), .. utf8];
    }

    private static byte[] Request(long id, string method, params byte[][] args) =>
        [.. BitConverter.GetBytes(id), .. Text(method), .. BitConverter.GetBytes(1), .. args.SelectMany(a => a)];

    [Fact]
    public void A_remote_manager_survives_garbage_and_huge_length_prefixes()
    {
        var key = "secret"u8.ToArray();
        using var server = Mp.Manager(new IPEndPoint(IPAddress.Loopback, 0), key);
        var address = (IPEndPoint)server.Address;

        // No handshake at all: garbage, then a 2 GB length prefix, then a truncated frame.
        foreach (var bytes in new[] { "\x01\x02garbage"u8.ToArray(), new byte[] { 0x7f, 0xff, 0xff, 0xff, 1, 2 }, new byte[] { 0, 0, 0, 50, 1 } })
        {
            using var raw = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            raw.Connect(address);
            raw.Send(bytes);
            raw.Shutdown(SocketShutdown.Send);
            var sink = new byte[4096];
            raw.ReceiveTimeout = 30_000;
            try
            {
                while (raw.Receive(sink) > 0)
                {
                }
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
            {
                // The server hung up on the garbage without reading all of it.
            }
        }

        // Authenticated, then nonsense requests: each gets an error and the connection goes on.
        using var client = Mp.ConnectManager(address, key);
        var d = client.Dict<string, string>();
        d["k"] = "v";
        using (var conn = Mp.Client<byte[]>(address, key))
        {
            conn.SendBytes(Request(0, "hello", new byte[16], BitConverter.GetBytes(1)));
            Assert.Equal(0, conn.RecvBytes(timeout: Guard)[0]);

            // Truncated, an unknown kind, a type name where a kind belongs, and an unknown object: each one is
            // answered with an error, and the same connection goes on.
            foreach (var request in new[]
            {
                new byte[] { 1, 2, 3 },
                Request(0, "create", Text("System.Diagnostics.Process")),
                Request(0, "create", Text("System.IO.FileInfo, System.Runtime")),
                Request(0, "frobnicate"),
                Request(12345, "get"),
                Request(0, "create", Text("custom"), Text("Multiprocessing.Tests.ICounter")),
            })
            {
                conn.SendBytes(request);
                Assert.Equal(1, conn.RecvBytes(timeout: Guard)[0]);
            }

            // A frame that claims 2 GB is refused without allocating it: that connection is dropped.
            conn.SendBytes(new byte[] { 0x7f, 0xff, 0xff, 0xff });
        }

        Assert.Equal("v", d["k"]);
        Assert.Throws<InvalidOperationException>(() => client.Create<ICounter>());
        Assert.Equal(1, client.GetObjectCount());
    }
}
