using System.Security.Authentication;
using System.Security.Cryptography;
using System.Text;
using Multiprocessing.Synchronization;

namespace Multiprocessing.Pipes;

/// <summary>
/// The mutual HMAC challenge of Python's <c>multiprocessing.connection</c>, on the wire as Python 3.12 speaks it:
/// <c>#CHALLENGE#{sha256}</c> and 40 random bytes; the answer is <c>{sha256}</c> and the HMAC of the whole message.
/// A peer speaking the older MD5-only form (Python up to 3.11) is understood in both directions, so either side can
/// be Python. The key itself never crosses the wire.
/// </summary>
internal static class Handshake
{
    private static readonly byte[] Challenge = "#CHALLENGE#"u8.ToArray();
    private static readonly byte[] Welcome = "#WELCOME#"u8.ToArray();
    private static readonly byte[] Failure = "#FAILURE#"u8.ToArray();
    private const int MaxFrame = 256;

    /// <summary>Python's legacy challenge is exactly this many random bytes, with no "{digest}" prefix.</summary>
    private const int LegacyChallengeLength = 20;

    /// <summary>Server side: challenge first, then answer the client's challenge (Python's Listener.accept).</summary>
    internal static void AsServer<T>(Connection<T> connection, byte[] key, TimeSpan timeout)
    {
        var deadline = new HandshakeDeadline(Blocking.Deadline(timeout), timeout);
        try
        {
            Deliver(connection, key, deadline);
            Answer(connection, key, deadline);
        }
        catch (IOException ex)
        {
            // A peer that hangs up or resets before its turn breaks our send: still a failed handshake.
            throw new AuthenticationException("the peer closed the connection during the authentication handshake", ex);
        }
    }

    /// <summary>Client side: answer first, then challenge the server (Python's Client).</summary>
    internal static void AsClient<T>(Connection<T> connection, byte[] key, TimeSpan timeout)
    {
        var deadline = new HandshakeDeadline(Blocking.Deadline(timeout), timeout);
        try
        {
            Answer(connection, key, deadline);
            Deliver(connection, key, deadline);
        }
        catch (IOException ex)
        {
            throw new AuthenticationException("the peer closed the connection during the authentication handshake", ex);
        }
    }

    private static void Deliver<T>(Connection<T> connection, byte[] key, HandshakeDeadline deadline)
    {
        var message = new byte[8 + 40];
        "{sha256}"u8.CopyTo(message);
        RandomNumberGenerator.Fill(message.AsSpan(8));
        connection.SendBytes([.. Challenge, .. message]);
        var response = Receive(connection, deadline);
        if (Verify(key, message, response))
        {
            connection.SendBytes(Welcome);
            return;
        }

        connection.SendBytes(Failure);
        throw new AuthenticationException("the peer's answer to the authentication challenge is wrong: its authKey differs");
    }

    private static void Answer<T>(Connection<T> connection, byte[] key, HandshakeDeadline deadline)
    {
        var frame = Receive(connection, deadline);
        if (!frame.AsSpan().StartsWith(Challenge)) throw new AuthenticationException("the peer did not send an authentication challenge (is it using an authKey?)");
        var message = frame.AsSpan(Challenge.Length).ToArray();
        if (message.Length < 20) throw new AuthenticationException("the peer's authentication challenge is too short");
        connection.SendBytes(Respond(key, message));
        var verdict = Receive(connection, deadline);
        if (!verdict.AsSpan().SequenceEqual(Welcome)) throw new AuthenticationException("the peer rejected our answer to its authentication challenge: the authKeys differ");
    }

    private static byte[] Respond(byte[] key, byte[] message)
    {
        // A legacy challenge may start with '{' by chance (about one in 3,500); its length tells it apart, as in Python.
        var (name, _) = message.Length == LegacyChallengeLength ? (null, message) : DigestName(message);
        return name switch
        {
            null => HMACMD5.HashData(key, message),
            "sha256" => [.. Encoding.ASCII.GetBytes("{sha256}"), .. HMACSHA256.HashData(key, message)],
            "sha384" => [.. Encoding.ASCII.GetBytes("{sha384}"), .. HMACSHA384.HashData(key, message)],
            "md5" => [.. Encoding.ASCII.GetBytes("{md5}"), .. HMACMD5.HashData(key, message)],
            _ => throw new AuthenticationException($"the peer asked for an unsupported digest '{name}'"),
        };
    }

    private static bool Verify(byte[] key, byte[] message, byte[] response)
    {
        // The legacy answer is a bare MD5 HMAC of the whole challenge; it may start with '{' by chance.
        if (response.Length == 16 && CryptographicOperations.FixedTimeEquals(HMACMD5.HashData(key, message), response)) return true;
        var (name, digest) = DigestName(response);
        byte[] expected = name switch
        {
            "sha256" => HMACSHA256.HashData(key, message),
            "sha384" => HMACSHA384.HashData(key, message),
            _ => [],
        };
        return expected.Length > 0 && CryptographicOperations.FixedTimeEquals(expected, digest);
    }

    private static (string? Name, byte[] Digest) DigestName(byte[] data)
    {
        if (data.Length == 0 || data[0] != (byte)'{') return (null, data);
        int close = Array.IndexOf(data, (byte)'}', 1);
        if (close < 0 || close > 21) return (null, data);
        return (Encoding.ASCII.GetString(data, 1, close - 1), data[(close + 1)..]);
    }

    private static byte[] Receive<T>(Connection<T> connection, HandshakeDeadline deadline)
    {
        try
        {
            return connection.RecvBytesWhole(MaxFrame, deadline.At);
        }
        catch (TimeoutException ex)
        {
            throw new AuthenticationException($"the peer did not complete the authentication handshake within {deadline.Timeout.TotalSeconds:0.#} s", ex);
        }
        catch (InvalidDataException ex)
        {
            throw new AuthenticationException("the peer sent an oversized authentication message", ex);
        }
        catch (EndOfStreamException ex)
        {
            throw new AuthenticationException("the peer closed the connection during the authentication handshake (wrong authKey?)", ex);
        }
    }

    /// <summary>When the whole handshake must be over (a Stopwatch timestamp), and the timeout it came from.</summary>
    private readonly record struct HandshakeDeadline(long At, TimeSpan Timeout);
}
