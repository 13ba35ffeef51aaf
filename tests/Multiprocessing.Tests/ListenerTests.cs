using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Text;
using MessagePack;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>Listener and Client (Python's multiprocessing.connection): Unix and TCP transports, authentication,
/// hostile frames, interop with CPython, and cleanup.</summary>
public sealed class ListenerTests : ProcessTest
{
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);
    private static readonly byte[] Key = "listener-test-key"u8.ToArray();
    private static readonly byte[] ChallengeTag = "#CHALLENGE#"u8.ToArray();
    private static readonly byte[] WelcomeTag = "#WELCOME#"u8.ToArray();

    /// <summary>[42, null, "hello"] in MessagePack, written by hand so the test does not trust our own encoder.</summary>
    private static readonly byte[] SeedPayload = [0x93, 0x2A, 0xC0, 0xA5, (byte)'h', (byte)'e', (byte)'l', (byte)'l', (byte)'o'];

    [MessagePackObject]
    public sealed record Reading([property: Key(0)] int Id, [property: Key(1)] string? Label, [property: Key(2)] long? Missing);

    // ---- 1. transports ----

    [Fact]
    public void The_default_abstract_address_serves_a_child_client_with_items_and_raw_bytes_both_ways()
    {
        string name;
        using (var listener = Mp.Listener<object?[]>())
        {
            var address = Assert.IsType<UnixDomainSocketEndPoint>(listener.Address);
            string shown = address.ToString();
            Assert.StartsWith("@multiprocessing-listener-", shown, StringComparison.Ordinal);
            name = shown[1..];
            Assert.True(AbstractSocketListed(name), "the abstract socket is not in /proc/net/unix");

            // The child gets the abstract name as a plain string and builds its own endpoint.
            using var p = Mp.Process(() =>
            {
                using var c = Mp.Client<object?[]>(new UnixDomainSocketEndPoint("\0" + name));
                c.Send(c.Recv(Guard));
                c.SendBytes(c.RecvBytes(timeout: Guard).Reverse().ToArray());
                c.Send([7, null, "from child", 3.5]);
                c.SendBytes([1, 2, 3, 4, 5]);
            });
            p.Start();
            using (var server = listener.Accept(Guard))
            {
                server.Send([42, null, "hello"]);
                Assert.Equal(new object?[] { 42, null, "hello" }, Normalize(server.Recv(Guard)));
                server.SendBytes("abcdef"u8);
                Assert.Equal("fedcba"u8.ToArray(), server.RecvBytes(timeout: Guard));
                Assert.Equal(new object?[] { 7, null, "from child", 3.5 }, Normalize(server.Recv(Guard)));
                Assert.Equal(new byte[] { 1, 2, 3, 4, 5 }, server.RecvBytes(timeout: Guard));
                Assert.Throws<EndOfStreamException>(() => server.Recv(Guard));
            }

            Assert.True(p.Join(Guard));
            Assert.Equal(0, p.ExitCode);
        }

        // An abstract socket has no file; once closed it is gone from the kernel's table.
        Assert.True(Wait.Until(() => !AbstractSocketListed(name), Guard), "the abstract socket outlived Dispose");
    }

    [Fact]
    public void An_explicit_socket_path_is_a_file_while_listening_and_is_removed_on_Dispose()
    {
        using var scratch = new Scratch();
        string path = scratch.File("listener.sock");
        var endpoint = new UnixDomainSocketEndPoint(path);
        var listener = Mp.Listener<string>(endpoint);
        try
        {
            Assert.True(Path.Exists(path), "the socket file was not created");
            Assert.Equal(path, listener.Address.ToString());

            // A second listener on the same path fails and must not remove the first one's file.
            Assert.ThrowsAny<SocketException>(() => Mp.Listener<string>(endpoint));
            Assert.True(Path.Exists(path), "a failed second listener removed the first one's socket file");

            using var p = Mp.Process(() =>
            {
                using var c = Mp.Client<string>(new UnixDomainSocketEndPoint(path));
                c.Send(c.Recv(Guard) + " back");
                c.SendBytes(c.RecvBytes(timeout: Guard).Select(b => (byte)(b + 1)).ToArray());
            });
            p.Start();
            using (var server = listener.Accept(Guard))
            {
                server.Send("there");
                Assert.Equal("there back", server.Recv(Guard));
                server.SendBytes([0, 1, 254]);
                Assert.Equal(new byte[] { 1, 2, 255 }, server.RecvBytes(timeout: Guard));
            }

            Assert.True(p.Join(Guard));
            Assert.Equal(0, p.ExitCode);

            // And an in-process client, both directions, typed and raw.
            using var client = Mp.Client<string>(endpoint);
            using var accepted = listener.Accept(Guard);
            client.Send("in process");
            Assert.Equal("in process", accepted.Recv(Guard));
            accepted.SendBytes(new byte[200_000]);
            Assert.Equal(200_000, client.RecvBytes(timeout: Guard).Length);
        }
        finally
        {
            listener.Dispose();
        }

        Assert.False(Path.Exists(path), "Dispose left the socket file behind");
        listener.Dispose();
        listener.Close();
        Assert.Throws<ObjectDisposedException>(() => listener.Accept(TimeSpan.Zero));
        Assert.ThrowsAny<SocketException>(() => Mp.Client<string>(endpoint));
    }

    [Fact]
    public async Task Tcp_loopback_on_port_0_reports_the_chosen_port_and_carries_records_to_and_from_a_child()
    {
        await using var listener = Mp.Listener<Reading>(new IPEndPoint(IPAddress.Loopback, 0));
        var address = Assert.IsType<IPEndPoint>(listener.Address);
        Assert.Equal(IPAddress.Loopback, address.Address);
        Assert.NotEqual(0, address.Port);
        int port = address.Port;

        using var p = Mp.Process(() =>
        {
            using var c = Mp.Client<Reading>(new IPEndPoint(IPAddress.Loopback, port));
            var r = c.Recv(Guard);
            c.Send(r with { Id = r.Id + 1, Label = r.Label + "!" });
            var big = c.RecvBytes(timeout: Guard);
            c.SendBytes(big.AsSpan(0, big.Length / 2));
            c.Send(new Reading(-5, null, long.MinValue));
        });
        p.Start();
        using (var server = await listener.AcceptAsync().WaitAsync(Guard))
        {
            await server.SendAsync(new Reading(41, "answer", null)).WaitAsync(Guard);
            Assert.Equal(new Reading(42, "answer!", null), await server.RecvAsync().WaitAsync(Guard));
            var big = new byte[300_000];
            new Random(5).NextBytes(big);
            await server.SendBytesAsync(big).WaitAsync(Guard);
            Assert.Equal(big.AsSpan(0, 150_000).ToArray(), await server.RecvBytesAsync().WaitAsync(Guard));
            Assert.Equal(new Reading(-5, null, long.MinValue), await server.RecvAsync().WaitAsync(Guard));
            await Assert.ThrowsAsync<EndOfStreamException>(() => server.RecvAsync().WaitAsync(Guard));
        }

        await p.JoinAsync().WaitAsync(Guard);
        Assert.Equal(0, p.ExitCode);
    }

    [Fact]
    public void Tcp_over_IPv6_loopback_works_where_the_host_has_it()
    {
        if (!Socket.OSSupportsIPv6) return;
        ConnectionListener<int> listener;
        try
        {
            listener = Mp.Listener<int>(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        }
        catch (SocketException)
        {
            return; // IPv6 compiled in but no ::1 configured (some containers).
        }

        using (listener)
        {
            var address = Assert.IsType<IPEndPoint>(listener.Address);
            Assert.Equal(AddressFamily.InterNetworkV6, address.AddressFamily);
            using var client = Mp.Client<int>(address);
            using var server = listener.Accept(Guard);
            client.Send(6);
            Assert.Equal(6, server.Recv(Guard));
            server.SendBytes([9]);
            Assert.Equal(new byte[] { 9 }, client.RecvBytes(timeout: Guard));
        }
    }

    // ---- 2. authentication ----

    [Fact]
    public async Task Matching_keys_work_a_wrong_key_fails_on_both_sides_and_the_listener_keeps_serving()
    {
        using var listener = Mp.Listener<string>(new IPEndPoint(IPAddress.Loopback, 0), Key);
        int port = ((IPEndPoint)listener.Address).Port;
        byte[] key = Key;

        // A child with the right key: both sides prove themselves.
        using (var p = Mp.Process(() =>
        {
            using var c = Mp.Client<string>(new IPEndPoint(IPAddress.Loopback, port), key);
            c.Send(c.Recv(Guard).ToUpperInvariant());
        }))
        {
            p.Start();
            using (var server = listener.Accept(Guard))
            {
                server.Send("child");
                Assert.Equal("CHILD", server.Recv(Guard));
            }

            Assert.True(p.Join(Guard));
            Assert.Equal(0, p.ExitCode);
        }

        for (int round = 0; round < 3; round++)
        {
            // Wrong key: the listener's Accept and the client's Mp.Client both refuse.
            var wrong = Task.Run(() => Mp.Client<string>(new IPEndPoint(IPAddress.Loopback, port), "not-the-key"u8.ToArray()));
            bool viaAsync = round == 1;
            if (viaAsync) await Assert.ThrowsAsync<AuthenticationException>(() => listener.AcceptAsync().WaitAsync(Guard));
            else Assert.Throws<AuthenticationException>(() => listener.Accept(Guard));
            await Assert.ThrowsAsync<AuthenticationException>(() => wrong.WaitAsync(Guard));

            // The listener still serves a client with the right key.
            var right = Task.Run(() => Mp.Client<string>(new IPEndPoint(IPAddress.Loopback, port), Key));
            using var server = viaAsync ? await listener.AcceptAsync().WaitAsync(Guard) : listener.Accept(Guard);
            using var client = await right.WaitAsync(Guard);
            client.Send("round " + round);
            Assert.Equal("round " + round, server.Recv(Guard));
            server.SendBytes([(byte)round]);
            Assert.Equal(new[] { (byte)round }, client.RecvBytes(timeout: Guard));
        }

        Assert.Throws<ArgumentException>(() => Mp.Listener<string>(authKey: []));
        Assert.Throws<ArgumentException>(() => Mp.Client<string>(listener.Address, []));
    }

    [Fact]
    public async Task A_client_without_a_key_is_dropped_within_the_handshake_timeout_and_sees_only_the_challenge()
    {
        var options = new ConnectionOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) };
        using var listener = Mp.Listener<string>(authKey: Key, options: options);
        using (var keyless = Mp.Client<string>(listener.Address))
        {
            var clock = Stopwatch.StartNew();
            var ex = Assert.Throws<AuthenticationException>(() => listener.Accept(Guard));
            var took = clock.Elapsed;
            Assert.True(took >= TimeSpan.FromMilliseconds(250), $"gave up after {took.TotalMilliseconds} ms, before the handshake timeout");
            Assert.True(took < TimeSpan.FromSeconds(10), $"took {took.TotalSeconds} s to give up");
            Assert.Contains("within", ex.Message, StringComparison.Ordinal);

            // The keyless client got the challenge as an ordinary message, then the connection closed.
            Assert.StartsWith("#CHALLENGE#", Encoding.ASCII.GetString(keyless.RecvBytes(timeout: Guard)), StringComparison.Ordinal);
            Assert.Throws<EndOfStreamException>(() => keyless.RecvBytes(timeout: Guard));
        }

        var right = Task.Run(() => Mp.Client<string>(listener.Address, Key));
        using var server = listener.Accept(Guard);
        using var client = await right.WaitAsync(Guard);
        client.Send("after the keyless one");
        Assert.Equal("after the keyless one", server.Recv(Guard));
    }

    [Fact]
    public async Task A_client_with_a_key_against_a_listener_without_one_gives_up_after_its_handshake_timeout()
    {
        using var listener = Mp.Listener<string>();
        var options = new ConnectionOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) };
        var clock = Stopwatch.StartNew();
        var keyed = Task.Run(() => Mp.Client<string>(listener.Address, Key, options));
        using var server = listener.Accept(Guard);
        await Assert.ThrowsAsync<AuthenticationException>(() => keyed.WaitAsync(Guard));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed.TotalSeconds} s");
        Assert.Throws<EndOfStreamException>(() => server.Recv(Guard));
    }

    [Fact]
    public async Task A_legacy_20_byte_challenge_is_answered_with_bare_MD5_even_when_it_starts_with_a_brace()
    {
        // A Python 3.11 server challenges with 20 random bytes and expects a bare HMAC-MD5. About one challenge in
        // 3,500 starts with '{' and has a '}' soon after; it must not be mistaken for a "{digest}" prefix.
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        server.Listen(4);
        var endpoint = (IPEndPoint)server.LocalEndPoint!;
        byte[][] challenges = [[.. "{x}"u8, .. new byte[17]], [.. "{sha256}"u8, .. new byte[12]], [.. "{md5}"u8, .. new byte[15]], RandomNumberGenerator.GetBytes(20)];
        foreach (var message in challenges)
        {
            RandomNumberGenerator.Fill(message.AsSpan(message.Length - 12));
            var connecting = Task.Run(() => Mp.Client<string>(endpoint, Key));
            using var peer = await server.AcceptAsync().WaitAsync(Guard);
            peer.ReceiveTimeout = (int)Guard.TotalMilliseconds;
            SendFrame(peer, [.. ChallengeTag, .. message]);
            var answer = ReadFrame(peer);
            if (answer is null) await connecting.WaitAsync(Guard); // Surfaces the client's exception.
            Assert.Equal(HMACMD5.HashData(Key, message), answer);
            SendFrame(peer, WelcomeTag);

            // Then the client challenges us; answer as Python 3.11 does, bare MD5 of the whole message.
            var challenge = ReadFrame(peer)!;
            Assert.True(challenge.AsSpan().StartsWith(ChallengeTag));
            SendFrame(peer, HMACMD5.HashData(Key, challenge[ChallengeTag.Length..]));
            Assert.Equal(WelcomeTag, ReadFrame(peer));
            using var client = await connecting.WaitAsync(Guard);
            client.SendBytes("authenticated"u8);
            Assert.Equal("authenticated"u8.ToArray(), ReadFrame(peer));
        }
    }

    // ---- 3. hostile frames ----

    [Fact]
    public void Headers_claiming_2_GB_or_more_than_the_limit_are_refused_at_once_without_allocating_and_the_listener_keeps_serving()
    {
        var options = new ConnectionOptions { MaxMessageSize = 1 << 20 };
        using var listener = Mp.Listener<object?[]>(options: options);
        var headers = new (string What, byte[] Header)[]
        {
            ("2 GB", BigEndian(0x7FFFFFF0)),
            ("limit + 1", BigEndian((1 << 20) + 1)),
            ("negative", BigEndian(unchecked((int)0x80000000))),
            ("escaped 1 TiB", [.. BigEndian(-1), .. BigEndian64(1L << 40)]),
            ("escaped negative", [.. BigEndian(-1), .. BigEndian64(long.MinValue)]),
        };
        int i = 0;
        foreach (var (what, header) in headers)
        {
            foreach (bool raw in new[] { false, true })
            {
                using var liar = Connect(listener.Address);
                liar.Send([.. header, .. "abc"u8]);
                using var server = listener.Accept(Guard);

                long before = GC.GetAllocatedBytesForCurrentThread();
                var clock = Stopwatch.StartNew();
                if (raw) Assert.Throws<InvalidDataException>(() => server.RecvBytes(timeout: Guard));
                else Assert.Throws<InvalidDataException>(() => server.Recv(Guard));
                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"{what}: took {clock.Elapsed.TotalSeconds} s to refuse");
                Assert.True(allocated < 256 << 10, $"{what}: refusing allocated {allocated} bytes");
                Assert.True(server.Closed, $"{what}: the connection was left open after a refused header");

                // The liar sees the connection closed (reset, where its unread bytes were thrown away).
                liar.ReceiveTimeout = (int)Guard.TotalMilliseconds;
                try
                {
                    Assert.Equal(0, liar.Receive(new byte[16]));
                }
                catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionReset)
                {
                }

                // And the listener serves the next client.
                using var good = Mp.Client<object?[]>(listener.Address);
                using var next = listener.Accept(Guard);
                good.Send([i, "fine"]);
                Assert.Equal(new object?[] { i, "fine" }, Normalize(next.Recv(Guard)));
                i++;
            }
        }
    }

    [Fact]
    public void A_claim_within_the_limit_grows_with_what_arrives_so_a_liar_costs_little()
    {
        var options = new ConnectionOptions { MaxMessageSize = int.MaxValue };
        using var listener = Mp.Listener<object?[]>(options: options);
        const int claim = 0x7FFF0000;
        foreach (bool raw in new[] { false, true })
        {
            using var liar = Connect(listener.Address);
            liar.Send([.. BigEndian(claim), .. new byte[1000]]);
            liar.Shutdown(SocketShutdown.Send);
            using var server = listener.Accept(Guard);
            long before = GC.GetAllocatedBytesForCurrentThread();
            if (raw) Assert.Throws<EndOfStreamException>(() => server.RecvBytes(timeout: Guard));
            else Assert.Throws<EndOfStreamException>(() => server.Recv(Guard));
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 16 << 20, $"a {claim}-byte claim followed by 1000 bytes allocated {allocated} bytes");
        }
    }

    [Fact]
    public void A_payload_that_is_not_MessagePack_for_T_is_refused_and_the_next_frame_on_the_same_connection_still_reads()
    {
        using var listener = Mp.Listener<object?[]>();
        using var peer = Connect(listener.Address);
        using var server = listener.Accept(Guard);
        var bad = new (string What, byte[] Payload)[]
        {
            ("never-used byte 0xC1", [0xC1]),
            ("a string, not an array", [0xA3, (byte)'a', (byte)'b', (byte)'c']),
            ("a truncated array", [0x93, 0x2A]),
            ("a string longer than the frame", [0xDB, 0x7F, 0xFF, 0xFF, 0xFF, (byte)'x']),
            ("an array claiming 2^32-1 items", [0xDD, 0xFF, 0xFF, 0xFF, 0xFF, 0xC0]),
            ("100,000 nested arrays", [.. Enumerable.Repeat((byte)0x91, 100_000), 0xC0]),
            ("an extension (typeless) item", [0x91, 0xC7, 0x03, 0x64, 0xA1, (byte)'x', 0xC0]),
            ("empty", []),
        };
        int n = 0;
        foreach (var (what, payload) in bad)
        {
            SendFrame(peer, payload);
            SendFrame(peer, SeedPayload);
            long before = GC.GetAllocatedBytesForCurrentThread();
            var ex = Record.Exception(() => server.Recv(Guard));
            Assert.True(ex is InvalidDataException, $"{what}: expected InvalidDataException, got {ex?.GetType().Name ?? "an item"}: {ex?.Message}");
            Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64 << 20, $"{what}: allocated too much");
            Assert.False(server.Closed, $"{what}: a well-framed bad payload closed the connection");
            Assert.Equal(new object?[] { 42, null, "hello" }, Normalize(server.Recv(Guard)));
            n++;
        }

        Assert.Equal(bad.Length, n);
        server.Send(["ok"]);
        Assert.Equal(new byte[] { 0x91, 0xA2, (byte)'o', (byte)'k' }, ReadFrame(peer));
    }

    [Fact]
    public async Task Garbage_an_oversized_or_a_stalled_first_frame_in_the_handshake_is_an_AuthenticationException_and_the_listener_keeps_serving()
    {
        var timeout = TimeSpan.FromMilliseconds(500);
        var options = new ConnectionOptions { HandshakeTimeout = timeout };
        using var tcp = Mp.Listener<string>(new IPEndPoint(IPAddress.Loopback, 0), Key, options: options);
        using var unix = Mp.Listener<string>(authKey: Key, options: options);
        var cases = new (string What, Action<Socket> Act, bool WaitsForTimeout)[]
        {
            ("an HTTP request", s => s.Send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"u8), false),
            ("a 2 GB header", s => s.Send([.. BigEndian(0x7FFFFFF0), 1, 2, 3]), false),
            ("a 257-byte frame", s => s.Send([.. BigEndian(257), .. new byte[257]]), false),
            ("a small garbage frame", s => SendFrame(s, "nonsense"u8.ToArray()), false),
            ("a wrong 16-byte answer", s => SendFrame(s, new byte[16]), false),
            ("a {sha256} answer with a wrong digest", s => SendFrame(s, [.. "{sha256}"u8, .. new byte[32]]), false),
            ("an unknown digest name", s => SendFrame(s, [.. "{blake9}"u8, .. new byte[32]]), false),
            ("a hang-up", s => s.Close(), false),
            ("a reset", s => { s.LingerState = new LingerOption(true, 0); s.Close(); }, false),
            ("silence", _ => { }, true),
            ("a header and then silence", s => s.Send([.. BigEndian(100), 1, 2, 3]), true),
            ("half a header and then silence", s => s.Send([0, 0]), true),
        };
        foreach (var listener in new[] { tcp, unix })
        foreach (var (what, act, waits) in cases)
        {
            using (var raw = Connect(listener.Address))
            {
                act(raw);

                // Accepted on this thread so that the clock times only the refusal; should it hang, the watchdog hangs up.
                using var watchdog = new CancellationTokenSource(Guard);
                using var hangUp = watchdog.Token.Register(raw.Dispose);
                var clock = Stopwatch.StartNew();
                var ex = Record.Exception(() => listener.Accept(Guard));
                var took = clock.Elapsed;
                var auth = ex as AuthenticationException;
                Assert.True(auth is not null, $"{listener.Address.AddressFamily} {what}: expected AuthenticationException, got {ex?.GetType().Name ?? "a connection"}: {ex}");
                Assert.True(took < timeout + TimeSpan.FromSeconds(5), $"{listener.Address.AddressFamily} {what}: took {took.TotalSeconds} s");

                // Garbage is refused for what it is, not by running out the clock; silence only by the clock.
                Assert.True(waits == auth.InnerException is TimeoutException, $"{listener.Address.AddressFamily} {what}: refused {(waits ? "without" : "by")} timing out: {auth}");
                if (waits) Assert.True(took >= timeout * 0.8, $"{listener.Address.AddressFamily} {what}: gave up after {took.TotalMilliseconds} ms");
            }

            var right = Task.Run(() => Mp.Client<string>(listener.Address, Key));
            using var server = listener.Accept(Guard);
            using var client = await right.WaitAsync(Guard);
            client.Send(what);
            Assert.Equal(what, server.Recv(Guard));
        }
    }

    [Fact]
    public async Task A_peer_that_drips_its_answer_a_byte_at_a_time_is_dropped_at_the_handshake_deadline()
    {
        var timeout = TimeSpan.FromMilliseconds(500);
        using var listener = Mp.Listener<string>(authKey: Key, options: new ConnectionOptions { HandshakeTimeout = timeout });
        using var raw = Connect(listener.Address);
        using var stop = new CancellationTokenSource();

        // Each byte arrives well within the timeout; the whole 200-byte answer would take 4 s.
        var drip = Task.Run(async () =>
        {
            byte[] frame = [.. BigEndian(200), .. new byte[200]];
            try
            {
                foreach (byte b in frame)
                {
                    raw.Send([b]);
                    await Task.Delay(20, stop.Token);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException)
            {
                // Stopped, or dropped by the listener.
            }
        });
        try
        {
            using var watchdog = new CancellationTokenSource(Guard);
            using var hangUp = watchdog.Token.Register(raw.Dispose);
            var clock = Stopwatch.StartNew();
            var ex = Record.Exception(() => listener.Accept(Guard));
            Assert.True(ex is AuthenticationException, $"expected AuthenticationException, got {ex?.GetType().Name ?? "a connection"}: {ex}");
            Assert.True(clock.Elapsed < timeout + TimeSpan.FromSeconds(2), $"took {clock.Elapsed.TotalSeconds} s");
        }
        finally
        {
            await stop.CancelAsync();
            await drip.WaitAsync(Guard);
        }
    }

    [Fact]
    public async Task Accept_times_out_AcceptAsync_cancels_and_Dispose_ends_a_waiting_Accept()
    {
        var listener = Mp.Listener<int>();
        Assert.Throws<TimeoutException>(() => listener.Accept(TimeSpan.FromMilliseconds(50)));
        using (var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50)))
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => listener.AcceptAsync(cts.Token).WaitAsync(Guard));

        // A client that connects after a cancelled AcceptAsync is still served.
        using (var client = Mp.Client<int>(listener.Address))
        using (var server = listener.Accept(Guard))
        {
            client.Send(5);
            Assert.Equal(5, server.Recv(Guard));
        }

        var waiting = Task.Run(() => listener.Accept());
        Assert.False(waiting.IsCompleted);
        listener.Dispose();
        var ex = await Record.ExceptionAsync(() => waiting.WaitAsync(Guard));
        Assert.True(ex is ObjectDisposedException or SocketException, $"expected the waiting Accept to end, got {ex}");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => listener.AcceptAsync());
    }

    // ---- 4. Python interop ----

    private const string PythonClient = """
        import sys
        from multiprocessing.connection import Client
        family, where, key = sys.argv[1], sys.argv[2], sys.argv[3].encode()
        address = ('127.0.0.1', int(where)) if family == 'tcp' else where
        try:
            c = Client(address, authkey=key)
        except Exception as e:
            print('failed=' + type(e).__name__, flush=True)
            sys.exit(3)
        with c:
            print('connected', flush=True)
            m = c.recv_bytes()
            c.send_bytes(m[::-1])
            big = c.recv_bytes()
            c.send_bytes(('%d:%d' % (len(big), sum(big) % 256)).encode())
            c.send_bytes(bytes(range(256)) * 300)
            c.send_bytes(b'')
        print('done', flush=True)
        """;

    private const string PythonListener = """
        import sys
        from multiprocessing.connection import Listener
        family, where, key = sys.argv[1], sys.argv[2], sys.argv[3].encode()
        address = ('127.0.0.1', 0) if family == 'tcp' else where
        with Listener(address, authkey=key) as l:
            a = l.address
            print('address=' + (str(a[1]) if family == 'tcp' else a), flush=True)
            try:
                l.accept()
                print('accepted-the-wrong-key', flush=True)
            except Exception as e:
                print('rejected=' + type(e).__name__, flush=True)
            with l.accept() as c:
                m = c.recv_bytes()
                c.send_bytes(m.upper())
                c.send_bytes(bytes(range(256)) * 1000)
                print('got=%d' % len(c.recv_bytes()), flush=True)
        print('done', flush=True)
        """;

    [Theory]
    [InlineData("tcp")]
    [InlineData("unix")]
    public async Task A_Python_client_with_an_authkey_exchanges_raw_bytes_with_our_listener(string family)
    {
        using var scratch = new Scratch();
        EndPoint endpoint = family == "tcp" ? new IPEndPoint(IPAddress.Loopback, 0) : new UnixDomainSocketEndPoint(scratch.File("ours.sock"));
        using var listener = Mp.Listener<string>(endpoint, Key);
        string where = family == "tcp" ? ((IPEndPoint)listener.Address).Port.ToString(System.Globalization.CultureInfo.InvariantCulture) : scratch.File("ours.sock");

        // First a Python client with the wrong key: both sides refuse.
        using (var wrong = new Python(PythonClient, family, where, "wrong-key"))
        {
            Assert.Throws<AuthenticationException>(() => listener.Accept(Guard));
            Assert.Equal("failed=AuthenticationError", await wrong.LineAsync());
            Assert.Equal(3, await wrong.ExitAsync());
        }

        using var python = new Python(PythonClient, family, where, Encoding.ASCII.GetString(Key));
        using (var server = listener.Accept(Guard))
        {
            Assert.Equal("connected", await python.LineAsync());
            server.SendBytes("hello python"u8);
            Assert.Equal("nohtyp olleh"u8.ToArray(), server.RecvBytes(timeout: Guard));
            var big = new byte[1 << 20];
            new Random(9).NextBytes(big);
            server.SendBytes(big);
            Assert.Equal($"{big.Length}:{big.Sum(b => b) % 256}", Encoding.ASCII.GetString(server.RecvBytes(timeout: Guard)));
            var pattern = server.RecvBytes(timeout: Guard);
            Assert.Equal(256 * 300, pattern.Length);
            Assert.All(Enumerable.Range(0, pattern.Length), k => Assert.Equal((byte)k, pattern[k]));
            Assert.Empty(server.RecvBytes(timeout: Guard));
            Assert.Throws<EndOfStreamException>(() => server.RecvBytes(timeout: Guard));
        }

        Assert.Equal("done", await python.LineAsync());
        Assert.Equal(0, await python.ExitAsync());
    }

    [Theory]
    [InlineData("tcp")]
    [InlineData("unix")]
    public async Task Our_client_exchanges_raw_bytes_with_a_Python_listener_that_has_an_authkey(string family)
    {
        using var scratch = new Scratch();
        using var python = new Python(PythonListener, family, scratch.File("theirs.sock"), Encoding.ASCII.GetString(Key));
        string where = await python.ValueAsync("address");
        EndPoint endpoint = family == "tcp"
            ? new IPEndPoint(IPAddress.Loopback, int.Parse(where, System.Globalization.CultureInfo.InvariantCulture))
            : new UnixDomainSocketEndPoint(where);

        Assert.Throws<AuthenticationException>(() => Mp.Client<string>(endpoint, "wrong-key"u8.ToArray()));
        Assert.Equal("rejected=AuthenticationError", await python.LineAsync());

        using (var client = Mp.Client<string>(endpoint, Key))
        {
            client.SendBytes("shout this"u8);
            Assert.Equal("SHOUT THIS"u8.ToArray(), client.RecvBytes(timeout: Guard));
            var pattern = client.RecvBytes(timeout: Guard);
            Assert.Equal(256_000, pattern.Length);
            Assert.All(Enumerable.Range(0, pattern.Length), k => Assert.Equal((byte)k, pattern[k]));
            client.SendBytes(new byte[70_000]);
            Assert.Equal("got=70000", await python.LineAsync());
        }

        Assert.Equal("done", await python.LineAsync());
        Assert.Equal(0, await python.ExitAsync());
        Assert.False(Path.Exists(scratch.File("theirs.sock")));
    }

    // ---- 5. leaks ----

    [Fact]
    public async Task Refused_and_finished_clients_leave_no_descriptors_and_no_socket_file_behind()
    {
        using var scratch = new Scratch();
        string path = scratch.File("leak.sock");
        var options = new ConnectionOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(200), MaxMessageSize = 4096 };

        async Task Round()
        {
            using var keyed = Mp.Listener<string>(new UnixDomainSocketEndPoint(path), Key, options: options);

            using (var garbage = Connect(keyed.Address))
            {
                garbage.Send([.. BigEndian(0x7FFFFFF0), 0]);
                Assert.Throws<AuthenticationException>(() => keyed.Accept(Guard));
            }

            var wrong = Task.Run(() => Mp.Client<string>(keyed.Address, [1, 2, 3]));
            Assert.Throws<AuthenticationException>(() => keyed.Accept(Guard));
            await Assert.ThrowsAsync<AuthenticationException>(() => wrong.WaitAsync(Guard));

            using (Mp.Client<string>(keyed.Address)) Assert.Throws<AuthenticationException>(() => keyed.Accept(Guard));

            var right = Task.Run(() => Mp.Client<string>(keyed.Address, Key));
            using (var server = keyed.Accept(Guard))
            using (var client = await right.WaitAsync(Guard))
            {
                client.SendBytes(new byte[5000]);
                Assert.Throws<InvalidDataException>(() => server.RecvBytes(timeout: Guard));
            }

            using var tcp = Mp.Listener<string>(new IPEndPoint(IPAddress.Loopback, 0), options: options);
            using (var c = Mp.Client<string>(tcp.Address))
            using (var s = await tcp.AcceptAsync().WaitAsync(Guard))
            {
                c.Send("x");
                Assert.Equal("x", s.Recv(Guard));
            }
        }

        await Round(); // First use opens the runtime's own descriptors (socket engine and the like).
        int baseline = OpenDescriptors();
        for (int i = 0; i < 10; i++) await Round();
        Assert.False(Path.Exists(path), "the socket file outlived its listener");
        int after = 0;
        Assert.True(Wait.Until(() => (after = OpenDescriptors()) <= baseline + 2, TimeSpan.FromSeconds(10)), $"descriptors grew from {baseline} to {after} over 10 rounds");
    }

    // ---- helpers ----

    private static object?[] Normalize(object?[] items) =>
        items.Select(x => x is byte or sbyte or short or ushort or int or uint or long or ulong ? Convert.ToInt32(x, System.Globalization.CultureInfo.InvariantCulture) : x).ToArray();

    private static bool AbstractSocketListed(string name) =>
        File.ReadLines("/proc/net/unix").Any(line => line.EndsWith(" @" + name, StringComparison.Ordinal));

    private static int OpenDescriptors() => Directory.GetFiles("/proc/self/fd").Length;

    private static byte[] BigEndian(int value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] BigEndian64(long value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(bytes, value);
        return bytes;
    }

    /// <summary>A plain socket, not our Client: it sends whatever bytes a test wants.</summary>
    private static Socket Connect(EndPoint address)
    {
        var socket = address is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(address);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static void SendFrame(Socket socket, byte[] payload) => socket.Send([.. BigEndian(payload.Length), .. payload]);

    /// <summary>Reads one length-prefixed frame; null if the peer closed first.</summary>
    private static byte[]? ReadFrame(Socket socket)
    {
        socket.ReceiveTimeout = (int)Guard.TotalMilliseconds;
        var header = new byte[4];
        if (!ReadExactly(socket, header)) return null;
        var payload = new byte[BinaryPrimitives.ReadInt32BigEndian(header)];
        return ReadExactly(socket, payload) ? payload : null;
    }

    private static bool ReadExactly(Socket socket, byte[] into)
    {
        int got = 0;
        while (got < into.Length)
        {
            int n = socket.Receive(into, got, into.Length - got, SocketFlags.None);
            if (n == 0) return false;
            got += n;
        }

        return true;
    }

    /// <summary>A python3 child reading a script from -c; its stdout lines drive the test. Killed on Dispose.</summary>
    private sealed class Python : IDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _stderr = new();

        public Python(string script, params string[] args)
        {
            var start = new ProcessStartInfo("python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add(script);
            foreach (var arg in args) start.ArgumentList.Add(arg);
            _process = new Process { StartInfo = start };
            _process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (_stderr) _stderr.AppendLine(e.Data);
            };
            _process.Start();
            _process.BeginErrorReadLine();
        }

        private string Stderr
        {
            get
            {
                lock (_stderr) return _stderr.ToString();
            }
        }

        public async Task<string> LineAsync()
        {
            string? line;
            try
            {
                line = await _process.StandardOutput.ReadLineAsync().WaitAsync(Guard);
            }
            catch (TimeoutException)
            {
                throw new Xunit.Sdk.XunitException($"python printed nothing in {Guard.TotalSeconds} s; stderr: {Stderr}");
            }

            return line ?? throw new Xunit.Sdk.XunitException($"python closed its stdout; stderr: {Stderr}");
        }

        public async Task<string> ValueAsync(string key)
        {
            string line = await LineAsync();
            Assert.StartsWith(key + "=", line, StringComparison.Ordinal);
            return line[(key.Length + 1)..];
        }

        public async Task<int> ExitAsync()
        {
            await _process.WaitForExitAsync().WaitAsync(Guard);
            return _process.ExitCode;
        }

        public void Dispose()
        {
            try
            {
                if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // Exited in between.
            }

            _process.WaitForExit();
            _process.Dispose();
        }
    }
}
