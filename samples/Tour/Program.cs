using Multiprocessing;

var sections = new (string Title, Action Run)[]
{
    ("Process: start a child, join it, read its exit code", ProcessSection.Run),
};

foreach (var (title, run) in sections)
{
    Console.WriteLine($"== {title} ==");
    run();
    Console.WriteLine();
}

internal static class ProcessSection
{
    // Python:  def f(name): print('hello', name) ... p = Process(target=f, args=('bob',)); p.start(); p.join()
    public static void Run()
    {
        var who = "bob";
        var p = Mp.Process(() => Greet(who));
        p.Start();
        p.Join();
        Console.WriteLine($"{p.Name} exited with code {p.ExitCode}");
    }

    private static void Greet(string who)
    {
        var me = Mp.CurrentProcess;
        Console.WriteLine($"hello {who}, from {me.Name} (pid {me.Pid}), child of {Mp.ParentProcess?.Name} (pid {Mp.ParentProcess?.Pid})");
    }
}
