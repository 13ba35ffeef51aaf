using BenchmarkDotNet.Running;
using Multiprocessing.Bench;

// `dotnet run -c Release --project bench/Multiprocessing.Bench` compares with Python side by side;
// `... -- bdn [BenchmarkDotNet args]` runs the in-process micro-benchmarks under BenchmarkDotNet.
if (args.Length > 0 && args[0] == "bdn")
{
    BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args[1..]);
    return 0;
}

return Compare.Run(args);
