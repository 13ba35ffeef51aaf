namespace Multiprocessing.Processes;

/// <summary>The entry point a child runtime starts in; see <see cref="Launcher"/>.</summary>
internal static class WorkerHost
{
    private static int Main(string[] args)
    {
        if (args.Length != 1 || args[0] != Launcher.ChildArgument)
        {
            Console.Error.WriteLine("Multiprocessing.dll is a library; it runs only as a child started by the library itself.");
            return 2;
        }

        return ChildRuntime.Run();
    }
}
