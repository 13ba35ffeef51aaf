using System.Buffers.Binary;

namespace Multiprocessing.Pool;

/// <summary>
/// Frames between a pool and its workers, on the worker's control socket: [length:int32][op:byte][body].
/// Parent to worker: Define(funcId, delegate), DefineTemplate(templateId, shape), Run(flags, callId, chunk, funcId,
/// [templateId, state,] count, items), Forget(funcId), Shutdown.
/// Worker to parent: Result(callId, chunk, count, per item: status + value or error), Stats(tasks, ticks...),
/// InitializerFailed(exception).
/// A worker runs its frames in order and answers every Run frame in order, so the pool knows each chunk by its
/// place; the <see cref="WorkerBoard"/> says which one runs.
/// </summary>
internal static class PoolProtocol
{
    internal const byte Define = 1;
    internal const byte Run = 2;
    internal const byte Forget = 3;
    internal const byte Shutdown = 4;
    internal const byte DefineTemplate = 5;

    /// <summary>Flags of a Run frame: the chunk has a time limit (the pool times it from the previous answer,
    /// so that answer goes out first); its call can be cancelled (the worker starts its cancellation watcher).</summary>
    internal const byte Timed = 1;
    internal const byte Cancellable = 2;

    /// <summary>The Run frame's function is a template (by id) bound to the state that follows the function id.</summary>
    internal const byte Templated = 4;

    internal const byte Result = 1;
    internal const byte Stats = 2;

    /// <summary>The worker's initializer threw: the exception's type name, message, stack trace and full text; the
    /// worker exits after it.</summary>
    internal const byte InitializerFailed = 3;

    internal const byte ItemOk = 0;
    internal const byte ItemFailed = 1;

    /// <summary>How a chunk's outcomes follow its count: one status and value (or error) per item, or, when every
    /// item succeeded and the result type is plain data, the values as one run of bytes.</summary>
    internal const byte PerItem = 0;
    internal const byte Bulk = 1;

    /// <summary>Writes an exception as a task's failure and an initializer's report carry it: type name, message,
    /// stack trace and full text.</summary>
    internal static void WriteError(Serialization.WireWriter writer, Exception error)
    {
        writer.String(error.GetType().FullName);
        writer.String(error.Message);
        writer.String(error.StackTrace ?? string.Empty);
        writer.String(error.ToString());
    }

    /// <summary>Reads what <see cref="WriteError"/> wrote.</summary>
    internal static RemoteException ReadError(Serialization.WireReader reader) =>
        new(reader.String()!, reader.String()!, reader.String()!, reader.String()!);

    /// <summary>A frame larger than this is a corrupt stream, not a message.</summary>
    internal const int MaxFrame = 1 << 30;

    /// <summary>Finds the complete frames at the start of <paramref name="buffer"/>; returns the bytes they span.</summary>
    internal static int CompleteFrames(ReadOnlySpan<byte> buffer, FrameList frames)
    {
        int position = 0;
        while (buffer.Length - position >= 4)
        {
            int length = BinaryPrimitives.ReadInt32LittleEndian(buffer[position..]);
            if (length < 1 || length > MaxFrame) throw new InvalidDataException($"pool frame of {length} bytes");
            if (buffer.Length - position - 4 < length) break;
            frames.Add(position + 4, length);
            position += 4 + length;
        }

        return position;
    }
}

/// <summary>
/// Where the complete frames of a buffer lie. A plain class over one int array, not a list of tuples: a generic
/// instantiation over value types of the core library cannot be precompiled into this assembly, so a fresh worker
/// would JIT every method of it before its first task.
/// </summary>
internal sealed class FrameList
{
    private int[] _items = new int[128];

    internal int Count { get; private set; }

    internal int Offset(int index) => _items[2 * index];

    internal int Length(int index) => _items[(2 * index) + 1];

    internal void Clear() => Count = 0;

    internal void Add(int offset, int length)
    {
        if (2 * (Count + 1) > _items.Length) Array.Resize(ref _items, _items.Length * 2);
        _items[2 * Count] = offset;
        _items[(2 * Count) + 1] = length;
        Count++;
    }
}
