using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Multiprocessing.Processes;

namespace Multiprocessing;

/// <summary>
/// The library's entry points, named as Python's <c>multiprocessing</c> module names them:
/// <c>Mp.Process</c> is <c>mp.Process</c>, <c>Mp.CurrentProcess</c> is <c>mp.current_process()</c>, and so on.
/// </summary>
/// <remarks>All members are thread-safe.</remarks>
public static class Mp
{
    // Resolved lazily: a child that never logs should not load the logging assembly while it starts.
    private static ILoggerFactory? _loggerFactory;
    private static TimeSpan _parentExitGracePeriod = TimeSpan.FromSeconds(1);

    /// <summary>Creates a process that will run <paramref name="target"/> in a child, as
    /// <c>mp.Process(target=f, args=(a, b))</c>: write <c>Mp.Process(() =&gt; F(a, b))</c>.</summary>
    /// <param name="target">A static method, lambda or closure. Captured values travel by value (MessagePack);
    /// library objects travel as handles.</param>
    /// <param name="name">The process name; defaults to "Process-N".</param>
    /// <param name="daemon">Whether the child is terminated, instead of waited for, when this process exits.</param>
    /// <returns>The process, not yet started.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="target"/> is null.</exception>
    public static ChildProcess Process(Action target, string? name = null, bool daemon = false) =>
        new(target ?? throw new ArgumentNullException(nameof(target)), name, daemon);

    /// <summary>Creates a process that runs an asynchronous <paramref name="target"/> to completion in a child.</summary>
    /// <param name="target">An async lambda or method; the child exits when its task completes.</param>
    /// <param name="name">The process name; defaults to "Process-N".</param>
    /// <param name="daemon">Whether the child is terminated, instead of waited for, when this process exits.</param>
    /// <returns>The process, not yet started.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="target"/> is null.</exception>
    public static ChildProcess Process(Func<Task> target, string? name = null, bool daemon = false) =>
        new(target ?? throw new ArgumentNullException(nameof(target)), name, daemon);

    /// <summary>Creates a pool of worker processes and starts them, as <c>mp.Pool(processes, initializer, initargs,
    /// maxtasksperchild)</c>. End it with <c>using</c> (terminates, as Python's <c>with</c>) or Close() then Join().</summary>
    /// <param name="processes">How many workers; defaults to <see cref="CpuCount"/>.</param>
    /// <param name="initializer">Runs once in each worker before its first task; a closure carries Python's initargs. If it
    /// throws in any worker, the pool stops: its tasks fail, and new work is refused, with <see cref="PoolBrokenException"/>.</param>
    /// <param name="maxTasksPerChild">Replace a worker after this many tasks (chunks); null for never.</param>
    /// <param name="options">Per-worker environment (one GPU per worker), IMap read-ahead.</param>
    /// <returns>The running pool.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="processes"/> or <paramref name="maxTasksPerChild"/> is less than 1.</exception>
    /// <exception cref="System.Runtime.Serialization.SerializationException"><paramref name="initializer"/> captures something that cannot travel.</exception>
    public static ProcessPool Pool(int? processes = null, Action? initializer = null, int? maxTasksPerChild = null, PoolOptions? options = null) =>
        new(processes, initializer, maxTasksPerChild, options);

    /// <summary>Creates a lock shared by processes, as <c>mp.Lock()</c>.</summary>
    /// <returns>An unlocked <see cref="ProcessLock"/>; capture it in a target to share it.</returns>
    /// <exception cref="System.ComponentModel.Win32Exception">The shared segment could not be created.</exception>
    public static ProcessLock Lock() => new(Multiprocessing.SharedMemory.SharedSegment.Create(Synchronization.FutexMutex.Size, "lock"));

    /// <summary>Creates a re-entrant lock shared by processes, as <c>mp.RLock()</c>.</summary>
    /// <returns>An unlocked <see cref="ProcessRLock"/>.</returns>
    /// <exception cref="System.ComponentModel.Win32Exception">The shared segment could not be created.</exception>
    public static ProcessRLock RLock() => new(Multiprocessing.SharedMemory.SharedSegment.Create(Synchronization.FutexMutex.Size, "rlock"));

    /// <summary>Creates a counting semaphore shared by processes, as <c>mp.Semaphore(value)</c>.</summary>
    /// <param name="value">The initial count.</param>
    /// <returns>The semaphore.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="value"/> is negative.</exception>
    public static ProcessSemaphore Semaphore(int value = 1) => ProcessSemaphore.Create(value, bound: null);

