using Multiprocessing.Pool;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>The pool's queue of chunks, alone: no processes.</summary>
public sealed class ChunkQueueTests
{
    private static PoolCall Call(int id) => new ApplyCall<int>(null!, id, id, default, new AsyncResult<int>(), null, null);

    private static List<(int Call, int Chunk)> Contents(ChunkQueue queue) =>
        Enumerable.Range(0, queue.Count).Select(i => (queue[i].Call.Id, queue[i].Chunk)).ToList();

    [Fact]
    public void Keeps_order_across_wrap_around_and_growth()
    {
        var a = Call(1);
        var queue = new ChunkQueue();
        var expected = new Queue<int>();
        int next = 0;

        // Interleaved adds and removes walk the head round the ring several times, and past two growths.
        for (int round = 0; round < 50; round++)
        {
            for (int i = 0; i < 3 + (round % 5); i++)
            {
                queue.AddLast(new ChunkRef(a, next));
                expected.Enqueue(next++);
            }

            for (int i = 0; i < 2; i++)
            {
                Assert.True(queue.TryDequeue(out var chunk));
                Assert.Equal(expected.Dequeue(), chunk.Chunk);
            }
        }

        Assert.Equal(expected.ToList(), Contents(queue).Select(c => c.Chunk).ToList());
        while (queue.TryDequeue(out var chunk)) Assert.Equal(expected.Dequeue(), chunk.Chunk);
        Assert.Equal(0, queue.Count);
        Assert.False(queue.TryPeek(out _));
        Assert.Throws<InvalidOperationException>(() => queue.Dequeue());
        Assert.Throws<ArgumentOutOfRangeException>(() => queue[0]);
    }

    [Fact]
    public void A_dead_workers_chunks_go_back_in_front_in_their_order()
    {
        var (a, b) = (Call(1), Call(2));
        var pending = new ChunkQueue();
        pending.AddLast(new ChunkRef(b, 10));
        pending.AddLast(new ChunkRef(b, 11));
        var inFlight = new ChunkQueue();
        for (int i = 0; i < 9; i++) inFlight.AddLast(new ChunkRef(a, i));

        pending.AddFirst(inFlight);

        Assert.Equal(Enumerable.Range(0, 9).Select(i => (1, i)).Concat([(2, 10), (2, 11)]).ToList(), Contents(pending));
        Assert.Equal((1, 0), (pending.Peek().Call.Id, pending.Peek().Chunk));
    }

    [Fact]
    public void Removing_a_calls_chunks_keeps_the_others_in_order()
    {
        var (a, b) = (Call(1), Call(2));
        var queue = new ChunkQueue();

        // Start past the front of the ring, so the kept chunks move across its end.
        for (int i = 0; i < 6; i++) queue.AddLast(new ChunkRef(a, -1));
        for (int i = 0; i < 6; i++) queue.Dequeue();
        for (int i = 0; i < 7; i++) queue.AddLast(new ChunkRef(i % 2 == 0 ? a : b, i));

        Assert.True(queue.Holds(a));
        Assert.Equal(4, queue.RemoveAll(a));
        Assert.False(queue.Holds(a));
        Assert.Equal([(2, 1), (2, 3), (2, 5)], Contents(queue));
        Assert.Equal(0, queue.RemoveAll(a));

        queue.AddLast(new ChunkRef(a, 7));
        Assert.Equal([(2, 1), (2, 3), (2, 5), (1, 7)], Contents(queue));
        queue.Clear();
        Assert.Equal(0, queue.Count);
    }
}
