using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Multiprocessing.Platform;
using Multiprocessing.Processes;
using Multiprocessing.Serialization;

namespace Multiprocessing;

/// <summary>
/// A delegate that runs in a child process: Python's <c>multiprocessing.Process</c>. Created by
/// <see cref="Mp.Process(Action, string?, bool)"/>, started with <see cref="Start"/>.
/// </summary>
/// <remarks>
/// Thread-safe. Only the process that created the object can start, join or signal the child. A daemon child is
/// terminated when its parent exits normally; a non-daemon child is waited for. If the parent dies abnormally
/// (SIGKILL, crash), every child notices within milliseconds and exits after <see cref="Mp.ParentExitGracePeriod"/>.
/// Unlike Python, a daemon child may start children of its own: they cannot be orphaned, since they follow it out.
/// </remarks>
public sealed class ChildProcess : IDisposable, IAsyncDisposable
{
    /// <summary>Reported when the exit status was collected by someone else (SIGCHLD ignored by the app).</summary>
    private const int UnknownExitCode = 255;

    private readonly Delegate _target;
    private readonly object _gate = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly int[] _identity;
    private string _name;
    private bool _daemon;
    private bool _started;
    private bool _closed;
    private int? _pid;
    private int? _exitCode;
    private Socket? _control;

    private readonly IReadOnlyDictionary<string, string>? _environment;
    private readonly bool _ownsChannel;
    private readonly bool _tracked;

    internal ChildProcess(Delegate target, string? name, bool daemon, IReadOnlyDictionary<string, string>? environment = null, bool ownsChannel = false, bool tracked = true)
    {
        _tracked = tracked;
        _target = target;
        _environment = environment;
        _ownsChannel = ownsChannel;
        _identity = ProcessRuntime.NextChildIdentity();
        _name = name ?? "Process-" + string.Join(':', _identity);
        _daemon = daemon;
    }

    /// <summary>The process's name, for humans; not unique. Defaults to Python's "Process-N" (and "Process-N:M"
    /// for a child's children).</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public string Name
    {
        get => _name;
        set => _name = value ?? throw new ArgumentNullException(nameof(value));
    }

    /// <summary>Whether the child is a daemon: terminated, not waited for, when this process exits normally.</summary>
    /// <exception cref="InvalidOperationException">Set after <see cref="Start"/>.</exception>
    public bool Daemon
    {
        get => _daemon;
        set
        {
            lock (_gate)
            {
                if (_started) throw new InvalidOperationException($"Process '{_name}': Daemon cannot be changed after Start().");
                _daemon = value;
            }
        }
    }

    /// <summary>The child's process id; null before <see cref="Start"/>.</summary>
    public int? Pid => _pid;

    /// <summary>Null while the child runs or before it starts; then its exit code: 0 when the target returned, 1 for an
    /// unhandled exception, n for Environment.Exit(n), and minus the signal number when a signal killed it
    /// (-9 after <see cref="Kill"/>, -15 after <see cref="Terminate"/>).</summary>
    public int? ExitCode
    {
        get
        {
            _ = IsAlive;
            return _exitCode;
        }
    }

    /// <summary>Whether the child has started and not yet exited.</summary>
    public bool IsAlive
    {
        get
        {
            if (!_started || _exitCode is not null) return false;
            if (OsProcess.HasExited(_pid!.Value, block: false)) Reap();
            return _exitCode is null;
        }
    }