    /// <summary>Creates a semaphore that may not be released past its initial value, as <c>mp.BoundedSemaphore(value)</c>.</summary>
    /// <param name="value">The initial and largest count.</param>
    /// <returns>The semaphore.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="value"/> is negative.</exception>
    public static ProcessSemaphore BoundedSemaphore(int value = 1) => ProcessSemaphore.Create(value, bound: value);

    /// <summary>Creates a condition variable shared by processes, as <c>mp.Condition(lock)</c>.</summary>
    /// <param name="lock">The lock it is tied to; a new <see cref="ProcessRLock"/> when null, as in Python.</param>
    /// <returns>The condition.</returns>
    public static ProcessCondition Condition(ProcessLockBase? @lock = null) =>
        new(Multiprocessing.SharedMemory.SharedSegment.Create(ProcessCondition.Size, "condition"), @lock ?? RLock());

    /// <summary>Creates an event shared by processes, as <c>mp.Event()</c>; it starts unset.</summary>
    /// <returns>The event.</returns>
    public static ProcessEvent Event() => new(Multiprocessing.SharedMemory.SharedSegment.Create(ProcessEvent.Size, "event"));

    /// <summary>Creates a barrier shared by processes, as <c>mp.Barrier(parties, action, timeout)</c>.</summary>
    /// <param name="parties">How many callers of Wait release each other.</param>
    /// <param name="action">Runs once per pass in the last arrival's process, before anyone is released.</param>
    /// <param name="timeout">The default timeout of <see cref="ProcessBarrier.Wait"/>; null waits forever.</param>
    /// <returns>The barrier.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="parties"/> is less than 1, or
    /// <paramref name="timeout"/> is negative.</exception>
    public static ProcessBarrier Barrier(int parties, Action? action = null, TimeSpan? timeout = null) =>
        ProcessBarrier.Create(parties, action, timeout);

    /// <summary>Creates a value in shared memory with a lock, as <c>mp.Value(typecode, value, lock=True)</c>:
    /// <c>Mp.Value(0.0)</c> is <c>mp.Value('d', 0.0)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type, user structs included.</typeparam>
    /// <param name="initial">The starting value.</param>
    /// <param name="lock">True makes a new <see cref="ProcessRLock"/> (Python's default); false makes a raw value.</param>
    /// <returns>The shared value.</returns>
    /// <exception cref="System.ComponentModel.Win32Exception">The shared segment could not be created.</exception>
    public static SharedValue<T> Value<T>(T initial = default, bool @lock = true)
        where T : unmanaged => NewValue(initial, @lock ? RLock() : null);

    /// <summary>Creates a value in shared memory guarded by an existing lock, as <c>mp.Value(typecode, value, lock=l)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="initial">The starting value.</param>
    /// <param name="lock">The lock to use, shared with whatever else it guards.</param>
    /// <returns>The shared value.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="lock"/> is null.</exception>
    public static SharedValue<T> Value<T>(T initial, ProcessLockBase @lock)
        where T : unmanaged => NewValue(initial, @lock ?? throw new ArgumentNullException(nameof(@lock)));

    /// <summary>Creates a value in shared memory without a lock, as <c>mp.RawValue</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="initial">The starting value.</param>
    /// <returns>The shared value.</returns>
    public static SharedValue<T> RawValue<T>(T initial = default)
        where T : unmanaged => NewValue(initial, null);

    /// <summary>Creates a zeroed array in shared memory with a lock, as <c>mp.Array(typecode, length)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="length">The number of elements.</param>
    /// <param name="lock">True makes a new <see cref="ProcessRLock"/>; false makes a raw array.</param>
    /// <returns>The shared array.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative.</exception>
    public static SharedArray<T> Array<T>(int length, bool @lock = true)
        where T : unmanaged => NewArray<T>(length, ReadOnlySpan<T>.Empty, @lock ? RLock() : null);

    /// <summary>Creates an array in shared memory holding <paramref name="items"/>, as <c>mp.Array(typecode, items)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="items">The initial elements; the array has as many.</param>
    /// <param name="lock">True makes a new <see cref="ProcessRLock"/>; false makes a raw array.</param>
    /// <returns>The shared array.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="items"/> is null.</exception>
    public static SharedArray<T> Array<T>(IEnumerable<T> items, bool @lock = true)
        where T : unmanaged
    {
        var copy = (items ?? throw new ArgumentNullException(nameof(items))).ToArray();
        return NewArray<T>(copy.Length, copy, @lock ? RLock() : null);
    }

