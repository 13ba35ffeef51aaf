using Multiprocessing;
using Spectre.Console;

// One section per example of Python's multiprocessing documentation, in its order. Each prints what Python prints.
var sections = new (string Title, Action Run)[]
{
    ("The Process class", ProcessSection.Run),
    ("Using a pool of workers", PoolSection.Run),
    ("Pool.imap_unordered with a sleep_func", PoolSection.SleepImapUnordered),
    ("Pool.map with a sleep_func", PoolSection.SleepMap),
    ("Pool.map with a live progress bar", PoolSection.Progress),
    ("Exchanging objects between processes: Queues", ExchangeSection.Queues),
    ("Exchanging objects between processes: Pipes", ExchangeSection.Pipes),
    ("Synchronization between processes", SyncSection.Run),
    ("Sharing state: shared memory", SharedMemorySection.Run),
    ("Sharing state: server process (Manager)", ManagerSection.Run),
};

foreach (var (title, run) in sections)
{
    Console.WriteLine($"== {title} ==");
    run();
    Console.WriteLine();
}

internal static class ProcessSection
{
    // Python:
    //   def f(name):
    //       print('hello', name)
    //   p = Process(target=f, args=('bob',)); p.start(); p.join()
    public static void Run()
    {
        var who = "bob";
        var p = Mp.Process(() => Greet(who));
        p.Start();
        p.Join();
        Console.WriteLine($"{p.Name} (pid {p.Pid}) exited with code {p.ExitCode}");
    }

    private static void Greet(string who)
    {
        var me = Mp.CurrentProcess;
        Console.WriteLine($"hello {who}");
        Console.WriteLine($"  I am {me.Name}, pid {me.Pid}; my parent is {Mp.ParentProcess?.Name}, pid {Mp.ParentProcess?.Pid}");
    }
}

internal static class PoolSection
{
    private static int F(int x) => x * x;

    private static int SleepFunc(int seconds)
    {
        // The docs sleep whole seconds; a tenth of that keeps the tour short and shows the same ordering.
        Thread.Sleep(seconds * 100);
        return seconds;
    }

    // Python: with Pool(processes=4) as pool: ... (the block from the multiprocessing docs)
    public static void Run()
    {
        // start 4 worker processes
        using (var pool = Mp.Pool(processes: 4))
        {
            // prints "[0, 1, 4,..., 81]"
            Console.WriteLine(Python.List(pool.Map(F, Enumerable.Range(0, 10))));

            // prints the same numbers in arbitrary order
            foreach (var i in pool.IMapUnordered(F, Enumerable.Range(0, 10))) Console.WriteLine(i);

            // evaluate "f(20)" asynchronously; runs in *only* one process
            var res = pool.ApplyAsync(() => F(20));
            Console.WriteLine(res.Get(TimeSpan.FromSeconds(1))); // prints "400"

            // evaluate "os.getpid()" asynchronously; prints the PID of that process
            var pid = pool.ApplyAsync(() => Environment.ProcessId);
            Console.WriteLine(pid.Get(TimeSpan.FromSeconds(1)));

            // launching multiple evaluations asynchronously *may* use more processes
            var multipleResults = Enumerable.Range(0, 4).Select(_ => pool.ApplyAsync(() => Environment.ProcessId)).ToList();
            Console.WriteLine(Python.List(multipleResults.Select(r => r.Get(TimeSpan.FromSeconds(1)))));

            // make a single worker sleep for 10 seconds
            var sleeper = pool.ApplyAsync(() =>
            {
                Thread.Sleep(TimeSpan.FromSeconds(10));
                return 0;
            });
            try
            {
                Console.WriteLine(sleeper.Get(TimeSpan.FromSeconds(1)));
            }
            catch (TimeoutException)
            {
                Console.WriteLine("We lacked patience and got a multiprocessing.TimeoutError");
            }

            Console.WriteLine("For the moment, the pool remains available for more work");
        }

        // exiting the 'using' block has stopped the pool (terminate, as Python's 'with')
        Console.WriteLine("Now the pool is closed and no longer available");
    }

    // Python: for result in pool.imap_unordered(sleep_func, [3, 1, 2]): print(result)  -> 1 2 3
    public static void SleepImapUnordered()
    {
        using var pool = Mp.Pool(processes: 3);
        foreach (var result in pool.IMapUnordered(SleepFunc, [3, 1, 2])) Console.WriteLine(result);
    }

    // Python: print(pool.map(sleep_func, [3, 1, 2]))  -> [3, 1, 2], after the slowest one
    public static void SleepMap()
    {
        using var pool = Mp.Pool(processes: 3);
        Console.WriteLine(Python.List(pool.Map(SleepFunc, [3, 1, 2])));
    }

