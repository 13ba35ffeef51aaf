using System.Collections;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

namespace Multiprocessing;

/// <summary>
/// A fixed-length array of an unmanaged type in memory shared by processes, Python's
/// <c>multiprocessing.Array</c> (with a lock) and <c>RawArray</c> (without). Create with
/// <see cref="Mp.Array{T}(int, bool)"/> or <see cref="Mp.RawArray{T}(int)"/>; pass it to children by capturing it.
/// </summary>
/// <typeparam name="T">Any unmanaged type.</typeparam>
/// <remarks>
/// Process-safe per element for elements of up to 8 bytes (each read or write is atomic); larger elements are
/// read and written under the lock when there is one. <see cref="AsSpan()"/> gives direct access at memory speed
/// with no locking: hold <see cref="GetLock"/> when other processes write at the same time. The memory is zeroed
/// when created and vanishes with the last process using it.
/// </remarks>
public sealed unsafe class SharedArray<T> : IProcessShared, IReadOnlyList<T>, IDisposable, IAsyncDisposable
    where T : unmanaged
{
    private readonly SharedSegment _segment;
    private readonly ProcessLockBase? _lock;
    private readonly T* _items;
    private int _disposed;

    internal SharedArray(SharedSegment segment, int length, ProcessLockBase? lck)
    {
        _segment = segment;
        segment.AddUser();
        Length = length;
        _lock = lck;
        _items = (T*)segment.Pointer;
    }

    /// <summary>The number of elements, as Python's <c>len(arr)</c>.</summary>
    public int Length { get; }

    int IReadOnlyCollection<T>.Count => Length;

    /// <summary>Whether this array has a lock (false for <see cref="Mp.RawArray{T}(int)"/>).</summary>
    public bool IsSynchronized => _lock is not null;

    private bool NeedsLock => sizeof(T) > 8 && _lock is not null && !_lock.IsOwnedByCurrentThread;

    /// <summary>One element.</summary>
    /// <param name="index">From 0 to <see cref="Length"/> - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside the array.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public T this[int index]
    {
        get
        {
            T* p = Element(index);
            if (!NeedsLock) return SharedAccess.Read(p);
            using (_lock!.Acquire()) return *p;
        }

        set
        {
            T* p = Element(index);
            if (!NeedsLock)
            {
                SharedAccess.Write(p, value);
                return;
            }

            using (_lock!.Acquire()) *p = value;
        }
    }

    /// <summary>The whole array as a span over the shared memory: no copy and no locking.</summary>
    /// <returns>A span of <see cref="Length"/> elements, valid while this object is not disposed.</returns>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public Span<T> AsSpan()
    {
        ThrowIfDisposed();
        return new Span<T>(_items, Length);
    }

    /// <summary>A range of the array as a span over the shared memory.</summary>
    /// <returns>The span.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the array.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public Span<T> AsSpan(int start, int length) => AsSpan().Slice(start, length);

    /// <summary>Copies <paramref name="source"/> into the array starting at <paramref name="index"/> (Python's
    /// slice assignment), under the lock when there is one.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The copy would run past the end.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void CopyFrom(ReadOnlySpan<T> source, int index = 0)
    {
        var target = AsSpan();
        if ((uint)index > (uint)Length || source.Length > Length - index)
            throw new ArgumentOutOfRangeException(nameof(index), $"{source.Length} elements at {index} do not fit an array of {Length}");
        using (Lock()) source.CopyTo(target[index..]);
    }

    /// <summary>Copies <paramref name="destination"/>.Length elements out, starting at <paramref name="index"/>
    /// (Python's slice read), under the lock when there is one.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the array.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public void CopyTo(Span<T> destination, int index = 0)
    {
        var source = AsSpan();
        if ((uint)index > (uint)Length || destination.Length > Length - index)
            throw new ArgumentOutOfRangeException(nameof(index), $"{destination.Length} elements at {index} are not inside an array of {Length}");
        using (Lock()) source.Slice(index, destination.Length).CopyTo(destination);
    }

    /// <summary>Copies a range out, as Python's <c>arr[start:stop]</c>; it also makes <c>arr[2..5]</c> work.</summary>
    /// <returns>A new array of <paramref name="length"/> elements.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the array.</exception>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public T[] Slice(int start, int length)
    {
        var copy = new T[length];
        CopyTo(copy, start);
        return copy;
    }

    /// <summary>Copies the whole array out, as Python's <c>arr[:]</c>.</summary>
    /// <returns>A new array.</returns>
    /// <exception cref="ObjectDisposedException">This object was disposed.</exception>
    public T[] ToArray()
    {
        var copy = new T[Length];
        CopyTo(copy);
        return copy;
    }

    /// <summary>The lock that guards this array, as Python's <c>get_lock()</c>.</summary>
    /// <returns>The lock given or made at creation.</returns>
    /// <exception cref="InvalidOperationException">The array was created without a lock.</exception>
    public ProcessLockBase GetLock() => _lock ?? throw new InvalidOperationException("this shared array has no lock: it was created with lock: false or as a RawArray");

    /// <summary>Enumerates a snapshot of the elements.</summary>
    /// <returns>An enumerator over a copy.</returns>
    public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)ToArray()).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Stops using the array in this process; the memory goes when every process has let go.</summary>
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

    /// <summary>Shows the start of the array.</summary>
    /// <returns>For example "SharedArray&lt;Int32&gt;[10] { 0, -1, -2, ... }".</returns>
    public override string ToString() =>
        $"SharedArray<{typeof(T).Name}>[{Length}] {{ {string.Join(", ", new ReadOnlySpan<T>(_items, Math.Min(Length, 8)).ToArray())}{(Length > 8 ? ", ..." : string.Empty)} }}";

    void IProcessShared.WriteHandle(WireWriter writer)
    {
        _segment.Write(writer);
        writer.Int32(Length);
        SharedValue<T>.WriteLock(writer, _lock);
    }

    internal static SharedArray<T> ReadHandle(WireReader reader)
    {
        var segment = SharedSegment.Read(reader);
        int length = reader.Int32();
        return new SharedArray<T>(segment, length, SharedValue<T>.ReadLock(reader));
    }

    private LockReleaser Lock() => _lock is null || _lock.IsOwnedByCurrentThread ? default : _lock.Acquire();

    private T* Element(int index)
    {
        ThrowIfDisposed();
        if ((uint)index >= (uint)Length) throw new ArgumentOutOfRangeException(nameof(index), index, $"the shared array has {Length} elements");
        return _items + index;
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed != 0, this);
}
