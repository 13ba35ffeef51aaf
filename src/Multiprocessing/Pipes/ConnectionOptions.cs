namespace Multiprocessing;

/// <summary>Limits for connections made by <see cref="Mp.Listener{T}(System.Net.EndPoint, byte[], int, ConnectionOptions)"/>
/// and <see cref="Mp.Client{T}(System.Net.EndPoint, byte[], ConnectionOptions)"/>, which a stranger may reach.</summary>
/// <remarks>Setters validate at once. Not shared between processes.</remarks>
public sealed class ConnectionOptions
{
    private long _maxMessageSize = 64L << 20;
    private TimeSpan _handshakeTimeout = TimeSpan.FromSeconds(20);

    /// <summary>The largest message a connection accepts; a longer one closes it without the claimed size being
    /// allocated. Default 64 MiB.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1.</exception>
    public long MaxMessageSize
    {
        get => _maxMessageSize;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            _maxMessageSize = value;
        }
    }

    /// <summary>How long the authentication handshake may take before the peer is dropped. Default 20 s.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not positive.</exception>
    public TimeSpan HandshakeTimeout
    {
        get => _handshakeTimeout;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(value, TimeSpan.Zero);
            _handshakeTimeout = value;
        }
    }
}
