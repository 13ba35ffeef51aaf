namespace Multiprocessing;

/// <summary>Tuning for <see cref="Mp.Queue{T}(int, QueueOptions)"/>, <see cref="Mp.JoinableQueue{T}(int, QueueOptions)"/>
/// and <see cref="Mp.SimpleQueue{T}(QueueOptions)"/>.</summary>
/// <remarks>Setters validate at once. Read when the queue is created.</remarks>
public sealed class QueueOptions
{
    private int _bufferSize = 1 << 20;

    /// <summary>Bytes of shared memory for items in flight, a power of two from 4 KiB to 1 GiB; default 1 MiB.
    /// A producer that finds it full waits for room (Python's pipe holds 64 KiB); an item larger than the buffer
    /// streams through it. Pages are only allocated as they are first used.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a power of two in that range.</exception>
    public int BufferSize
    {
        get => _bufferSize;
        set
        {
            if (value < 4096 || value > 1 << 30 || (value & (value - 1)) != 0)
                throw new ArgumentOutOfRangeException(nameof(value), value, "the buffer size must be a power of two from 4096 to 1073741824 bytes");
            _bufferSize = value;
        }
    }
}
