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

// `... -- pool [runs]` runs only our side of the pool workloads, for quick iteration.
if (args.Length > 0 && args[0] == "pool")
{
    foreach (var (key, value) in PoolBench.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 5)) Console.WriteLine($"{key}: {value:G4}");
    return 0;
}

// `... -- soak [tasks]`: a million tiny tasks through workers that are replaced every 1,000; resources must stay flat.
if (args.Length > 0 && args[0] == "soak") return SoakBench.Run(args[1..]);

// `... -- faults [runs] [guard s]`: a worker SIGKILLed under a task, here and in Python's Pool and ProcessPoolExecutor.
if (args.Length > 0 && args[0] == "faults") return FaultBench.Run(args[1..]);

// `... -- pipes [runs]` compares only the pipe and queue workloads with Python's, side by side in one table.
if (args.Length > 0 && args[0] == "pipes") return Compare.RunPipes(args[1..]);

// `... -- managers [runs]` compares only the manager workloads with Python's.
if (args.Length > 0 && args[0] == "managers") return ManagerBench.RunComparison(args[1..]);

return Compare.Run(args);
