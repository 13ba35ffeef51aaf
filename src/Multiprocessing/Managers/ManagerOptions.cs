using System.Reflection;

namespace Multiprocessing;

/// <summary>Settings for <see cref="Mp.Manager(ManagerOptions)"/> and its remote twins, and the user types the
/// manager may create.</summary>
/// <remarks>Setters validate at once. Registrations must be made before the manager starts, as Python's
/// <c>BaseManager.register</c> is called before <c>start()</c>: they travel to the server process with it, and no
/// client request can add one, so no payload can choose a type for the server to instantiate. Not shared between
/// processes.</remarks>
public sealed class ManagerOptions
{
    internal const long DefaultMaxMessageSize = 256L << 20;

    private long _maxMessageSize = DefaultMaxMessageSize;
    private TimeSpan _handshakeTimeout = TimeSpan.FromSeconds(20);
    private TimeSpan _startTimeout = TimeSpan.FromSeconds(30);

    internal List<Managers.Registration> Registrations { get; } = [];

    /// <summary>The largest request or reply; a longer frame is refused without its claimed size being allocated.
    /// Default 256 MiB.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1 KiB.</exception>
    public long MaxMessageSize
    {
        get => _maxMessageSize;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1024);
            _maxMessageSize = value;
        }
    }

    /// <summary>How long a client's authentication may take before the server drops it. Default 20 s.</summary>
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

    /// <summary>How long starting the server process may take. Default 30 s.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not positive.</exception>
    public TimeSpan StartTimeout
    {
        get => _startTimeout;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(value, TimeSpan.Zero);
            _startTimeout = value;
        }
    }

    /// <summary>Lets the manager create <typeparamref name="TImplementation"/> objects, reached through the
    /// <typeparamref name="TService"/> interface: Python's <c>register(typeid, callable)</c>.</summary>
    /// <typeparam name="TService">The interface clients call; its methods' arguments and results must be
    /// serializable.</typeparam>
    /// <typeparam name="TImplementation">The class the server instantiates.</typeparam>
    /// <returns>These options, for chaining.</returns>
    /// <exception cref="ArgumentException">TService is not an interface, or is registered already.</exception>
    public ManagerOptions Register<TService, TImplementation>()
        where TService : class
        where TImplementation : class, TService, new() =>
        Add(typeof(TService), typeof(TImplementation), null);

    /// <summary>Lets the manager create objects of the one class in <typeparamref name="TService"/>'s assembly that
    /// implements it and has a public parameterless constructor: <c>Register&lt;TService, TImplementation&gt;()</c>
    /// with the implementation found by convention.</summary>
    /// <typeparam name="TService">The interface clients call.</typeparam>
    /// <returns>These options, for chaining.</returns>
    /// <exception cref="ArgumentException">TService is not an interface, is registered already, or its assembly has
    /// no such class or more than one (the message names them; register the one meant explicitly).</exception>
    public ManagerOptions Register<TService>()
        where TService : class
    {
        var service = typeof(TService);
        if (!service.IsInterface) throw new ArgumentException($"{service} is not an interface: a managed object is reached through an interface its proxy implements", nameof(TService));
        var candidates = service.Assembly.GetTypes()
            .Where(t => t.IsClass && !t.IsAbstract && !t.ContainsGenericParameters && service.IsAssignableFrom(t) && t.GetConstructor(Type.EmptyTypes) is not null)
            .ToList();
        return candidates.Count == 1
            ? Add(service, candidates[0], null)
            : throw new ArgumentException(
                candidates.Count == 0
                    ? $"{service.Assembly.GetName().Name} has no class with a public parameterless constructor that implements {service}; use Register<{service.Name}, TImplementation>() or Register<{service.Name}>(factory)"
                    : $"{service} is implemented by {string.Join(", ", candidates.Select(t => t.FullName))}; name the one to use with Register<{service.Name}, TImplementation>()",
                nameof(TService));
    }

    /// <summary>Lets the manager create objects made by <paramref name="factory"/> (which runs in the server
    /// process), reached through the <typeparamref name="TService"/> interface.</summary>
    /// <typeparam name="TService">The interface clients call.</typeparam>
    /// <param name="factory">Makes one instance; it travels to the server process as any target does.</param>
    /// <returns>These options, for chaining.</returns>
    /// <exception cref="ArgumentException">TService is not an interface, or is registered already.</exception>
    public ManagerOptions Register<TService>(Func<TService> factory)
        where TService : class
    {
        ArgumentNullException.ThrowIfNull(factory);
        return Add(typeof(TService), null, () => factory());
    }

    private ManagerOptions Add(Type service, Type? implementation, Func<object>? factory)
    {
        if (!service.IsInterface) throw new ArgumentException($"{service} is not an interface: a managed object is reached through an interface its proxy implements", nameof(service));
        string name = Managers.Registration.NameOf(service);
        if (Registrations.Any(r => r.Name == name)) throw new ArgumentException($"{service} is registered already", nameof(service));
        Registrations.Add(new Managers.Registration
        {
            Name = name,
            ServiceType = service.AssemblyQualifiedName!,
            ImplementationType = implementation?.AssemblyQualifiedName,
            Factory = factory,
        });
        return this;
    }
}