    /// <summary>Starts the child and hands it the target. Returns once the process exists; it does not wait for
    /// the target to begin.</summary>
    /// <exception cref="InvalidOperationException">The process was already started, or is closed.</exception>
    /// <exception cref="System.Runtime.Serialization.SerializationException">A captured value cannot be sent to
    /// another process; the message names the captured variable and its type. No process is started.</exception>
    public void Start()
    {
        lock (_gate)
        {
            ThrowIfClosed();
            if (_started) throw new InvalidOperationException($"Process '{_name}' has already been started; a process can only be started once.");

            // Everything that can fail because of the target fails here, before a process exists.
            var (kind, payload) = BuiltInTarget is { } builtIn ? (builtIn.Kind, builtIn.Encode()) : (JobKind.Delegate, DelegateSerializer.Serialize(_target));

            var child = Launcher.Acquire(Mp.StartMethod, _environment, out var environmentDelta, replenish: !ReplenishesSpareItself);
            var current = ProcessRuntime.Current;
            var job = new ProcessJob
            {
                Name = _name,
                Identity = _identity,
                Daemon = _daemon,
                ParentPid = current.Pid,
                ParentName = current.Name,
                WorkingDirectory = Environment.CurrentDirectory,
                ParentExitGracePeriod = Mp.ParentExitGracePeriod,
                OwnsChannel = _ownsChannel,
                Environment = environmentDelta,
                Assemblies = ChildRuntime.ForeignAssemblies(),
                Kind = kind,
                Target = payload,
            };

            _pid = child.Pid;
            _control = child.Control;
            _started = true;
            if (_tracked) ProcessRuntime.Track(this);
            try
            {
                ControlFrames.Write(child.Control, job.Encode().Span);
            }
            catch (SocketException ex)
            {
                // The child died before reading its job; the watcher below reports how, through ExitCode.
                ProcessRuntime.Logger.LogWarning(ex, "Process {Name} (pid {Pid}) exited before it received its target", _name, child.Pid);
            }

            if (!_ownsChannel) _ = WatchAsync(child.Control);
        }
    }

    /// <summary>Set by a pool: under Prespawn, taking a spare for this process does not boot its replacement at once;
    /// the pool asks for it once this worker is ready, so that booting spares do not compete with the pool's own
    /// workers for the CPU while they start.</summary>
    internal bool ReplenishesSpareItself { get; init; }

    /// <summary>Set by the library for a target of its own that the child starts without the delegate codec; the
    /// encoder runs in <see cref="Start"/>, where a failure leaves no process behind.</summary>
    internal (JobKind Kind, Func<ReadOnlyMemory<byte>> Encode)? BuiltInTarget { get; init; }

    /// <summary>The parent's end of the control socket, for a process started with ownsChannel (a pool worker).</summary>
    internal Socket Channel => _control ?? throw new InvalidOperationException("not started");

