using System.Collections.Concurrent;
using System.Reflection;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>A user type the manager may create; made by the owner before start and carried to the server with it.</summary>
internal sealed class Registration
{
    private Dictionary<string, MethodInfo>? _methods;

    public string Name { get; set; } = string.Empty;

    public string ServiceType { get; set; } = string.Empty;

    public string? ImplementationType { get; set; }

    public Func<object>? Factory { get; set; }

    internal static string NameOf(Type service) => service.FullName ?? service.Name;

    /// <summary>A method's identity on the wire: name and parameter types, so overloads stay apart.</summary>
    internal static string Signature(MethodInfo method) =>
        method.Name + "(" + string.Join(",", method.GetParameters().Select(p => p.ParameterType.FullName ?? p.ParameterType.Name)) + ")";

    internal static IEnumerable<MethodInfo> MethodsOf(Type service) =>
        service.GetMethods().Concat(service.GetInterfaces().SelectMany(i => i.GetMethods()));

    internal object CreateInstance()
    {
        if (Factory is not null) return Factory() ?? throw new InvalidOperationException($"the factory for {Name} returned null");
        var type = Type.GetType(ImplementationType!, throwOnError: true)!;
        return Activator.CreateInstance(type)!;
    }

    internal MethodInfo? Method(string signature)
    {
        _methods ??= MethodsOf(Type.GetType(ServiceType, throwOnError: true)!).GroupBy(Signature).ToDictionary(g => g.Key, g => g.First());
        return _methods.GetValueOrDefault(signature);
    }
}