    // mpire-style insight: a live progress bar while 40 tasks run, then each worker's statistics.
    public static void Progress()
    {
        using var pool = Mp.Pool(processes: 2);
        List<int> results = [];
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var bar = ctx.AddTask("squares of 0..39, 50 ms each", maxValue: 40);
                results = pool.Map(x => { Thread.Sleep(50); return F(x); }, Enumerable.Range(0, 40), chunksize: 1, progress: new SyncProgress(bar));
                ctx.Refresh();
            });
        Console.WriteLine($"sum of squares: {results.Sum()}");
        foreach (var s in pool.GetWorkerStatistics())
            Console.WriteLine($"  worker {s.Index} (pid {s.Pid}): {s.TasksCompleted} tasks, busy {s.BusyTime.TotalMilliseconds:F0} ms, idle {s.IdleTime.TotalMilliseconds:F0} ms, serializing {s.SerializationTime.TotalMilliseconds:F2} ms");
    }

    // Reports straight from the pool's result thread; Progress<T> would need a synchronization context.
    private sealed class SyncProgress(ProgressTask bar) : IProgress<MapProgress>
    {
        public void Report(MapProgress value) => bar.Value = value.Done;
    }
}

internal static class ExchangeSection
{
    // Python:
    //   def f(q): q.put([42, None, 'hello'])
    //   q = Queue(); p = Process(target=f, args=(q,)); p.start()
    //   print(q.get())    # prints "[42, None, 'hello']"
    //   p.join()
    public static void Queues()
    {
        using var q = Mp.Queue<object?[]>();
        var p = Mp.Process(() => q.Put([42, null, "hello"]));
        p.Start();
        Console.WriteLine(Python.Repr(q.Get()));
        p.Join();
    }

    // Python:
    //   def f(conn): conn.send([42, None, 'hello']); conn.close()
    //   parent_conn, child_conn = Pipe(); p = Process(target=f, args=(child_conn,)); p.start()
    //   print(parent_conn.recv())   # prints "[42, None, 'hello']"
    //   p.join()
    public static void Pipes()
    {
        var (parentConn, childConn) = Mp.Pipe<object?[]>();
        var p = Mp.Process(() =>
        {
            childConn.Send([42, null, "hello"]);
            childConn.Close();
        });
        p.Start();
        Console.WriteLine(Python.Repr(parentConn.Recv()));
        p.Join();
        parentConn.Close();
        childConn.Close();
    }
}

internal static class SyncSection
{
    // Python:
    //   def f(l, i):
    //       l.acquire()
    //       try: print('hello world', i)
    //       finally: l.release()
    //   lock = Lock()
    //   for num in range(10): Process(target=f, args=(lock, num)).start()
    public static void Run()
    {
        using var lck = Mp.Lock();
        var processes = Enumerable.Range(0, 10).Select(num => Mp.Process(() => F(lck, num))).ToList();
        processes.ForEach(p => p.Start());
        processes.ForEach(p => p.Join());
    }

    private static void F(ProcessLock l, int i)
    {
        using (l.Acquire())
        {
            Console.WriteLine($"hello world {i}");
        }
    }
}

internal static class SharedMemorySection
{
    // Python:
    //   def f(n, a):
    //       n.value = 3.1415927
    //       for i in range(len(a)): a[i] = -a[i]
    //   num = Value('d', 0.0); arr = Array('i', range(10))
    //   p = Process(target=f, args=(num, arr)); p.start(); p.join()
    //   print(num.value); print(arr[:])
    public static void Run()
    {
        using var num = Mp.Value(0.0);
        using var arr = Mp.Array<int>(Enumerable.Range(0, 10));
        var p = Mp.Process(() => F(num, arr));
        p.Start();
        p.Join();
        Console.WriteLine(num.Value);
        Console.WriteLine(Python.List(arr.ToArray()));
    }

    private static void F(SharedValue<double> n, SharedArray<int> a)
    {
        n.Value = 3.1415927;
        for (int i = 0; i < a.Length; i++) a[i] = -a[i];
    }
}

internal static class ManagerSection
{
    // Python:
    //   def f(d, l):
    //       d[1] = '1'; d['2'] = 2; d[0.25] = None
    //       l.reverse()
    //   with Manager() as manager:
    //       d = manager.dict(); l = manager.list(range(10))
    //       p = Process(target=f, args=(d, l)); p.start(); p.join()
    //       print(d); print(l)
    public static void Run()
    {
        using var manager = Mp.Manager();
        var d = manager.Dict<object, object?>();
        var l = manager.List(Enumerable.Range(0, 10));
        var p = Mp.Process(() => F(d, l));
        p.Start();
        p.Join();

        // A managed dict and list print as Python prints them.
        Console.WriteLine(d);
        Console.WriteLine(l);
    }

    private static void F(ManagedDict<object, object?> d, ManagedList<int> l)
    {
        d[1] = "1";
        d["2"] = 2;
        d[0.25] = null;
        l.Reverse();
    }
}

/// <summary>Prints values as Python prints a list.</summary>
internal static class Python
{
    public static string List<T>(IEnumerable<T> items) => "[" + string.Join(", ", items) + "]";

    public static string Repr(object? value) => value switch
    {
        null => "None",
        string s => $"'{s}'",
        bool b => b ? "True" : "False",
        System.Collections.IEnumerable items => "[" + string.Join(", ", items.Cast<object?>().Select(Repr)) + "]",
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };
}