    /// <summary>Creates a zeroed array in shared memory guarded by an existing lock.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="length">The number of elements.</param>
    /// <param name="lock">The lock to use.</param>
    /// <returns>The shared array.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="lock"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative.</exception>
    public static SharedArray<T> Array<T>(int length, ProcessLockBase @lock)
        where T : unmanaged => NewArray<T>(length, ReadOnlySpan<T>.Empty, @lock ?? throw new ArgumentNullException(nameof(@lock)));

    /// <summary>Creates a zeroed array in shared memory without a lock, as <c>mp.RawArray(typecode, length)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="length">The number of elements.</param>
    /// <returns>The shared array.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative.</exception>
    public static SharedArray<T> RawArray<T>(int length)
        where T : unmanaged => NewArray<T>(length, ReadOnlySpan<T>.Empty, null);

    /// <summary>Creates an array in shared memory holding <paramref name="items"/>, without a lock, as <c>mp.RawArray(typecode, items)</c>.</summary>
    /// <typeparam name="T">Any unmanaged type.</typeparam>
    /// <param name="items">The initial elements.</param>
    /// <returns>The shared array.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="items"/> is null.</exception>
    public static SharedArray<T> RawArray<T>(IEnumerable<T> items)
        where T : unmanaged
    {
        var copy = (items ?? throw new ArgumentNullException(nameof(items))).ToArray();
        return NewArray<T>(copy.Length, copy, null);
    }

    /// <summary>Creates or attaches to a named block of shared memory, as
    /// <c>shared_memory.SharedMemory(name, create, size)</c>; the names are Python's, in /dev/shm.</summary>
    /// <param name="name">The block's name; null with <paramref name="create"/> picks a fresh one.</param>
    /// <param name="create">True creates a new block; false attaches to an existing one (and takes its size).</param>
    /// <param name="size">The new block's size in bytes; ignored when attaching.</param>
    /// <returns>The mapped block.</returns>
    /// <exception cref="ArgumentException">No name to attach to, or an invalid name.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Creating with a size that is not positive.</exception>
    /// <exception cref="IOException">Creating a name that already exists.</exception>
    /// <exception cref="FileNotFoundException">Attaching to a name that does not exist.</exception>
    public static SharedMemoryBlock SharedMemory(string? name = null, bool create = false, long size = 0) =>
        SharedMemoryBlock.Open(name, create, size);

    /// <summary>Makes a pipe, as <c>mp.Pipe(duplex)</c>: two connected ends to keep one and pass the other on.</summary>
    /// <typeparam name="T">What <see cref="Connection{T}.Send"/> and <see cref="Connection{T}.Recv"/> carry.</typeparam>
    /// <param name="duplex">True: both ends send and receive (a socket pair). False: the first end only receives
    /// and the second only sends (a pipe), as in Python.</param>
    /// <returns>The two ends.</returns>
    /// <exception cref="System.ComponentModel.Win32Exception">The system is out of descriptors.</exception>
    public static (Connection<T> First, Connection<T> Second) Pipe<T>(bool duplex = true)
    {
        if (duplex)
        {
            var (a, b) = Platform.OsIo.SocketPair();
            return (new Connection<T>(a, true, true, trusted: true), new Connection<T>(b, true, true, trusted: true));
        }

        var (r, w) = Platform.OsIo.Pipe();
        return (new Connection<T>(r, readable: true, writable: false, trusted: true), new Connection<T>(w, readable: false, writable: true, trusted: true));
    }

    /// <summary>Makes a queue shared by processes, as <c>mp.Queue(maxsize)</c>.</summary>
    /// <typeparam name="T">The items.</typeparam>
    /// <param name="maxSize">The most items it holds; 0 (the default) for no bound.</param>
    /// <param name="options">Buffer tuning; null for the defaults.</param>
    /// <returns>The queue.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxSize"/> is negative.</exception>
    public static ProcessQueue<T> Queue<T>(int maxSize = 0, QueueOptions? options = null) => ProcessQueue<T>.Create(maxSize, options);

