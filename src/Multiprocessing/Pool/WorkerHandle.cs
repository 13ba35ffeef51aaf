using System.Diagnostics;
using System.Net.Sockets;
using Multiprocessing.Serialization;

namespace Multiprocessing.Pool;

/// <summary>The parent's side of one worker process: its socket, its outgoing buffer, the chunks it holds, in the
/// order it will answer them, and what it reported about itself. Guarded by the pool's lock.</summary>
internal sealed class WorkerHandle(int index, ChildProcess process, WorkerBoard board)
{
    internal int Index { get; } = index;

    internal ChildProcess Process { get; } = process;

    internal Socket Socket { get; } = process.Channel;

    /// <summary>What the worker says about its running chunk and unsent answers; the pool posts cancellations.</summary>
    internal WorkerBoard Board { get; } = board;

    /// <summary>Answers read so far: the chunk the worker numbers n (from 1) is InFlight[n - Answered - 1].</summary>
    internal long Answered { get; set; }

    /// <summary>The running chunk of a cancelled call that the worker was told about, and when its grace period
    /// ends (Stopwatch ticks).</summary>
    internal long CancelledChunk { get; set; }

    internal long CancelDeadline { get; set; }

    /// <summary>Frames waiting to be sent; swapped with <see cref="Sending"/> when a send does not fit.</summary>
    internal WireWriter Pending { get; set; } = new(4096);

    /// <summary>A batch the socket did not take at once; the reader thread writes the rest from
    /// <see cref="SendOffset"/> when there is room.</summary>
    internal WireWriter? Sending { get; set; }

    internal int SendOffset { get; set; }

    /// <summary>An empty buffer to swap in for <see cref="Pending"/> when a send starts.</summary>
    internal WireWriter? Spare { get; set; }

    /// <summary>Chunks in <see cref="Pending"/>, queued for this worker but not yet handed to a send.</summary>
    internal int Unsent { get; set; }

    /// <summary>Among the unsent chunks is one of a map-type call, which goes out at once.</summary>
    internal bool Urgent { get; set; }

    /// <summary><see cref="Pending"/> was handed to a send: nothing of it waits any more.</summary>
    internal void PendingTaken()
    {
        Unsent = 0;
        Urgent = false;
    }

    internal ChunkQueue InFlight { get; } = new();

    /// <summary>Held by whoever reads the socket: the reader thread, or a caller waiting on an Apply this worker
    /// runs. Guards the fields below and the watch; taken before the pool's lock, never inside it.</summary>
    internal object ReadGate { get; } = new();

    /// <summary>Bytes read but not yet handled: a partial frame waits here for the rest.</summary>
    internal byte[] ReadBuffer { get; set; } = new byte[64 * 1024];

    internal int Filled { get; set; }

    internal FrameList Frames { get; } = new();

    internal WireReader FrameReader { get; } = new(ReadOnlyMemory<byte>.Empty);

    /// <summary>Callers reading this worker's answers themselves right now; the reader thread is not woken for
    /// answers meanwhile.</summary>
    internal int Claims { get; set; }

    /// <summary>The reader thread's watch is in place: someone will read the socket once callers stop.</summary>
    internal bool Watched => _watch is not null;

    // Guards the watch's interest set and its disposal. Taken last, inside either of the other locks, and nothing
    // is taken inside it.
    private readonly object _watchGate = new();
    private Platform.OsIo.ReadinessWatch? _watch;

    /// <summary>Installs the reader thread's watch, with the interest the worker's state asks for.</summary>
    internal void Attach(Platform.OsIo.ReadinessWatch watch)
    {
        lock (_watchGate) _watch = watch;
        Rearm();
    }

    /// <summary>Closes the watch; later <see cref="Rearm"/> calls do nothing.</summary>
    internal void Detach()
    {
        lock (_watchGate)
        {
            _watch?.Dispose();
            _watch = null;
        }
    }

    /// <summary>
    /// Points the reader thread's watch at what it must wake for now: answers, unless callers read them
    /// themselves, and room in the socket while a send waits for it. Whoever changes either condition calls this
    /// afterwards; the state is read under the watch's lock, so the last call sets what holds last.
    /// </summary>
    internal void Rearm()
    {
        lock (_watchGate) _watch?.Want(readable: Claims == 0, writable: Sending is not null);
    }

    /// <summary>The socket reached its end: nobody reads it any more but the reader thread, which is leaving.</summary>
    internal bool Ended { get; set; }

    internal HashSet<int> Defined { get; } = [];

    /// <summary>Delegate templates the worker knows; they last as long as it does.</summary>
    internal HashSet<int> Templates { get; } = [];

    internal int ChunksSent { get; set; }

    /// <summary>A Shutdown frame has been sent: it finishes what it holds and exits.</summary>
    internal bool Retiring { get; set; }

    /// <summary>When it last answered, or was handed work while it had none (Stopwatch ticks).</summary>
    internal long LastProgress { get; set; } = Stopwatch.GetTimestamp();

    /// <summary>Holding work without answering for over 2 ms: a long task runs, and more work would queue behind it
    /// while other workers may be free (the head-of-line blocking that Python's pull model avoids).</summary>
    internal bool Stalled(long now) => InFlight.Count > 0 && now - LastProgress > Stopwatch.Frequency / 500;

    /// <summary>The worker has reported in (its runtime started and its initializer ran).</summary>
    internal bool Ready { get; set; }

    /// <summary>When the oldest unanswered chunk started, as far as the pool can tell (Stopwatch ticks).</summary>
    internal long HeadStarted { get; set; }

    /// <summary>Why the pool killed this worker (a task past its time limit); null if it died by itself.</summary>
    internal Exception? KillReason { get; set; }

    internal long Tasks { get; set; }

    internal long BusyTicks { get; set; }

    internal long IdleTicks { get; set; }

    internal long SerializeTicks { get; set; }

    /// <summary>How many chunks it may hold: enough to cover about two milliseconds of its measured chunk time,
    /// so tiny tasks stream and long ones stay balanced across workers.</summary>
    internal int Window
    {
        get
        {
            if (Tasks == 0) return 4;
            double perChunk = Math.Max(1, BusyTicks / (double)Tasks);
            return (int)Math.Clamp(Stopwatch.Frequency / 500.0 / perChunk, 2, 1024);
        }
    }
}
