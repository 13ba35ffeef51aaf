using Multiprocessing.Processes;

/// <summary>
/// The runtime's startup-hook entry, used where children cannot be started through the muxer (self-contained
/// apps): the child re-runs the parent's command line, and this takes over before the user's Main can run.
/// </summary>
internal static class StartupHook
{
    /// <summary>Called by the runtime before Main.</summary>
    public static void Initialize()
    {
        if (Environment.GetEnvironmentVariable(Launcher.HookVariable) != "1") return;

        // The child's own children must not inherit the hook through the environment.
        Environment.SetEnvironmentVariable(Launcher.HookVariable, null);
        Environment.SetEnvironmentVariable("DOTNET_STARTUP_HOOKS", null);
        Environment.Exit(ChildRuntime.Run());
    }
}
