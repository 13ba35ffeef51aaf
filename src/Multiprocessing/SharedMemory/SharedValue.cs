using System.Runtime.CompilerServices;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing;

/// <summary>
/// One value of an unmanaged type in memory shared by processes, Python's <c>multiprocessing.Value</c> (with a
/// lock) and <c>RawValue</c> (without). Create with <see cref="Mp.Value{T}(T, bool)"/> or
/// <see cref="Mp.RawValue{T}(T)"/>; pass it to children by capturing it.
/// </summary>
/// <typeparam name="T">Any unmanaged type: a primitive or a struct of them.</typeparam>
/// <remarks>
/// Process-safe for single reads and writes: a value of up to 8 bytes is read and written atomically; a larger
/// one is read and written under its lock when it has one (and not already held by this thread). A compound
/// update such as <c>v.Value += 1</c> is two operations, as in Python: hold <see cref="GetLock"/> around it.
/// The memory is zeroed when created and vanishes with the last process using it.
/// </remarks>
public sealed unsafe class SharedValue<T> : IProcessShared, IDisposable, IAsyncDisposable
    where T : unmanaged
{
    private readonly SharedSegment _segment;
    private readonly ProcessLockBase? _lock;
    private readonly T* _value;
    private int _disposed;

    internal SharedValue(SharedSegment segment, ProcessLockBase? lck)
    {
        _segment = segment;
        segment.AddUser();
        _lock = lck;
        _value = (T*)segment.Pointer;
    }

    /// <summary>The shared value.</summary>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public T Value
    {
        get
        {
            ThrowIfDisposed();
            if (!NeedsLock) return SharedAccess.Read(_value);
            using (_lock!.Acquire()) return *_value;
        }

        set
        {
            ThrowIfDisposed();
            if (!NeedsLock)
            {
                SharedAccess.Write(_value, value);
                return;
            }

            using (_lock!.Acquire()) *_value = value;
        }
    }

    /// <summary>Whether this value has a lock (false for <see cref="Mp.RawValue{T}(T)"/>).</summary>
    public bool IsSynchronized => _lock is not null;

    private bool NeedsLock => sizeof(T) > 8 && _lock is not null && !_lock.IsOwnedByCurrentThread;

    /// <summary>The lock that guards this value, as Python's <c>get_lock()</c>.</summary>
    /// <returns>The lock given or made at creation.</returns>
    /// <exception cref="InvalidOperationException">The value was created without a lock.</exception>
    public ProcessLockBase GetLock() => _lock ?? throw new InvalidOperationException("this shared value has no lock: it was created with lock: false or as a RawValue");

    /// <summary>Stops using the value in this process; the memory goes when every process has let go.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) _segment.RemoveUser();
    }

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Shows the value, as Python's repr does.</summary>
    /// <returns>For example "SharedValue&lt;Double&gt;(3.1415927)".</returns>
    public override string ToString() => $"SharedValue<{typeof(T).Name}>({*_value})";

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        _segment.Write(writer);
        WriteLock(writer, _lock);
    }

    internal static SharedValue<T> ReadHandle(WireReader reader)
    {
        var segment = SharedSegment.Read(reader);
        return new SharedValue<T>(segment, ReadLock(reader));
    }

    internal static void WriteLock(WireWriter writer, ProcessLockBase? lck)
    {
        writer.Bool(lck is not null);
        if (lck is not null) SharedHandles.Write(writer, lck);
    }

    internal static ProcessLockBase? ReadLock(WireReader reader) =>
        reader.Bool() ? (ProcessLockBase)SharedHandles.Read(reader, typeof(ProcessLockBase)) : null;

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}

/// <summary>Reads and writes of shared memory that another process may change at any moment: volatile for the
/// sizes the hardware does atomically (sizeof(T) is a constant to the JIT, so only one branch survives).</summary>
internal static unsafe class SharedAccess
{
    internal static T Read<T>(T* p)
        where T : unmanaged
    {
        switch (sizeof(T))
        {
            case 1: { byte v = Volatile.Read(ref *(byte*)p); return Unsafe.As<byte, T>(ref v); }
            case 2: { short v = Volatile.Read(ref *(short*)p); return Unsafe.As<short, T>(ref v); }
            case 4: { int v = Volatile.Read(ref *(int*)p); return Unsafe.As<int, T>(ref v); }
            case 8: { long v = Volatile.Read(ref *(long*)p); return Unsafe.As<long, T>(ref v); }
            default:
                Interlocked.MemoryBarrier();
                return *p;
        }
    }

    internal static void Write<T>(T* p, T value)
        where T : unmanaged
    {
        switch (sizeof(T))
        {
            case 1: Volatile.Write(ref *(byte*)p, Unsafe.As<T, byte>(ref value)); break;
            case 2: Volatile.Write(ref *(short*)p, Unsafe.As<T, short>(ref value)); break;
            case 4: Volatile.Write(ref *(int*)p, Unsafe.As<T, int>(ref value)); break;
            case 8: Volatile.Write(ref *(long*)p, Unsafe.As<T, long>(ref value)); break;
            default:
                *p = value;
                Interlocked.MemoryBarrier();
                break;
        }
    }
}
