namespace Multiprocessing;

/// <summary>How <see cref="ChildProcess.Start"/> obtains a process. .NET cannot fork, so both start a fresh
/// runtime; they differ in when.</summary>
public enum StartMethod
{
    /// <summary>Python's "spawn": every Start launches a new process. Nothing runs ahead of time. The default.</summary>
    Spawn,

    /// <summary>The forkserver idea without fork: one spare child is kept booted and waiting, so Start hands it the
    /// target at once and launches the next spare in the background. Faster starts for one idle process's memory.
    /// A spare cannot take environment changes the runtime reads at boot (DOTNET_*, LD_*); Start then spawns.</summary>
    Prespawn,
}
