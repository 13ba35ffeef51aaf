using Xunit;

namespace Multiprocessing.Tests;

public sealed class QueueTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void The_seed_example_a_child_puts_42_null_hello()
    {
        using var q = Mp.Queue<object?[]>();
        using var p = Mp.Process(() => q.Put([42, null, "hello"]));
        p.Start();
        var got = q.Get(Guard);
        Assert.Equal(3, got.Length);
        Assert.Equal(42, Convert.ToInt32(got[0]));
        Assert.Null(got[1]);
        Assert.Equal("hello", got[2]);
        p.Join(Guard);
    }

    [Fact]
    public void Timeouts_TryPut_TryGet_and_counts_follow_Python()
    {
        using var q = Mp.Queue<int>(maxSize: 2);
        Assert.True(q.IsEmpty);
        Assert.False(q.TryGet(out _));
        Assert.Throws<TimeoutException>(() => q.Get(TimeSpan.FromMilliseconds(50)));
        q.Put(1);
        Assert.True(q.TryPut(2));
        Assert.True(q.IsFull);
        Assert.Equal(2, q.Count);
        Assert.False(q.TryPut(3));
        Assert.Throws<TimeoutException>(() => q.Put(3, TimeSpan.FromMilliseconds(50)));
        Assert.Throws<ArgumentOutOfRangeException>(() => q.Put(3, TimeSpan.FromSeconds(-1)));
        Assert.Equal(1, q.Get());
        Assert.True(q.TryGet(out int two));
        Assert.Equal(2, two);
        Assert.True(q.IsEmpty);
        Assert.False(q.IsFull);
        Assert.Throws<ArgumentOutOfRangeException>(() => Mp.Queue<int>(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new QueueOptions { BufferSize = 1000 });
    }

    [Fact]
    public void An_item_that_cannot_be_serialized_fails_at_Put_and_the_queue_lives_on()
    {
        using var q = Mp.Queue<object>();
        var ex = Assert.Throws<NotSupportedException>(() => q.Put(new Thread(() => { })));
        Assert.Contains("Thread", ex.Message);
        Assert.True(q.IsEmpty);
        q.Put("fine");
        Assert.Equal("fine", q.Get(Guard));
    }

    [Fact]
    public void Items_from_each_producer_arrive_in_order_and_none_are_lost_at_exit()
    {
        using var q = Mp.Queue<(int Producer, int Seq)>();
        const int each = 5000;
        var producers = Enumerable.Range(0, 3).Select(id => Mp.Process(() =>
        {
            for (int i = 0; i < each; i++) q.Put((id, i));
        })).ToList();
        producers.ForEach(p => p.Start());

        // The producers exit right after their last Put; every item must still arrive.
        foreach (var p in producers)
        {
            p.Join(Guard);
            Assert.Equal(0, p.ExitCode);
        }

        var next = new int[3];
        for (int n = 0; n < 3 * each; n++)
        {
            var (producer, seq) = q.Get(Guard);
            Assert.Equal(next[producer]++, seq);
        }

        Assert.True(q.IsEmpty);
        producers.ForEach(p => p.Dispose());
    }

    [Fact]
    public void Items_larger_than_the_buffer_stream_through_it()
    {
        using var q = Mp.Queue<byte[]>(options: new QueueOptions { BufferSize = 4096 });
        var big = new byte[3 << 20];
        new Random(2).NextBytes(big);
        using var p = Mp.Process(() =>
        {
            q.Put(big);
            q.Put([1, 2, 3]);
        });
        p.Start();
        Assert.Equal(big, q.Get(Guard));
        Assert.Equal(new byte[] { 1, 2, 3 }, q.Get(Guard));
        p.Join(Guard);
    }

    [Fact]
    public void Queues_travel_to_pool_tasks_which_Python_refuses()
    {
        using var q = Mp.Queue<int>();
        using (var pool = Mp.Pool(2))
        {
            pool.Map(i =>
            {
                q.Put(i * i);
                return 0;
            }, Enumerable.Range(0, 20), chunksize: 1);
        }

        var got = Enumerable.Range(0, 20).Select(_ => q.Get(Guard)).Order();
        Assert.Equal(Enumerable.Range(0, 20).Select(i => i * i), got);
    }

    [Fact]
    public void Locks_values_and_events_travel_inside_queue_items()
    {
        using var inbox = Mp.Queue<(ProcessLock Lock, SharedValue<int> Counter, ProcessEvent Done)>();
        using var counter = Mp.RawValue<int>();
        using var lck = Mp.Lock();
        using var done = Mp.Event();
        using var p = Mp.Process(() =>
        {
            var (l, c, d) = inbox.Get();
            using (l.Acquire()) c.Value += 41;
            d.Set();
        });
        p.Start();
        inbox.Put((lck, counter, done));
        Assert.True(done.Wait(Guard));
        using (lck.Acquire()) Assert.Equal(41, counter.Value);
        p.Join(Guard);
        Assert.Equal(0, p.ExitCode);
    }

    [Fact]
    public void A_consumer_killed_while_waiting_does_not_block_the_queue()
    {
        using var q = Mp.Queue<int>();
        using var started = Mp.Event();
        using var victim = Mp.Process(() =>
        {
            started.Set();
            q.Get();
        });
        victim.Start();
        Assert.True(started.Wait(Guard));

        // The victim holds the consumer lock while it waits; once it is killed the next consumer takes over.
        Assert.True(Wait.Until(() => victim.IsAlive, Guard));
        victim.Kill();
        victim.Join(Guard);
        q.Put(5);
        Assert.Equal(5, q.Get(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void JoinableQueue_counts_tasks_and_one_TaskDone_too_many_throws()
    {
        using var q = Mp.JoinableQueue<int>();
        using var results = Mp.Queue<int>();
        using var worker = Mp.Process(() =>
        {
            for (int i = 0; i < 10; i++)
            {
                results.Put(q.Get() * 2);
                q.TaskDone();
            }
        });
        worker.Start();
        for (int i = 0; i < 10; i++) q.Put(i);
        Assert.True(q.Join(Guard));
        Assert.Equal(0, q.UnfinishedTasks);
        Assert.Equal(10, Enumerable.Range(0, 10).Select(_ => results.Get(Guard)).Count());
        Assert.Throws<InvalidOperationException>(() => q.TaskDone());
        q.Put(1);
        Assert.False(q.Join(TimeSpan.FromMilliseconds(50)));
        q.Get();
        q.TaskDone();
        Assert.True(q.Join(TimeSpan.Zero));
        worker.Join(Guard);
    }

    [Fact]
    public void SimpleQueue_puts_and_gets_across_processes()
    {
        using var requests = Mp.SimpleQueue<string>();
        using var answers = Mp.SimpleQueue<string>();
        Assert.True(requests.IsEmpty);
        using var p = Mp.Process(() => answers.Put(requests.Get() + " back"));
        p.Start();
        requests.Put("there and");
        Assert.Equal("there and back", answers.Get(Guard));
        Assert.True(requests.IsEmpty);
        Assert.False(answers.TryGet(out _));
        p.Join(Guard);
    }

    [Fact]
    public async Task Async_twins_wait_and_cancel()
    {
        using var q = Mp.Queue<int>(maxSize: 1);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => q.GetAsync(cts.Token));
        await q.PutAsync(1);
        using var cts2 = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => q.PutAsync(2, cts2.Token));
        Assert.Equal(1, q.Count);
        var later = q.GetAsync();
        Assert.Equal(1, await later);
        using var p = Mp.Process(() => q.Put(9));
        p.Start();
        Assert.Equal(9, await q.GetAsync());
        await p.JoinAsync();
        q.Close();
        Assert.Throws<ObjectDisposedException>(() => q.Put(1));
        q.JoinThread();
    }
}
