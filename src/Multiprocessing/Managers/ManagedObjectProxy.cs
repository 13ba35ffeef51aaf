using System.Collections.Concurrent;
using System.Reflection;
using Multiprocessing.Managers;

namespace Multiprocessing;

/// <summary>The client side of a registered type: a generated class that implements the service interface and
/// turns each call into a request to the manager.</summary>
/// <remarks>Cast it to <see cref="IDisposable"/> to give up this process's hold on the object early; otherwise the
/// hold goes when the proxy is collected or the process exits.</remarks>
public class ManagedObjectProxy : DispatchProxy, IDisposable
{
    private static readonly ConcurrentDictionary<MethodInfo, string> Signatures = new();

    private ProxyRef? _ref;

    internal ProxyRef Ref => _ref ?? throw new InvalidOperationException("the proxy is not bound to a managed object");

    /// <summary>Gives up this process's hold on the object.</summary>
    public void Dispose()
    {
        _ref?.Release();
        GC.SuppressFinalize(this);
    }

    /// <summary>Describes the proxy.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => $"ManagedObjectProxy({_ref})";

    internal void Bind(ProxyRef reference) => _ref = reference;

    /// <inheritdoc/>
    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        if (targetMethod.DeclaringType == typeof(IDisposable))
        {
            Dispose();
            return null;
        }

        var reference = Ref;
        var parameters = targetMethod.GetParameters();
        var encoded = new byte[parameters.Length][];
        for (int i = 0; i < parameters.Length; i++)
        {
            var slot = reference.Client.Codecs.Encode(parameters[i].ParameterType, args![i], null);
            encoded[i] = slot.Data;
        }

        var request = reference.Begin("call", this);
        request.String(Signatures.GetOrAdd(targetMethod, Registration.Signature));
        request.Int32(encoded.Length);
        foreach (var arg in encoded) request.Bytes(arg);
        var reply = reference.Client.Send(request);
        if (targetMethod.ReturnType == typeof(void)) return null;
        return reference.Client.Codecs.Decode(targetMethod.ReturnType, reply.Bytes(), reference.Client);
    }
}