    /// <summary>Makes a queue whose consumers report each item done, as <c>mp.JoinableQueue(maxsize)</c>.</summary>
    /// <typeparam name="T">The items.</typeparam>
    /// <param name="maxSize">The most items it holds; 0 (the default) for no bound.</param>
    /// <param name="options">Buffer tuning; null for the defaults.</param>
    /// <returns>The queue.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxSize"/> is negative.</exception>
    public static JoinableProcessQueue<T> JoinableQueue<T>(int maxSize = 0, QueueOptions? options = null) => JoinableProcessQueue<T>.Create(maxSize, options);

    /// <summary>Makes the plain queue of <c>mp.SimpleQueue()</c>.</summary>
    /// <typeparam name="T">The items.</typeparam>
    /// <param name="options">Buffer tuning; null for the defaults.</param>
    /// <returns>The queue.</returns>
    public static SimpleProcessQueue<T> SimpleQueue<T>(QueueOptions? options = null) => new(ProcessQueue<T>.Create(0, options));

    /// <summary>Listens for connections from other programs, as <c>multiprocessing.connection.Listener</c>.</summary>
    /// <typeparam name="T">What the accepted connections carry (plain MessagePack: no type names travel).</typeparam>
    /// <param name="address">An <see cref="System.Net.IPEndPoint"/> (port 0 picks one) or a
    /// <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/>; null makes an abstract Unix socket.</param>
    /// <param name="authKey">With a key, every client must prove it knows it (and the listener proves it too);
    /// null accepts anyone who can reach the address.</param>
    /// <param name="backlog">How many connections may wait to be accepted.</param>
    /// <param name="options">Message size limit and handshake timeout.</param>
    /// <returns>The listener; <see cref="ConnectionListener{T}.Address"/> is where clients connect.</returns>
    /// <exception cref="ArgumentException">An empty authKey.</exception>
    /// <exception cref="System.Net.Sockets.SocketException">The address is in use or cannot be bound.</exception>
    public static ConnectionListener<T> Listener<T>(System.Net.EndPoint? address = null, byte[]? authKey = null, int backlog = 16, ConnectionOptions? options = null) =>
        new(address, authKey, backlog, options);

    /// <summary>Connects to a <see cref="ConnectionListener{T}"/> (or a Python Listener), as
    /// <c>multiprocessing.connection.Client</c>.</summary>
    /// <typeparam name="T">What the connection carries.</typeparam>
    /// <param name="address">The listener's address.</param>
    /// <param name="authKey">The listener's key, or null if it has none.</param>
    /// <param name="options">Message size limit and handshake timeout.</param>
    /// <returns>The connection, authenticated both ways when there is a key.</returns>
    /// <exception cref="System.Security.Authentication.AuthenticationException">The keys differ.</exception>
    /// <exception cref="System.Net.Sockets.SocketException">Nobody listens there.</exception>
    public static Connection<T> Client<T>(System.Net.EndPoint address, byte[]? authKey = null, ConnectionOptions? options = null) =>
        ConnectionListener<T>.Connect(address, authKey, options);

    /// <summary>Starts a manager server process for this program's processes, Python's <c>mp.Manager()</c>.</summary>
    /// <param name="options">Limits, start timeout, and the user types the manager may create.</param>
    /// <returns>The manager; dispose it to stop the server (Python's <c>with Manager() as m:</c>).</returns>
    /// <exception cref="InvalidOperationException">The server process could not start.</exception>
    /// <remarks>The server listens on an abstract Unix socket with a random key; values use the library's own
    /// encoding, as between a parent and its children.</remarks>
    public static ProcessManager Manager(ManagerOptions? options = null) => ProcessManager.Start(null, null, options);

    /// <summary>Starts a manager server process that serves on <paramref name="address"/> (TCP or a Unix socket),
    /// Python's <c>BaseManager(address, authkey).start()</c>. Other programs reach it with
    /// <see cref="ConnectManager"/>.</summary>
    /// <param name="address">Where to listen; an <see cref="System.Net.IPEndPoint"/> with port 0 picks a port
    /// (see <see cref="ProcessManager.Address"/>).</param>
    /// <param name="authKey">The key every client must prove it knows before any object is reachable.</param>
    /// <param name="options">Limits, start timeout, and the user types the manager may create.</param>
    /// <returns>The manager; dispose it to stop the server.</returns>
    /// <exception cref="ArgumentException">An empty key, or an address that is neither IP nor Unix.</exception>
    /// <exception cref="System.Net.Sockets.SocketException">The address is in use or cannot be bound.</exception>
    /// <remarks>Values on such a manager are plain MessagePack with no type names, so no client can make another
    /// process instantiate a type of its choosing; typed values (records, arrays, dictionaries) work, and
    /// <c>object</c> values come back as primitives, arrays and dictionaries.</remarks>
    public static ProcessManager Manager(System.Net.EndPoint address, byte[] authKey, ManagerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(authKey);
        return ProcessManager.Start(address, authKey, options);
    }

