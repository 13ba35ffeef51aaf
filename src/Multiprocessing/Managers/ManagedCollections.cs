using System.Collections;
using System.Diagnostics.CodeAnalysis;
using System.Dynamic;
using System.Text;
using Multiprocessing.Serialization;
using Multiprocessing.SharedMemory;

using Multiprocessing.Managers;

namespace Multiprocessing;

/// <summary>A dictionary that lives in a manager process, Python's <c>manager.dict()</c>. Every member is one
/// round trip to the manager; enumeration works on a snapshot taken in one round trip.</summary>
/// <typeparam name="TKey">The key type. Keys are compared by their encoded bytes, so <c>1</c> and <c>1L</c> are the
/// same key but <c>1</c> and <c>1.0</c> are not.</typeparam>
/// <typeparam name="TValue">The value type; a managed object stored as a value stays a live proxy.</typeparam>
/// <remarks>Process-safe and thread-safe: each call is atomic on the server. A compound step (read, then write)
/// is not; guard it with a managed lock.</remarks>
public sealed class ManagedDict<TKey, TValue> : IDictionary<TKey, TValue>, IReadOnlyDictionary<TKey, TValue>, IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
    where TKey : notnull
{
    private readonly ProxyRef _ref;

    internal ManagedDict(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>Gets or sets the value for a key.</summary>
    /// <param name="key">The key.</param>
    /// <exception cref="KeyNotFoundException">Getting a key that is not there.</exception>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    public TValue this[TKey key]
    {
        get
        {
            var request = _ref.Begin("get", this);
            request.Bytes(_ref.Key(key));
            return _ref.Decode<TValue>(_ref.Client.Send(request));
        }

        set
        {
            var k = _ref.Key(key);
            var v = _ref.Encode(value);
            var request = _ref.Begin("set", this);
            request.Bytes(k);
            v.Write(request);
            _ref.Client.Send(request);
        }
    }

    /// <summary>How many items there are.</summary>
    public int Count => _ref.Call("len", this).Int32();

    /// <summary>A snapshot of the keys.</summary>
    public ICollection<TKey> Keys => [.. Items().Select(kv => kv.Key)];

    /// <summary>A snapshot of the values.</summary>
    public ICollection<TValue> Values => [.. Items().Select(kv => kv.Value)];

    IEnumerable<TKey> IReadOnlyDictionary<TKey, TValue>.Keys => Keys;

    IEnumerable<TValue> IReadOnlyDictionary<TKey, TValue>.Values => Values;

    bool ICollection<KeyValuePair<TKey, TValue>>.IsReadOnly => false;

    /// <summary>Adds a key that must not be there yet.</summary>
    /// <param name="key">The key.</param>
    /// <param name="value">The value.</param>
    /// <exception cref="ArgumentException">The key is already there.</exception>
    public void Add(TKey key, TValue value)
    {
        var k = _ref.Key(key);
        var v = _ref.Encode(value);
        var request = _ref.Begin("add", this);
        request.Bytes(k);
        v.Write(request);
        _ref.Client.Send(request);
    }

    /// <summary>Whether the key is there.</summary>
    /// <param name="key">The key.</param>
    /// <returns>True if it is.</returns>
    public bool ContainsKey(TKey key)
    {
        var request = _ref.Begin("contains", this);
        request.Bytes(_ref.Key(key));
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>Removes a key.</summary>
    /// <param name="key">The key.</param>
    /// <returns>True if it was there.</returns>
    public bool Remove(TKey key)
    {
        var request = _ref.Begin("del", this);
        request.Bytes(_ref.Key(key));
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>Gets a value in one round trip.</summary>
    /// <param name="key">The key.</param>
    /// <param name="value">The value, when found.</param>
    /// <returns>True if the key is there.</returns>
    public bool TryGetValue(TKey key, [MaybeNullWhen(false)] out TValue value)
    {
        var request = _ref.Begin("tryget", this);
        request.Bytes(_ref.Key(key));
        var reply = _ref.Client.Send(request);
        if (!reply.Bool())
        {
            value = default;
            return false;
        }

        value = _ref.Decode<TValue>(reply);
        return true;
    }

    /// <summary>Python's <c>d.get(key, default)</c>.</summary>
    /// <param name="key">The key.</param>
    /// <param name="defaultValue">What to return when the key is not there.</param>
    /// <returns>The value or the default.</returns>
    public TValue? Get(TKey key, TValue? defaultValue = default) => TryGetValue(key, out var value) ? value : defaultValue;

    /// <summary>Python's <c>d.pop(key)</c>: removes the key and returns its value.</summary>
    /// <param name="key">The key.</param>
    /// <returns>The value it had.</returns>
    /// <exception cref="KeyNotFoundException">The key is not there.</exception>
    public TValue Pop(TKey key)
    {
        var request = _ref.Begin("pop", this);
        request.Bytes(_ref.Key(key));
        return _ref.Decode<TValue>(_ref.Client.Send(request));
    }

    /// <summary>Python's <c>d.setdefault(key, value)</c>: the value already there, or stores and returns this one,
    /// atomically.</summary>
    /// <param name="key">The key.</param>
    /// <param name="value">The value to store when the key is missing.</param>
    /// <returns>The value now stored for the key.</returns>
    public TValue SetDefault(TKey key, TValue value)
    {
        var k = _ref.Key(key);
        var v = _ref.Encode(value);
        var request = _ref.Begin("setdefault", this);
        request.Bytes(k);
        v.Write(request);
        return _ref.Decode<TValue>(_ref.Client.Send(request));
    }

    /// <summary>Python's <c>d.update(items)</c>, in one round trip.</summary>
    /// <param name="items">The items to set.</param>
    public void Update(IEnumerable<KeyValuePair<TKey, TValue>> items)
    {
        ArgumentNullException.ThrowIfNull(items);
        var encoded = items.Select(kv => (_ref.Key(kv.Key), _ref.Encode(kv.Value))).ToList();
        var request = _ref.Begin("update", this);
        request.Int32(encoded.Count);
        foreach (var (k, v) in encoded)
        {
            request.Bytes(k);
            v.Write(request);
        }

        _ref.Client.Send(request);
    }

    /// <summary>Python's <c>d.copy()</c>: a local dictionary with the same items, in one round trip.</summary>
    /// <returns>The copy.</returns>
    public Dictionary<TKey, TValue> Copy() => Items().ToDictionary(kv => kv.Key, kv => kv.Value);

    /// <summary>Removes every item.</summary>
    public void Clear() => _ref.Call("clear", this);

    /// <summary>Enumerates a snapshot taken in one round trip.</summary>
    /// <returns>The enumerator.</returns>
    public IEnumerator<KeyValuePair<TKey, TValue>> GetEnumerator() => Items().GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    void ICollection<KeyValuePair<TKey, TValue>>.Add(KeyValuePair<TKey, TValue> item) => Add(item.Key, item.Value);

    bool ICollection<KeyValuePair<TKey, TValue>>.Contains(KeyValuePair<TKey, TValue> item) =>
        TryGetValue(item.Key, out var value) && EqualityComparer<TValue>.Default.Equals(value, item.Value);

    void ICollection<KeyValuePair<TKey, TValue>>.CopyTo(KeyValuePair<TKey, TValue>[] array, int arrayIndex) => Items().CopyTo(array, arrayIndex);

    bool ICollection<KeyValuePair<TKey, TValue>>.Remove(KeyValuePair<TKey, TValue> item) =>
        ((ICollection<KeyValuePair<TKey, TValue>>)this).Contains(item) && Remove(item.Key);

    /// <summary>Gives up this process's hold on the dictionary; the manager frees it once nobody holds it.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Python's repr of the items, e.g. <c>{1: '1', '2': 2}</c>.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => _ref.Released ? "ManagedDict(disposed)" : PythonText.Dict(Items());

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedDict<TKey, TValue> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));

    private List<KeyValuePair<TKey, TValue>> Items()
    {
        var reply = _ref.Call("items", this);
        int n = reply.Int32();
        var items = new List<KeyValuePair<TKey, TValue>>(n);
        for (int i = 0; i < n; i++)
        {
            var key = _ref.Client.Codecs.Decode<TKey>(reply.Bytes(), _ref.Client);
            items.Add(new(key, _ref.Decode<TValue>(reply)));
        }

        return items;
    }
}

/// <summary>A list that lives in a manager process, Python's <c>manager.list()</c>. Every member is one round trip;
/// enumeration works on a snapshot taken in one round trip.</summary>
/// <typeparam name="T">The item type; a managed object stored as an item stays a live proxy.</typeparam>
/// <remarks>Process-safe and thread-safe: each call is atomic on the server. Items are compared by their encoded
/// bytes (IndexOf, Contains, Remove).</remarks>
public sealed class ManagedList<T> : IList<T>, IReadOnlyList<T>, IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedList(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>Gets or sets the item at an index.</summary>
    /// <param name="index">From 0 to Count - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the list.</exception>
    public T this[int index]
    {
        get => _ref.GetAt<T>(index, this);
        set => _ref.SetAt(index, value, this);
    }

    /// <summary>How many items there are.</summary>
    public int Count => _ref.Call("len", this).Int32();

    bool ICollection<T>.IsReadOnly => false;

    /// <summary>Appends an item, Python's <c>append</c>.</summary>
    /// <param name="item">The item.</param>
    public void Add(T item)
    {
        var v = _ref.Encode(item);
        var request = _ref.Begin("append", this);
        v.Write(request);
        _ref.Client.Send(request);
    }

    /// <summary>Python's <c>append</c>.</summary>
    /// <param name="item">The item.</param>
    public void Append(T item) => Add(item);

    /// <summary>Appends many items in one round trip, Python's <c>extend</c>.</summary>
    /// <param name="items">The items.</param>
    public void Extend(IEnumerable<T> items) => _ref.SendAll("extend", items, this);

    /// <summary>Inserts an item before an index.</summary>
    /// <param name="index">From 0 to Count.</param>
    /// <param name="item">The item.</param>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the list.</exception>
    public void Insert(int index, T item)
    {
        var v = _ref.Encode(item);
        var request = _ref.Begin("insert", this);
        request.Int32(index);
        v.Write(request);
        _ref.Client.Send(request);
    }

    /// <summary>Removes the item at an index.</summary>
    /// <param name="index">From 0 to Count - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the list.</exception>
    public void RemoveAt(int index)
    {
        var request = _ref.Begin("delat", this);
        request.Int32(index);
        _ref.Client.Send(request);
    }

    /// <summary>Python's <c>pop(index)</c>: removes and returns an item; -1 (the default) is the last one.</summary>
    /// <param name="index">The index; negative counts from the end.</param>
    /// <returns>The item.</returns>
    /// <exception cref="InvalidOperationException">The list is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the list.</exception>
    public T Pop(int index = -1)
    {
        var request = _ref.Begin("pop", this);
        request.Int32(index);
        return _ref.Decode<T>(_ref.Client.Send(request));
    }

    /// <summary>Removes the first equal item.</summary>
    /// <param name="item">The item.</param>
    /// <returns>True if one was removed.</returns>
    public bool Remove(T item)
    {
        var v = _ref.Encode(item);
        var request = _ref.Begin("remove", this);
        v.Write(request);
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>The index of the first equal item, or -1.</summary>
    /// <param name="item">The item.</param>
    /// <returns>The index.</returns>
    public int IndexOf(T item)
    {
        var v = _ref.Encode(item);
        var request = _ref.Begin("index", this);
        v.Write(request);
        return _ref.Client.Send(request).Int32();
    }

    /// <summary>Whether an equal item is there.</summary>
    /// <param name="item">The item.</param>
    /// <returns>True if it is.</returns>
    public bool Contains(T item) => IndexOf(item) >= 0;

    /// <summary>Python's <c>count(item)</c>.</summary>
    /// <param name="item">The item.</param>
    /// <returns>How many equal items there are.</returns>
    public int CountOf(T item)
    {
        var v = _ref.Encode(item);
        var request = _ref.Begin("count", this);
        v.Write(request);
        return _ref.Client.Send(request).Int32();
    }

    /// <summary>Reverses the list in place, Python's <c>reverse()</c>.</summary>
    public void Reverse() => _ref.Call("reverse", this);

    /// <summary>Sorts the list: read, sorted here, written back. Not atomic against other writers.</summary>
    /// <param name="comparer">The order; null for the default.</param>
    public void Sort(IComparer<T>? comparer = null)
    {
        var items = ToList();
        items.Sort(comparer);
        SetAll(items);
    }

    /// <summary>Replaces every item in one round trip, Python's <c>l[:] = items</c>.</summary>
    /// <param name="items">The new contents.</param>
    public void SetAll(IEnumerable<T> items) => _ref.SendAll("replace", items, this);

    /// <summary>Python's slice <c>l[start:start+count]</c>, in one round trip.</summary>
    /// <param name="start">The first index.</param>
    /// <param name="count">How many items.</param>
    /// <returns>The items.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The range is outside the list.</exception>
    public List<T> GetRange(int start, int count)
    {
        var request = _ref.Begin("slice", this);
        request.Int32(start);
        request.Int32(count);
        return _ref.DecodeList<T>(_ref.Client.Send(request));
    }

    /// <summary>Python's <c>l[:]</c>: every item, in one round trip.</summary>
    /// <returns>A local list.</returns>
    public List<T> ToList() => _ref.DecodeList<T>(_ref.Call("all", this));

    /// <summary>Removes every item.</summary>
    public void Clear() => _ref.Call("clear", this);

    /// <summary>Copies a snapshot into an array.</summary>
    /// <param name="array">The destination.</param>
    /// <param name="arrayIndex">Where to start in it.</param>
    public void CopyTo(T[] array, int arrayIndex) => ToList().CopyTo(array, arrayIndex);

    /// <summary>Enumerates a snapshot taken in one round trip.</summary>
    /// <returns>The enumerator.</returns>
    public IEnumerator<T> GetEnumerator() => ToList().GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Gives up this process's hold on the list; the manager frees it once nobody holds it.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Python's repr of the items, e.g. <c>[9, 8, 7]</c>.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => _ref.Released ? "ManagedList(disposed)" : PythonText.List(ToList());

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedList<T> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>A fixed-length array that lives in a manager process, Python's <c>manager.Array(typecode, items)</c>.</summary>
/// <typeparam name="T">The item type.</typeparam>
/// <remarks>Process-safe and thread-safe: each call is atomic on the server.</remarks>
public sealed class ManagedArray<T> : IReadOnlyList<T>, IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedArray(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>Gets or sets the item at an index.</summary>
    /// <param name="index">From 0 to Length - 1.</param>
    /// <exception cref="ArgumentOutOfRangeException">The index is outside the array.</exception>
    public T this[int index]
    {
        get => _ref.GetAt<T>(index, this);
        set => _ref.SetAt(index, value, this);
    }

    /// <summary>The number of items.</summary>
    public int Length => _ref.Call("len", this).Int32();

    /// <summary>The number of items.</summary>
    public int Count => Length;

    /// <summary>Every item, in one round trip.</summary>
    /// <returns>A local array.</returns>
    public T[] ToArray() => [.. _ref.DecodeList<T>(_ref.Call("all", this))];

    /// <summary>Replaces every item in one round trip; the length cannot change.</summary>
    /// <param name="items">As many items as the array has.</param>
    /// <exception cref="ArgumentException">A different number of items.</exception>
    public void SetAll(IEnumerable<T> items) => _ref.SendAll("replace", items, this);

    /// <summary>Enumerates a snapshot taken in one round trip.</summary>
    /// <returns>The enumerator.</returns>
    public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)ToArray()).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Gives up this process's hold on the array.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Python's repr, e.g. <c>array([1, 2, 3])</c>.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => _ref.Released ? "ManagedArray(disposed)" : $"array({PythonText.List(ToArray())})";

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedArray<T> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>One value that lives in a manager process, Python's <c>manager.Value(typecode, value)</c>.</summary>
/// <typeparam name="T">The value type.</typeparam>
/// <remarks>Process-safe: each get or set is atomic. A read-modify-write (<c>v.Value += 1</c>) is two calls;
/// guard it with a managed lock.</remarks>
public sealed class ManagedValue<T> : IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedValue(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>The value, Python's <c>.value</c>.</summary>
    /// <exception cref="ManagerUnavailableException">The manager is gone.</exception>
    public T Value
    {
        get => _ref.Decode<T>(_ref.Call("get", this));
        set
        {
            var v = _ref.Encode(value);
            var request = _ref.Begin("set", this);
            v.Write(request);
            _ref.Client.Send(request);
        }
    }

    /// <summary>Gives up this process's hold on the value.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Python's repr, e.g. <c>Value(3)</c>.</summary>
    /// <returns>The text.</returns>
    public override string ToString() => _ref.Released ? "ManagedValue(disposed)" : $"Value({PythonText.Repr(Value)})";

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedValue<T> ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>Python's <c>manager.Namespace()</c>: attributes that live in a manager process. Use it through
/// <c>dynamic</c> (<c>ns.Name = "Bob"</c>) or with <see cref="Get{T}"/> and <see cref="Set{T}"/>.</summary>
/// <remarks>Process-safe: each attribute get or set is atomic. Values read through <c>dynamic</c> come back as
/// the type they were stored as.</remarks>
public sealed class ManagedNamespace : DynamicObject, IManagedProxy, IProcessShared, IDisposable, IAsyncDisposable
{
    private readonly ProxyRef _ref;

    internal ManagedNamespace(ProxyRef reference) => _ref = reference;

    ProxyRef IManagedProxy.Ref => _ref;

    /// <summary>Reads an attribute.</summary>
    /// <typeparam name="T">Its type.</typeparam>
    /// <param name="name">The attribute name.</param>
    /// <returns>The value.</returns>
    /// <exception cref="MissingMemberException">There is no such attribute.</exception>
    public T Get<T>(string name)
    {
        var request = _ref.Begin("get", this);
        request.String(name);
        return As<T>(_ref.Decode<object?>(_ref.Client.Send(request)));
    }

    /// <summary>Sets an attribute.</summary>
    /// <typeparam name="T">Its type.</typeparam>
    /// <param name="name">The attribute name.</param>
    /// <param name="value">The value.</param>
    public void Set<T>(string name, T value)
    {
        ArgumentNullException.ThrowIfNull(name);

        // Attributes hold values of any type side by side, so each is stored with its type, as object.
        var v = _ref.Encode<object?>(value);
        var request = _ref.Begin("set", this);
        request.String(name);
        v.Write(request);
        _ref.Client.Send(request);
    }

    /// <summary>Deletes an attribute, Python's <c>del ns.name</c>.</summary>
    /// <param name="name">The attribute name.</param>
    /// <exception cref="MissingMemberException">There is no such attribute.</exception>
    public void Delete(string name)
    {
        var request = _ref.Begin("del", this);
        request.String(name);
        _ref.Client.Send(request);
    }

    /// <summary>Whether an attribute is set.</summary>
    /// <param name="name">The attribute name.</param>
    /// <returns>True if it is.</returns>
    public bool Has(string name)
    {
        var request = _ref.Begin("tryget", this);
        request.String(name);
        return _ref.Client.Send(request).Bool();
    }

    /// <summary>Every attribute and its value, in one round trip.</summary>
    /// <returns>The attributes in the order they were first set.</returns>
    public IReadOnlyList<KeyValuePair<string, object?>> Items()
    {
        var reply = _ref.Call("items", this);
        int n = reply.Int32();
        var items = new List<KeyValuePair<string, object?>>(n);
        for (int i = 0; i < n; i++)
        {
            string name = reply.String() ?? string.Empty;
            items.Add(new(name, _ref.Decode<object?>(reply)));
        }

        return items;
    }

    // A manager on an address stores plain MessagePack: an int may come back as a long, so it is converted.
    private static T As<T>(object? value) => value switch
    {
        T typed => typed,
        null => default!,
        IConvertible when typeof(IConvertible).IsAssignableFrom(Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T)) =>
            (T)Convert.ChangeType(value, Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T), System.Globalization.CultureInfo.InvariantCulture),
        _ => throw new InvalidCastException($"the attribute holds a {value.GetType()}, not a {typeof(T)}"),
    };

    /// <inheritdoc/>
    public override bool TryGetMember(GetMemberBinder binder, out object? result)
    {
        ArgumentNullException.ThrowIfNull(binder);
        result = Get<object?>(binder.Name);
        return true;
    }

    /// <inheritdoc/>
    public override bool TrySetMember(SetMemberBinder binder, object? value)
    {
        ArgumentNullException.ThrowIfNull(binder);
        Set(binder.Name, value);
        return true;
    }

    /// <inheritdoc/>
    public override bool TryDeleteMember(DeleteMemberBinder binder)
    {
        ArgumentNullException.ThrowIfNull(binder);
        Delete(binder.Name);
        return true;
    }

    /// <inheritdoc/>
    public override IEnumerable<string> GetDynamicMemberNames() => Items().Select(kv => kv.Key);

    /// <summary>Gives up this process's hold on the namespace.</summary>
    public void Dispose() => _ref.Release();

    /// <summary>Same as <see cref="Dispose"/>.</summary>
    /// <returns>A completed task.</returns>
    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }

    /// <summary>Python's repr: <c>Namespace(name='Bob', job='Builder')</c>, names starting with '_' left out.</summary>
    /// <returns>The text.</returns>
    public override string ToString()
    {
        if (_ref.Released) return "Namespace(disposed)";
        var text = new StringBuilder("Namespace(");
        bool first = true;
        foreach (var (name, value) in Items())
        {
            if (name.StartsWith('_')) continue;
            if (!first) text.Append(", ");
            first = false;
            text.Append(name).Append('=').Append(PythonText.Repr(value));
        }

        return text.Append(')').ToString();
    }

    void IProcessShared.WriteHandle(WireWriter writer) => _ref.WriteHandle(writer);

    internal static ManagedNamespace ReadHandle(WireReader reader) => new(ProxyRef.ReadHandle(reader));
}

/// <summary>Python's repr of common values, so a managed container prints as Python prints it.</summary>
internal static class PythonText
{
    internal static string Repr(object? value) => value switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        string s => "'" + s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal) + "'",
        double d => Float(d),
        float f => Float(f),
        IManagedProxy proxy => proxy.ToString() ?? string.Empty,
        IDictionary dict => Dict(dict.Cast<DictionaryEntry>().Select(e => new KeyValuePair<object, object?>(e.Key, e.Value))),
        IEnumerable items => List(items.Cast<object?>()),
        IFormattable formattable => formattable.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString() ?? string.Empty,
    };

    internal static string List<T>(IEnumerable<T> items) => "[" + string.Join(", ", items.Select(i => Repr(i))) + "]";

    internal static string Dict<TKey, TValue>(IEnumerable<KeyValuePair<TKey, TValue>> items) =>
        "{" + string.Join(", ", items.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}";

    private static string Float(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        var text = d.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        return text.Contains('.', StringComparison.Ordinal) || text.Contains('E', StringComparison.Ordinal) ? text : text + ".0";
    }
}
