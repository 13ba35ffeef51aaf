using Multiprocessing;

// One section per example of Python's multiprocessing documentation, in its order. Each prints what Python prints.
var sections = new (string Title, Action Run)[]
{
    ("The Process class", ProcessSection.Run),
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