    /// <summary>Connects to a manager server that another program started, Python's
    /// <c>BaseManager(address, authkey).connect()</c>.</summary>
    /// <param name="address">The server's address.</param>
    /// <param name="authKey">The server's key.</param>
    /// <param name="options">Limits and handshake timeout.</param>
    /// <returns>A manager that creates objects on that server; disposing it disconnects.</returns>
    /// <exception cref="System.Security.Authentication.AuthenticationException">The key is wrong.</exception>
    /// <exception cref="System.Net.Sockets.SocketException">Nobody serves there.</exception>
    public static ProcessManager ConnectManager(System.Net.EndPoint address, byte[] authKey, ManagerOptions? options = null) =>
        ProcessManager.Connect(address, authKey, options);

    private static unsafe SharedValue<T> NewValue<T>(T initial, ProcessLockBase? @lock)
        where T : unmanaged
    {
        var segment = Multiprocessing.SharedMemory.SharedSegment.Create(sizeof(T), "value");
        *(T*)segment.Pointer = initial;
        return new SharedValue<T>(segment, @lock);
    }

    private static unsafe SharedArray<T> NewArray<T>(int length, ReadOnlySpan<T> items, ProcessLockBase? @lock)
        where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var segment = Multiprocessing.SharedMemory.SharedSegment.Create((long)length * sizeof(T), "array");
        items.CopyTo(new Span<T>(segment.Pointer, length));
        return new SharedArray<T>(segment, length, @lock);
    }

    /// <summary>This process, as <c>mp.current_process()</c>: "MainProcess" in the main process.</summary>
    public static ProcessInfo CurrentProcess => ProcessRuntime.Current;

    /// <summary>The process that started this one, as <c>mp.parent_process()</c>; null in the main process.</summary>
    public static ProcessInfo? ParentProcess => ProcessRuntime.Parent;

    /// <summary>The children of this process that are still running, as <c>mp.active_children()</c>.</summary>
    /// <returns>A snapshot; exited children found on the way are reaped.</returns>
    public static IReadOnlyList<ChildProcess> ActiveChildren() =>
        ProcessRuntime.Snapshot().Where(c => c.IsAlive).ToArray();

    /// <summary>The number of processors this process may use, as <c>mp.cpu_count()</c> (affinity and container
    /// limits respected).</summary>
    public static int CpuCount => Environment.ProcessorCount;

    /// <summary>How Start obtains processes; see <see cref="Multiprocessing.StartMethod"/>. Defaults to Spawn.</summary>
    public static StartMethod StartMethod { get; private set; } = StartMethod.Spawn;

    /// <summary>Chooses how children are started, as <c>mp.set_start_method()</c>. Unlike Python it may be called
    /// again; switching away from <see cref="StartMethod.Prespawn"/> stops the warm spares.</summary>
    /// <param name="method">The start method.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="method"/> is not a defined value.</exception>
    public static void SetStartMethod(StartMethod method)
    {
        if (!Enum.IsDefined(method)) throw new ArgumentOutOfRangeException(nameof(method), method, "unknown start method");
        StartMethod = method;
        if (method != StartMethod.Prespawn) Launcher.DrainSpare();
    }

    /// <summary>How long a child keeps running after it sees its parent die before it exits too (default 1 s),
    /// so it can observe <see cref="ProcessInfo.Join"/> on <see cref="ParentProcess"/> and finish writing.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative, or longer than 10 seconds.</exception>
    public static TimeSpan ParentExitGracePeriod
    {
        get => _parentExitGracePeriod;
        set
        {
            if (value < TimeSpan.Zero || value > TimeSpan.FromSeconds(10))
                throw new ArgumentOutOfRangeException(nameof(value), value, "the grace period must be between 0 and 10 seconds");
            _parentExitGracePeriod = value;
        }
    }

    /// <summary>Where the library logs (failures it cannot throw to a caller). Defaults to no logging.</summary>
    /// <exception cref="ArgumentNullException">The value is null.</exception>
    public static ILoggerFactory LoggerFactory
    {
        get => _loggerFactory ?? NullLoggerFactory.Instance;
        set => _loggerFactory = value ?? throw new ArgumentNullException(nameof(value));
    }
}