    /// <summary>Called by the owner of <see cref="Channel"/> when it reached end of stream: waits for the exit
    /// status and reaps the process.</summary>
    internal async Task ChannelClosedAsync()
    {
        if (!OsProcess.HasExited(_pid!.Value, block: false))
            await Task.Factory.StartNew(ChannelClosed, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
        else
            Reap();
    }

    /// <summary><see cref="ChannelClosedAsync"/> on a thread that may block: waits for the exit, then reaps.</summary>
    internal void ChannelClosed()
    {
        OsProcess.HasExited(_pid!.Value, block: true);
        Reap();
    }

    /// <summary>Waits for the child to exit.</summary>
    /// <param name="timeout">How long to wait; null waits forever.</param>
    /// <returns>True if the child has exited (see <see cref="ExitCode"/>), false if the timeout passed first.</returns>
    /// <exception cref="InvalidOperationException">The process was not started, or is closed.</exception>
    public bool Join(TimeSpan? timeout = null)
    {
        ThrowIfNotStarted("join");
        return _exited.Task.Wait(timeout ?? Timeout.InfiniteTimeSpan);
    }

    /// <summary>Waits for the child to exit without blocking a thread.</summary>
    /// <exception cref="InvalidOperationException">The process was not started, or is closed.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled first; the
    /// child keeps running.</exception>
    public Task JoinAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfNotStarted("join");
        return _exited.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Sends SIGTERM: the child dies at once, without running its exit handlers, and reports -15.
    /// Its own children notice and exit after the grace period. Does nothing if it has already exited.</summary>
    /// <exception cref="InvalidOperationException">The process was not started, or is closed.</exception>
    public void Terminate() => Signal(Posix.SIGTERM, "terminate");

    /// <summary>Sends SIGKILL; the child reports -9. Does nothing if it has already exited.</summary>
    /// <exception cref="InvalidOperationException">The process was not started, or is closed.</exception>
    public void Kill() => Signal(Posix.SIGKILL, "kill");

    /// <summary>Releases what the object holds, as Python's <c>close()</c>. Later calls to most members throw.</summary>
    /// <exception cref="InvalidOperationException">The child is still running: join, terminate or kill it first.</exception>
    public void Close()
    {
        lock (_gate)
        {
            if (_closed) return;
            if (_started && IsAlive)
                throw new InvalidOperationException($"Cannot close process '{_name}' (pid {_pid}) while it is still running; call Join(), Terminate() or Kill() first.");
            _closed = true;
        }
    }

    /// <summary>Kills the child if it still runs, waits for it, and closes the object. Never throws.</summary>
    public void Dispose()
    {
        if (_started && !_closed && IsAlive)
        {
            Kill();
            Join();
        }

        lock (_gate) _closed = true;
    }

    /// <summary>As <see cref="Dispose"/>, without blocking a thread while the child exits.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_started && !_closed && IsAlive)
        {
            Kill();
            await _exited.Task.ConfigureAwait(false);
        }

        lock (_gate) _closed = true;
    }

    /// <inheritdoc/>
    public override string ToString()
    {
        var state = !_started ? "initial" : _exitCode is { } code ? $"stopped exitcode={code}" : "started";
        return $"<ChildProcess name='{_name}'{(_pid is { } pid ? $" pid={pid}" : string.Empty)} {state}{(_daemon ? " daemon" : string.Empty)}>";
    }

    private void Signal(int signal, string verb)
    {
        ThrowIfNotStarted(verb);
        lock (_gate)
        {
            // The pid stays reserved until Reap, which takes this lock, so the signal cannot reach a stranger.
            if (_exitCode is null) OsProcess.Signal(_pid!.Value, signal);
        }
    }

    private async Task WatchAsync(Socket control)
    {
        try
        {
            var buffer = new byte[256];
            while (true)
            {
                int n;
                try
                {
                    n = await control.ReceiveAsync(buffer, SocketFlags.None).ConfigureAwait(false);
                }
                catch (SocketException)
                {
                    // A reset means the same as end of stream here: the child is gone.
                    n = 0;
                }

                if (n == 0) break;
            }

            // The socket closes while the process tears down; the exit status follows within moments.
            await ChannelClosedAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            ProcessRuntime.Logger.LogError(ex, "Watching process {Name} (pid {Pid}) failed", _name, _pid);
            _exited.TrySetException(ex);
        }
    }

    private void Reap()
    {
        lock (_gate)
        {
            if (_exitCode is not null) return;
            var status = OsProcess.Reap(_pid!.Value);
            _exitCode = status ?? UnknownExitCode;
            if (status is null)
            {
                // Someone else collected the status (an app that ignores SIGCHLD makes the kernel do it).
                ProcessRuntime.Logger.LogWarning("The exit status of process {Name} (pid {Pid}) was collected elsewhere; reporting {Code}", _name, _pid, UnknownExitCode);
            }
        }

        _control?.Dispose();
        ProcessRuntime.Untrack(this);
        _exited.TrySetResult();
    }

    private void ThrowIfClosed()
    {
        if (_closed) throw new InvalidOperationException($"Process '{_name}' is closed.");
    }

    private void ThrowIfNotStarted(string verb)
    {
        ThrowIfClosed();
        if (!_started) throw new InvalidOperationException($"Cannot {verb} process '{_name}': it has not been started; call Start() first.");
    }
}
