using Multiprocessing.Serialization;

namespace Multiprocessing.Processes;

/// <summary>What a job's target bytes hold.</summary>
internal enum JobKind : byte
{
    /// <summary>A serialized delegate, run as the process's target.</summary>
    Delegate,

    /// <summary>A pool worker's start: its board and initializer, read without the general delegate codec, whose
    /// first use costs a fresh runtime several milliseconds of reflection.</summary>
    PoolWorker,
}

/// <summary>Everything a child needs to become the process the parent described: who it is, where it runs,
/// which assemblies the parent loaded from outside the app, and the target delegate.</summary>
internal sealed class ProcessJob
{
    internal required string Name { get; init; }

    internal required int[] Identity { get; init; }

    internal required bool Daemon { get; init; }

    internal required int ParentPid { get; init; }

    internal required string ParentName { get; init; }

    internal required string WorkingDirectory { get; init; }

    /// <summary>The parent's <see cref="Mp.ParentExitGracePeriod"/>, which the child applies.</summary>
    internal required TimeSpan ParentExitGracePeriod { get; init; }

    /// <summary>The target takes over descriptor 3 (a pool worker's task channel), so no lifeline thread reads it.</summary>
    internal bool OwnsChannel { get; init; }

    /// <summary>Variables to set before user code runs (a warm spare was started with an older environment).</summary>
    internal required IReadOnlyList<KeyValuePair<string, string?>> Environment { get; init; }

    /// <summary>Assemblies the parent loaded from paths the child's probing does not know.</summary>
    internal required IReadOnlyList<KeyValuePair<string, string>> Assemblies { get; init; }

    /// <summary>How the child reads <see cref="Target"/>.</summary>
    internal JobKind Kind { get; init; }

    internal required ReadOnlyMemory<byte> Target { get; init; }

    internal ReadOnlyMemory<byte> Encode()
    {
        var w = new WireWriter(256 + Target.Length);
        w.String(Name);
        w.Int32(Identity.Length);
        foreach (var i in Identity) w.Int32(i);
        w.Bool(Daemon);
        w.Int32(ParentPid);
        w.String(ParentName);
        w.String(WorkingDirectory);
        w.Int64(ParentExitGracePeriod.Ticks);
        w.Bool(OwnsChannel);
        w.Int32(Environment.Count);
        foreach (var (key, value) in Environment)
        {
            w.String(key);
            w.String(value);
        }

        w.Int32(Assemblies.Count);
        foreach (var (key, value) in Assemblies)
        {
            w.String(key);
            w.String(value);
        }

        w.Byte((byte)Kind);
        w.Bytes(Target.Span);
        return w.Written;
    }

    internal static ProcessJob Decode(byte[] bytes)
    {
        var r = new WireReader(bytes);
        var name = r.String()!;
        var identity = new int[r.Int32()];
        for (int i = 0; i < identity.Length; i++) identity[i] = r.Int32();
        bool daemon = r.Bool();
        int parentPid = r.Int32();
        var parentName = r.String()!;
        var cwd = r.String()!;
        var grace = TimeSpan.FromTicks(r.Int64());
        bool ownsChannel = r.Bool();
        var env = new KeyValuePair<string, string?>[r.Int32()];
        for (int i = 0; i < env.Length; i++) env[i] = new(r.String()!, r.String());
        var assemblies = new KeyValuePair<string, string>[r.Int32()];
        for (int i = 0; i < assemblies.Length; i++) assemblies[i] = new(r.String()!, r.String()!);
        var kind = (JobKind)r.Byte();
        var target = r.Bytes();
        return new ProcessJob
        {
            Name = name, Identity = identity, Daemon = daemon, ParentPid = parentPid, ParentName = parentName,
            WorkingDirectory = cwd, ParentExitGracePeriod = grace, OwnsChannel = ownsChannel, Environment = env, Assemblies = assemblies, Kind = kind, Target = target,
        };
    }
}
