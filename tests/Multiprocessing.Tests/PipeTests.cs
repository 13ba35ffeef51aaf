using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using Xunit;

namespace Multiprocessing.Tests;

public sealed class PipeTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);

    [Fact]
    public void The_seed_example_a_child_sends_42_null_hello_through_a_pipe()
    {
        var (parentEnd, childEnd) = Mp.Pipe<object?[]>();
        using (parentEnd)
        {
            using var p = Mp.Process(() =>
            {
                childEnd.Send([42, null, "hello"]);
                childEnd.Close();
            });
            p.Start();
            childEnd.Close();
            var got = parentEnd.Recv(Guard);
            Assert.Equal(new object?[] { 42, null, "hello" }, got.Select(x => x is byte or sbyte or short or ushort or int or uint or long ? (object)Convert.ToInt32(x) : x));
            p.Join(Guard);
            Assert.Equal(0, p.ExitCode);

            // Every writer is gone: Python's EOFError.
            Assert.Throws<EndOfStreamException>(() => parentEnd.Recv(Guard));
            Assert.Throws<EndOfStreamException>(() => parentEnd.RecvBytes(timeout: Guard));
        }
    }

    [Fact]
    public void A_child_echoes_items_and_raw_messages_including_16_MiB()
    {
        var (a, b) = Mp.Pipe<string>();
        using var p = Mp.Process(() =>
        {
            while (true)
            {
                var msg = b.RecvBytes();
                if (msg.Length == 0) break;
                b.SendBytes(msg);
            }

            b.Send(b.Recv() + "!");
        });
        p.Start();
        b.Close();
        using (a)
        {
            var big = new byte[16 << 20];
            new Random(1).NextBytes(big);
            foreach (var message in new[] { "x"u8.ToArray(), new byte[100_000], big })
            {
                a.SendBytes(message);
                Assert.True(a.Poll(Guard));
                Assert.Equal(message, a.RecvBytes());
            }

            a.SendBytes(big, 10, 5);
            Assert.Equal(big.AsSpan(10, 5).ToArray(), a.RecvBytes());

            a.SendBytes([]);
            a.Send("hi");
            Assert.Equal("hi!", a.Recv(Guard));
            p.Join(Guard);
            Assert.Equal(0, p.ExitCode);
        }
    }

    [Fact]
    public void RecvBytesInto_fills_a_buffer_and_a_short_buffer_gets_the_message_in_the_exception()
    {
        var (a, b) = Mp.Pipe<int>();
        using (a)
        using (b)
        {
            a.SendBytes("hello world"u8);
            var buffer = new byte[20];
            Assert.Equal(11, b.RecvBytesInto(buffer, 3));
            Assert.Equal("hello world"u8.ToArray(), buffer.AsSpan(3, 11).ToArray());

            a.SendBytes("too long for it"u8);
            var ex = Assert.Throws<BufferTooShortException>(() => b.RecvBytesInto(new byte[4]));
            Assert.Equal("too long for it"u8.ToArray(), ex.ReceivedMessage);

            // The message was taken off the connection; the next one is intact.
            a.Send(7);
            Assert.Equal(7, b.Recv(Guard));
            Assert.Throws<ArgumentOutOfRangeException>(() => b.RecvBytesInto(new byte[4], 5));

            // A message longer than the caller's limit is refused and closes the connection, as in Python.
            a.SendBytes(new byte[100]);
            Assert.Throws<InvalidDataException>(() => b.RecvBytes(maxLength: 10));
            Assert.True(b.Closed);
        }
    }

    [Fact]
    public void A_one_way_pipe_rejects_the_wrong_direction_and_Poll_honours_timeouts()
    {
        var (reader, writer) = Mp.Pipe<int>(duplex: false);
        using (reader)
        using (writer)
        {
            Assert.True(reader.Readable);
            Assert.False(reader.Writable);
            Assert.Throws<InvalidOperationException>(() => reader.Send(1));
            Assert.Throws<InvalidOperationException>(() => writer.Recv());
            Assert.False(reader.Poll());
            Assert.False(reader.Poll(TimeSpan.FromMilliseconds(50)));
            Assert.Throws<TimeoutException>(() => reader.Recv(TimeSpan.FromMilliseconds(50)));
            Assert.False(reader.TryRecv(out _));
            writer.Send(5);
            Assert.True(reader.Poll(Guard));
            Assert.True(reader.TryRecv(out int five));
            Assert.Equal(5, five);
            writer.Close();
            Assert.Throws<ObjectDisposedException>(() => writer.Send(1));
            Assert.True(reader.Poll());
            Assert.Throws<EndOfStreamException>(() => reader.Recv());
        }
    }

    [Fact]
    public void Sending_to_a_closed_end_is_a_broken_pipe_and_an_unserializable_item_sends_nothing()
    {
        var (a, b) = Mp.Pipe<object>();
        using (a)
        {
            Assert.Throws<NotSupportedException>(() => a.Send(new Thread(() => { })));
            a.Send("after");
            Assert.Equal("after", b.Recv(Guard));
            b.Close();
            Assert.Throws<IOException>(() => a.Send("nobody listens"));
        }
    }

    [Fact]
    public async Task Async_twins_receive_stream_and_cancel()
    {
        var (a, b) = Mp.Pipe<int>();
        using (a)
        {
            using var p = Mp.Process(() =>
            {
                for (int i = 0; i < 100; i++) b.Send(i);
                b.Close();
            });
            p.Start();
            b.Close();
            var all = new List<int>();
            await foreach (var i in a.ReadAllAsync()) all.Add(i);
            Assert.Equal(Enumerable.Range(0, 100), all);
            await p.JoinAsync();
        }

        var (c, d) = Mp.Pipe<int>();
        using (c)
        using (d)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => c.RecvAsync(cts.Token));
            await d.SendAsync(3);
            Assert.Equal(3, await c.RecvAsync());
            await d.SendBytesAsync(new byte[] { 1, 2 });
            Assert.Equal(new byte[] { 1, 2 }, await c.RecvBytesAsync());
            Assert.False(await c.PollAsync(TimeSpan.FromMilliseconds(20)));
        }
    }

    [Fact]
    public void Connections_travel_through_connections_queues_and_pool_tasks()
    {
        var (control, remote) = Mp.Pipe<Connection<string>>();
        var (mine, theirs) = Mp.Pipe<string>();
        using var queue = Mp.Queue<Connection<string>>();
        using var p = Mp.Process(() =>
        {
            using var viaPipe = remote.Recv();
            viaPipe.Send("through a connection");
            using var viaQueue = queue.Get();
            viaQueue.Send("through a queue");
        });
        p.Start();
        control.Send(theirs);
        queue.Put(theirs);
        theirs.Close();
        Assert.Equal("through a connection", mine.Recv(Guard));
        Assert.Equal("through a queue", mine.Recv(Guard));
        p.Join(Guard);
        Assert.Equal(0, p.ExitCode);

        var (poolEnd, taskEnd) = Mp.Pipe<int>();
        using (var pool = Mp.Pool(2))
        {
            var results = pool.Map(i =>
            {
                taskEnd.Send(i * 10);
                return i;
            }, Enumerable.Range(0, 6), chunksize: 1);
            Assert.Equal(Enumerable.Range(0, 6), results);
        }

        var sent = new List<int>();
        for (int i = 0; i < 6; i++) sent.Add(poolEnd.Recv(Guard));
        Assert.Equal(Enumerable.Range(0, 6).Select(i => i * 10), sent.Order());
        control.Dispose();
        mine.Dispose();
        poolEnd.Dispose();
        taskEnd.Dispose();
        remote.Dispose();
    }
}
