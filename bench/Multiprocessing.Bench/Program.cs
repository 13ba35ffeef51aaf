using BenchmarkDotNet.Running;
using Multiprocessing.Bench;

// `dotnet run -c Release --project bench/Multiprocessing.Bench` compares with Python side by side;
// `... -- bdn [BenchmarkDotNet args]` runs the in-process micro-benchmarks under BenchmarkDotNet.
if (args.Length > 0 && args[0] == "bdn")
{
    BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args[1..]);
    return 0;
}

// `... -- sync` runs only our side of the synchronization and shared-memory workloads, for quick iteration.
if (args.Length > 0 && args[0] == "sync")
{
    foreach (var (key, value) in SyncBench.Run(5)) Console.WriteLine($"{key}: {value:G4}");
    return 0;
}

// `... -- pipes [runs]` compares only the pipe and queue workloads with Python's, side by side in one table.
if (args.Length > 0 && args[0] == "pipes") return Compare.RunPipes(args[1..]);

// `... -- managers [runs]` compares only the manager workloads with Python's.
if (args.Length > 0 && args[0] == "managers") return ManagerBench.RunComparison(args[1..]);

return Compare.Run(args);
