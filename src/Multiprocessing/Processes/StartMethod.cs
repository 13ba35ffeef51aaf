namespace Multiprocessing;

/// <summary>How <see cref="ChildProcess.Start"/> obtains a process. .NET cannot fork, so both start a fresh
/// runtime; they differ in when.</summary>
public enum StartMethod
{
    /// <summary>Python's "spawn": every Start launches a new process. Nothing runs ahead of time. The default.</summary>
    Spawn,

    /// <summary>The forkserver idea without fork: a spare child is kept booted and waiting, so Start hands it the
    /// target at once and launches the next spare in the background. After a pool is made, as many spares as it has
    /// workers are kept (at most twice the CPU count), so the next pool starts from booted runtimes too. Faster starts
    /// for each idle spare's memory.
    /// A spare cannot take environment changes the runtime reads at boot (DOTNET_*, LD_*); Start then spawns.</summary>
    Prespawn,
}
