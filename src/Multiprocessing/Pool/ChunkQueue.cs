namespace Multiprocessing.Pool;

/// <summary>
/// A double-ended queue of chunks on a ring buffer: the pool's queue of unsent work and each worker's chunks in
/// flight. It is not a <see cref="LinkedList{T}"/> (a node per task was a fifth of what ApplyAsync allocated) nor a
/// <see cref="Queue{T}"/> (which cannot put a dead worker's chunks back at the front), and it is not generic, so it is
/// precompiled with the library instead of being compiled, unoptimised first, in every process that uses it.
/// </summary>
/// <remarks>Not thread-safe: the pool reaches its queues under its own lock.</remarks>
internal sealed class ChunkQueue
{
    private ChunkRef[] _items = new ChunkRef[8];
    private int _head;

    internal int Count { get; private set; }

    /// <summary>The chunk <paramref name="index"/> places from the front.</summary>
    internal ChunkRef this[int index]
    {
        get
        {
            if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"the queue holds {Count} chunks");
            return _items[Slot(index)];
        }
    }

    internal void AddLast(ChunkRef chunk)
    {
        if (Count == _items.Length) Grow();
        _items[Slot(Count)] = chunk;
        Count++;
    }

    internal void AddFirst(ChunkRef chunk)
    {
        if (Count == _items.Length) Grow();
        _head = _head == 0 ? _items.Length - 1 : _head - 1;
        _items[_head] = chunk;
        Count++;
    }

    /// <summary>Puts all of <paramref name="other"/>'s chunks, in their order, in front of this queue's.</summary>
    internal void AddFirst(ChunkQueue other)
    {
        for (int i = other.Count - 1; i >= 0; i--) AddFirst(other[i]);
    }

    internal bool TryPeek(out ChunkRef chunk)
    {
        if (Count == 0)
        {
            chunk = default;
            return false;
        }

        chunk = _items[_head];
        return true;
    }

    /// <exception cref="InvalidOperationException">The queue is empty.</exception>
    internal ChunkRef Peek() => TryPeek(out var chunk) ? chunk : throw new InvalidOperationException("the queue is empty");

    internal bool TryDequeue(out ChunkRef chunk)
    {
        if (!TryPeek(out chunk)) return false;
        _items[_head] = default;
        _head = _head + 1 == _items.Length ? 0 : _head + 1;
        Count--;
        return true;
    }

    /// <exception cref="InvalidOperationException">The queue is empty.</exception>
    internal ChunkRef Dequeue() => TryDequeue(out var chunk) ? chunk : throw new InvalidOperationException("the queue is empty");

    /// <summary>Whether a chunk of <paramref name="call"/> is queued.</summary>
    internal bool Holds(PoolCall call)
    {
        for (int i = 0; i < Count; i++)
        {
            if (_items[Slot(i)].Call == call) return true;
        }

        return false;
    }

    /// <summary>Removes every chunk of <paramref name="call"/>, keeping the others in order.</summary>
    /// <returns>How many were removed.</returns>
    internal int RemoveAll(PoolCall call)
    {
        int kept = 0;
        for (int i = 0; i < Count; i++)
        {
            var chunk = _items[Slot(i)];
            if (chunk.Call != call) _items[Slot(kept++)] = chunk;
        }

        int removed = Count - kept;
        for (int i = kept; i < Count; i++) _items[Slot(i)] = default;
        Count = kept;
        return removed;
    }

    internal void Clear()
    {
        Array.Clear(_items);
        _head = 0;
        Count = 0;
    }

    private int Slot(int index)
    {
        int slot = _head + index;
        return slot >= _items.Length ? slot - _items.Length : slot;
    }

    private void Grow()
    {
        var larger = new ChunkRef[_items.Length * 2];
        for (int i = 0; i < Count; i++) larger[i] = _items[Slot(i)];
        _items = larger;
        _head = 0;
    }
}
