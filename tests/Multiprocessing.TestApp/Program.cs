using Multiprocessing;

// Each scenario prints what the test needs on stdout, one "key=value" per line, and flushes as it goes.
return args.FirstOrDefault() switch
{
    "basic" => Basic(),
    "output" => Output(),
    "throw" => Throw(),
    "orphans" => Orphans(),
    "orphans-prespawn" => OrphansWithSpare(),
    "exit-with-children" => ExitWithChildren(args[1]),
    "shared-memory" => SharedMemoryInUse(),
    "manager-client" => ManagerClient(int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture), args[2]),
    _ => Usage(),
};

// A program the manager's owner did not start: it reaches the manager over TCP with the key alone.
static int ManagerClient(int port, string key)
{
    using var m = Mp.ConnectManager(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port), System.Text.Encoding.UTF8.GetBytes(key));
    var d = m.Dict<string, int>();
    d["from-app"] = 42;
    var board = m.Create<Multiprocessing.Tests.IBoard>();
    board.Post($"hello from the app, d has {d.Count} item");
    Console.WriteLine($"objects={m.GetObjectCount()}");
    return 0;
}

static int Usage()
{
    Console.Error.WriteLine("usage: Multiprocessing.TestApp basic|output|throw|orphans|orphans-prespawn|exit-with-children GOFILE|shared-memory|manager-client PORT KEY");
    return 2;
}

static int Basic()
{
    var p = Mp.Process(() => Environment.Exit(Mp.CurrentProcess.Name == "Process-1" && Mp.ParentProcess is not null ? 7 : 3));
    p.Start();
    p.Join();
    Console.WriteLine($"exitcode={p.ExitCode}");
    return 0;
}

static int Output()
{
    var p = Mp.Process(() =>
    {
        Console.WriteLine("child-stdout-line");
        Console.Error.WriteLine("child-stderr-line");
    });
    p.Start();
    p.Join();
    Console.WriteLine($"exitcode={p.ExitCode}");
    return 0;
}

static int Throw()
{
    var p = Mp.Process(() => Thrower.Fail("boom from the child"), name: "thrower");
    p.Start();
    p.Join();
    Console.WriteLine($"exitcode={p.ExitCode}");
    return 0;
}

// Starts a daemon and a non-daemon child that never finish, reports their pids and waits to be killed.
static int Orphans()
{
    var daemon = Mp.Process(() => Thread.Sleep(Timeout.Infinite), daemon: true);
    var worker = Mp.Process(() => Thread.Sleep(Timeout.Infinite));
    daemon.Start();
    worker.Start();
    Console.WriteLine($"pids={daemon.Pid},{worker.Pid}");
    Console.Out.Flush();
    Thread.Sleep(Timeout.Infinite);
    return 0;
}

static int OrphansWithSpare()
{
    Mp.SetStartMethod(StartMethod.Prespawn);
    return Orphans();
}

// Python's exit handler: the daemon is terminated, the non-daemon child is waited for until GOFILE appears.
static int ExitWithChildren(string goFile)
{
    var daemon = Mp.Process(() => Thread.Sleep(Timeout.Infinite), daemon: true);
    var worker = Mp.Process(() =>
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!File.Exists(goFile))
        {
            if (DateTime.UtcNow > deadline) Environment.Exit(9);
            Thread.Sleep(10);
        }

        Console.WriteLine("worker-finished");
    });
    daemon.Start();
    worker.Start();
    Console.WriteLine($"pids={daemon.Pid},{worker.Pid}");
    Console.WriteLine("main-returning");
    return 0;
}

static int SharedMemoryInUse()
{
    // Everything shared that this app makes while a child uses it, then the test SIGKILLs the app.
    var block = Mp.SharedMemory(create: true, size: 1 << 20);
    var values = Mp.Array<double>(1000);
    var lck = Mp.Lock();
    var child = Mp.Process(() =>
    {
        using (lck.Acquire()) values[0] = block.Size;
        Thread.Sleep(Timeout.Infinite);
    });
    child.Start();
    while (values[0] == 0) Thread.Sleep(5);
    Console.WriteLine($"block={block.Name}");
    Console.WriteLine($"pids={child.Pid}");
    Console.Out.Flush();
    Thread.Sleep(Timeout.Infinite);
    return 0;
}

internal static class Thrower
{
    public static void Fail(string message) => throw new InvalidOperationException(message);
}

namespace Multiprocessing.Tests
{
    /// <summary>The same interface name as the tests' board: a remote client needs only the name and the shape.</summary>
    public interface IBoard
    {
        void Post(string message);

        string[] Read();
    }
}
