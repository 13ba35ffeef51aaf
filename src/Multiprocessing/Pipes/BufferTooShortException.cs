namespace Multiprocessing;

/// <summary>
/// A message did not fit the buffer given to <see cref="Connection{T}.RecvBytesInto(byte[], int)"/>, Python's
/// <c>BufferTooShort</c>. The message has been taken off the connection; it is in <see cref="ReceivedMessage"/>.
/// </summary>
public sealed class BufferTooShortException : ArgumentException
{
    /// <summary>Creates the exception for a message of <paramref name="message"/>'s length.</summary>
    /// <param name="message">The whole message that was received.</param>
    /// <param name="room">How many bytes the buffer had from the offset on.</param>
    public BufferTooShortException(byte[] message, int room)
        : base($"the buffer has room for {room} bytes but the message has {message?.Length ?? 0}; the message is in ReceivedMessage", "buffer")
    {
        ArgumentNullException.ThrowIfNull(message);
        ReceivedMessage = message;
    }

    /// <summary>The message that did not fit.</summary>
    public byte[] ReceivedMessage { get; }
}
