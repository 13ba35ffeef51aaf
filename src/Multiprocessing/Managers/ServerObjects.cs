using System.Runtime.CompilerServices;
using System.Reflection;
using Multiprocessing.Serialization;

namespace Multiprocessing.Managers;

/// <summary>An object living on the manager server, addressed by id.</summary>
internal abstract class ServerObject
{
    internal long Id { get; set; }

    /// <summary>Proxies in any process, leases, and slots of other objects that refer to this one.</summary>
    internal int Refs { get; set; }

    internal abstract void Invoke(string method, WireReader args, CallContext context, WireWriter reply);

    /// <summary>The last reference went: drop the references this object's values hold.</summary>
    internal virtual void Freed()
    {
    }

    protected ManagerFault NoMethod(string method) =>
        new(Fault.InvalidOperation, $"a managed {GetType().Name.Replace("Object", string.Empty, StringComparison.Ordinal).ToLowerInvariant()} has no method '{method}'");
}

/// <summary>A server object whose state a dead client may hold (a lock), to be released when its session ends.</summary>
internal interface IOwned
{
    void Abandon(Session session);
}

/// <summary>Blocking on the server: waits in slices so a caller that hung up is noticed and its thread freed.</summary>
internal static class ServerWait
{
    internal static bool Until(object gate, Func<bool> ready, long deadline, CallContext context)
    {
        while (!ready())
        {
            long now = Environment.TickCount64;
            if (now >= deadline) return false;
            Monitor.Wait(gate, (int)Math.Min(deadline - now, 100));
            if (!ready() && context.ClientGone) throw new ClientGoneException();
        }

        return true;
    }
}

/// <summary>Objects whose values are stored slots: adding a slot takes references on what it names, and
/// dropping one gives them back.</summary>
internal abstract class SlotObject(ManagerServer server) : ServerObject
{
    protected ManagerServer Server { get; } = server;

    protected Slot Keep(Slot slot)
    {
        Server.Incref(slot.Refs);
        return slot;
    }

    protected void Drop(Slot slot) => Server.Decref(slot.Refs);

    protected void Reply(WireWriter reply, Slot slot, CallContext context)
    {
        Server.Grant(context, slot.Refs);
        slot.Write(reply);
    }

    protected void Reply(WireWriter reply, IReadOnlyCollection<Slot> slots, CallContext context)
    {
        foreach (var slot in slots) Server.Grant(context, slot.Refs);
        SlotLists.Write(reply, slots);
    }
}

internal sealed class DictObject : SlotObject
{
    private readonly OrderedDictionary<BlobKey, Slot> _items = [];

    internal DictObject(ManagerServer server, WireReader initial)
        : base(server)
    {
        int n = initial.Int32();
        for (int i = 0; i < n; i++) _items[new BlobKey(initial.Bytes().ToArray())] = Keep(Slot.Read(initial));
    }

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_items)
        {
            switch (method)
            {
                case "set":
                {
                    var key = new BlobKey(args.Bytes().ToArray());
                    var value = Keep(Slot.Read(args));

                    // Overwriting keeps the key's place, as Python's dict does (and Remove would be O(n) here).
                    if (_items.TryGetValue(key, out var old)) Drop(old);
                    _items[key] = value;
                    return;
                }

                case "add":
                {
                    var key = new BlobKey(args.Bytes().ToArray());
                    if (_items.ContainsKey(key)) throw new ManagerFault(Fault.Argument, "an item with the same key has already been added");
                    _items[key] = Keep(Slot.Read(args));
                    return;
                }

                case "get":
                {
                    var key = new BlobKey(args.Bytes().ToArray());
                    if (!_items.TryGetValue(key, out var value)) throw new ManagerFault(Fault.KeyNotFound, "the given key was not present in the managed dictionary");
                    Reply(reply, value, context);
                    return;
                }

                case "tryget":
                {
                    var key = new BlobKey(args.Bytes().ToArray());
                    bool found = _items.TryGetValue(key, out var value);
                    reply.Bool(found);
                    if (found) Reply(reply, value, context);
                    return;
                }

                case "setdefault":
                {
                    var key = new BlobKey(args.Bytes().ToArray());
                    var value = Slot.Read(args);
                    if (!_items.TryGetValue(key, out var existing)) _items[key] = existing = Keep(value);
                    Reply(reply, existing, context);
                    return;
                }

                case "contains":
                    reply.Bool(_items.ContainsKey(new BlobKey(args.Bytes().ToArray())));
                    return;
                case "del":
                {
                    bool removed = _items.Remove(new BlobKey(args.Bytes().ToArray()), out var old);
                    if (removed) Drop(old);
                    reply.Bool(removed);
                    return;
                }

                case "pop":
                {
                    if (!_items.Remove(new BlobKey(args.Bytes().ToArray()), out var old)) throw new ManagerFault(Fault.KeyNotFound, "the given key was not present in the managed dictionary");
                    Reply(reply, old, context);
                    Drop(old);
                    return;
                }

                case "len":
                    reply.Int32(_items.Count);
                    return;
                case "clear":
                    foreach (var value in _items.Values) Drop(value);
                    _items.Clear();
                    return;
                case "items":
                    reply.Int32(_items.Count);
                    foreach (var (key, value) in _items)
                    {
                        reply.Bytes(key.Data);
                        Reply(reply, value, context);
                    }

                    return;
                case "update":
                {
                    int n = args.Int32();
                    for (int i = 0; i < n; i++)
                    {
                        var key = new BlobKey(args.Bytes().ToArray());
                        var value = Keep(Slot.Read(args));
                        if (_items.TryGetValue(key, out var old)) Drop(old);
                        _items[key] = value;
                    }

                    return;
                }

                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed()
    {
        foreach (var value in _items.Values) Drop(value);
        _items.Clear();
    }
}

/// <summary>A list, or with a fixed length an array.</summary>
internal sealed class ListObject : SlotObject
{
    private readonly List<Slot> _items;
    private readonly bool _fixed;

    internal ListObject(ManagerServer server, List<Slot> initial, bool fixedLength)
        : base(server)
    {
        server.Incref(initial.SelectMany(s => s.Refs ?? Slot.NoRefs).ToArray());
        _items = initial;
        _fixed = fixedLength;
    }

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_items)
        {
            switch (method)
            {
                case "len":
                    reply.Int32(_items.Count);
                    return;
                case "get":
                    Reply(reply, _items[Index(args.Int32())], context);
                    return;
                case "set":
                {
                    int i = Index(args.Int32());
                    var value = Keep(Slot.Read(args));
                    Drop(_items[i]);
                    _items[i] = value;
                    return;
                }

                case "all":
                    Reply(reply, _items, context);
                    return;
                case "slice":
                {
                    int start = args.Int32();
                    int count = args.Int32();
                    if (start < 0 || count < 0 || start > _items.Count - count) throw new ManagerFault(Fault.Index, $"the range [{start}, {start}+{count}) is outside a managed list of {_items.Count} items");
                    Reply(reply, _items.GetRange(start, count), context);
                    return;
                }

                case "index":
                {
                    var probe = Slot.Read(args);
                    reply.Int32(_items.FindIndex(s => s.SameBytes(probe)));
                    return;
                }

                case "count":
                {
                    var probe = Slot.Read(args);
                    reply.Int32(_items.Count(s => s.SameBytes(probe)));
                    return;
                }

                case "replace":
                {
                    var items = SlotLists.Read(args);
                    if (_fixed && items.Count != _items.Count) throw new ManagerFault(Fault.Argument, $"a managed array of {_items.Count} items cannot take {items.Count}");
                    foreach (var s in items) Keep(s);
                    foreach (var s in _items) Drop(s);
                    _items.Clear();
                    _items.AddRange(items);
                    return;
                }

                case "reverse":
                    _items.Reverse();
                    return;
            }

            if (_fixed) throw new ManagerFault(Fault.InvalidOperation, $"a managed array has a fixed length: '{method}' is not possible");
            switch (method)
            {
                case "append":
                    _items.Add(Keep(Slot.Read(args)));
                    reply.Int32(_items.Count);
                    return;
                case "extend":
                {
                    var items = SlotLists.Read(args);
                    foreach (var s in items) Keep(s);
                    _items.AddRange(items);
                    return;
                }

                case "insert":
                {
                    int i = args.Int32();
                    if (i < 0 || i > _items.Count) throw new ManagerFault(Fault.Index, $"index {i} is outside a managed list of {_items.Count} items");
                    _items.Insert(i, Keep(Slot.Read(args)));
                    return;
                }

                case "delat":
                {
                    int i = Index(args.Int32());
                    Drop(_items[i]);
                    _items.RemoveAt(i);
                    return;
                }

                case "pop":
                {
                    int i = args.Int32();
                    if (_items.Count == 0) throw new ManagerFault(Fault.InvalidOperation, "pop from an empty managed list");
                    i = Index(i < 0 ? _items.Count + i : i);
                    var s = _items[i];
                    _items.RemoveAt(i);
                    Reply(reply, s, context);
                    Drop(s);
                    return;
                }

                case "remove":
                {
                    var probe = Slot.Read(args);
                    int i = _items.FindIndex(s => s.SameBytes(probe));
                    reply.Bool(i >= 0);
                    if (i < 0) return;
                    Drop(_items[i]);
                    _items.RemoveAt(i);
                    return;
                }

                case "clear":
                    foreach (var s in _items) Drop(s);
                    _items.Clear();
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed()
    {
        foreach (var s in _items) Drop(s);
        _items.Clear();
    }

    private int Index(int i)
    {
        if ((uint)i >= (uint)_items.Count) throw new ManagerFault(Fault.Index, $"index {i} is outside a managed {(_fixed ? "array" : "list")} of {_items.Count} items");
        return i;
    }
}

internal sealed class NamespaceObject(ManagerServer server) : SlotObject(server)
{
    private readonly OrderedDictionary<string, Slot> _attributes = [];

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_attributes)
        {
            switch (method)
            {
                case "get":
                {
                    string name = args.String() ?? string.Empty;
                    if (!_attributes.TryGetValue(name, out var value)) throw new ManagerFault(Fault.MissingMember, $"the namespace has no attribute '{name}'");
                    Reply(reply, value, context);
                    return;
                }

                case "tryget":
                {
                    bool found = _attributes.TryGetValue(args.String() ?? string.Empty, out var value);
                    reply.Bool(found);
                    if (found) Reply(reply, value, context);
                    return;
                }

                case "set":
                {
                    string name = args.String() ?? string.Empty;
                    var value = Keep(Slot.Read(args));
                    if (_attributes.TryGetValue(name, out var old)) Drop(old);
                    _attributes[name] = value;
                    return;
                }

                case "del":
                {
                    string name = args.String() ?? string.Empty;
                    if (!_attributes.Remove(name, out var old)) throw new ManagerFault(Fault.MissingMember, $"the namespace has no attribute '{name}'");
                    Drop(old);
                    return;
                }

                case "items":
                    reply.Int32(_attributes.Count);
                    foreach (var (name, value) in _attributes)
                    {
                        reply.String(name);
                        Reply(reply, value, context);
                    }

                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed()
    {
        foreach (var value in _attributes.Values) Drop(value);
        _attributes.Clear();
    }
}

internal sealed class ValueObject : SlotObject
{
    private Slot _value;

    internal ValueObject(ManagerServer server, Slot initial)
        : base(server) => _value = Keep(initial);

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (this)
        {
            switch (method)
            {
                case "get":
                    Reply(reply, _value, context);
                    return;
                case "set":
                    var value = Keep(Slot.Read(args));
                    Drop(_value);
                    _value = value;
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed() => Drop(_value);
}

internal sealed class QueueObject(ManagerServer server, int maxSize, bool joinable) : SlotObject(server)
{
    private readonly Queue<Slot> _items = new();
    private int _unfinished;

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_items)
        {
            switch (method)
            {
                case "put":
                {
                    var item = Slot.Read(args);
                    bool block = args.Bool();
                    long deadline = block ? WireTimeout.Deadline(args.Int64()) : 0;
                    if (!ServerWait.Until(_items, () => maxSize <= 0 || _items.Count < maxSize, deadline, context)) throw new ManagerFault(Fault.Timeout, "the managed queue is full");
                    _items.Enqueue(Keep(item));
                    _unfinished++;
                    Monitor.PulseAll(_items);
                    return;
                }

                case "get":
                {
                    bool block = args.Bool();
                    long deadline = block ? WireTimeout.Deadline(args.Int64()) : 0;
                    if (!ServerWait.Until(_items, () => _items.Count > 0, deadline, context)) throw new ManagerFault(Fault.Timeout, "the managed queue is empty");
                    var item = _items.Dequeue();
                    Monitor.PulseAll(_items);
                    Reply(reply, item, context);
                    Drop(item);
                    return;
                }

                case "len":
                    reply.Int32(_items.Count);
                    return;
                case "full":
                    reply.Bool(maxSize > 0 && _items.Count >= maxSize);
                    return;
                case "maxsize":
                    reply.Int32(maxSize);
                    return;
            }

            if (!joinable) throw NoMethod(method);
            switch (method)
            {
                case "taskdone":
                    if (_unfinished == 0) throw new ManagerFault(Fault.InvalidOperation, "TaskDone() called more times than there were items");
                    if (--_unfinished == 0) Monitor.PulseAll(_items);
                    return;
                case "join":
                    reply.Bool(ServerWait.Until(_items, () => _unfinished == 0, WireTimeout.Deadline(args.Int64()), context));
                    return;
                case "unfinished":
                    reply.Int32(_unfinished);
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed()
    {
        foreach (var item in _items) Drop(item);
        _items.Clear();
    }
}

/// <summary>A lock or reentrant lock; its monitor is also the gate of the conditions built on it.</summary>
internal sealed class LockObject(bool reentrant) : ServerObject, IOwned
{
    private (Guid Session, int Thread)? _owner;
    private int _count;

    internal object Gate { get; } = new();

    internal bool IsOwner(CallContext context) => _owner == context.Owner;

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (Gate)
        {
            switch (method)
            {
                case "acquire":
                    bool block = args.Bool();
                    reply.Bool(Acquire(context, block ? WireTimeout.Deadline(args.Int64()) : 0));
                    return;
                case "release":
                    Release(context);
                    return;
                case "locked":
                    reply.Bool(_owner is not null);
                    return;
                case "mine":
                    reply.Bool(IsOwner(context));
                    return;
                case "count":
                    reply.Int32(IsOwner(context) ? _count : 0);
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal bool Acquire(CallContext context, long deadline)
    {
        var me = context.Owner;
        if (reentrant && _owner == me)
        {
            _count++;
            return true;
        }

        if (!ServerWait.Until(Gate, () => _owner is null, deadline, context)) return false;
        _owner = me;
        _count = 1;
        return true;
    }

    internal void Release(CallContext context)
    {
        if (_owner is null) throw new ManagerFault(Fault.InvalidOperation, "release of an unlocked managed lock");

        // A plain lock may be released by anyone, as Python's; a reentrant one only by its owner.
        if (reentrant && _owner != context.Owner) throw new ManagerFault(Fault.InvalidOperation, "cannot release a managed RLock this thread does not own");
        if (--_count > 0) return;
        _owner = null;
        Monitor.PulseAll(Gate);
    }

    /// <summary>Gives the lock up entirely for a condition wait; returns the recursion count to restore.</summary>
    internal int Save()
    {
        int saved = _count;
        _owner = null;
        _count = 0;
        Monitor.PulseAll(Gate);
        return saved;
    }

    internal void Restore(CallContext context, int saved)
    {
        ServerWait.Until(Gate, () => _owner is null, long.MaxValue, context);
        _owner = context.Owner;
        _count = saved;
    }

    public void Abandon(Session session)
    {
        lock (Gate)
        {
            if (_owner?.Session != session.Key) return;
            _owner = null;
            _count = 0;
            Monitor.PulseAll(Gate);
        }
    }
}

internal sealed class SemaphoreObject(int value, int bound) : ServerObject
{
    private readonly object _gate = new();
    private int _value = value;

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_gate)
        {
            switch (method)
            {
                case "acquire":
                    bool block = args.Bool();
                    bool taken = ServerWait.Until(_gate, () => _value > 0, block ? WireTimeout.Deadline(args.Int64()) : 0, context);
                    if (taken) _value--;
                    reply.Bool(taken);
                    return;
                case "release":
                    int n = args.Int32();
                    if (n < 1) throw new ManagerFault(Fault.Argument, "a semaphore is released by at least 1");
                    if ((long)_value + n > bound) throw new ManagerFault(Fault.InvalidOperation, bound == int.MaxValue ? "the semaphore's count would overflow" : $"a bounded semaphore cannot be released past its initial value {bound}");
                    _value += n;
                    Monitor.PulseAll(_gate);
                    return;
                case "value":
                    reply.Int32(_value);
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }
}

internal sealed class ConditionObject(ManagerServer server, LockObject @lock, long lockId) : ServerObject
{
    private readonly LinkedList<StrongBox<bool>> _waiters = new();

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (@lock.Gate)
        {
            switch (method)
            {
                case "acquire":
                    bool block = args.Bool();
                    reply.Bool(@lock.Acquire(context, block ? WireTimeout.Deadline(args.Int64()) : 0));
                    return;
                case "release":
                    @lock.Release(context);
                    return;
                case "wait":
                {
                    long deadline = WireTimeout.Deadline(args.Int64());
                    if (!@lock.IsOwner(context)) throw new ManagerFault(Fault.InvalidOperation, "cannot wait on a managed condition whose lock this thread does not hold");
                    var ticket = _waiters.AddLast(new StrongBox<bool>());
                    int saved = @lock.Save();
                    bool notified;
                    try
                    {
                        notified = ServerWait.Until(@lock.Gate, () => ticket.Value.Value, deadline, context);
                    }
                    finally
                    {
                        if (ticket.List is not null) _waiters.Remove(ticket);
                    }

                    @lock.Restore(context, saved);
                    reply.Bool(notified);
                    return;
                }

                case "notify":
                {
                    int n = args.Int32();
                    if (!@lock.IsOwner(context)) throw new ManagerFault(Fault.InvalidOperation, "cannot notify on a managed condition whose lock this thread does not hold");
                    while (n-- > 0 && _waiters.First is { } first)
                    {
                        first.Value.Value = true;
                        _waiters.RemoveFirst();
                    }

                    Monitor.PulseAll(@lock.Gate);
                    return;
                }

                case "lockid":
                    reply.Int64(lockId);
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    internal override void Freed()
    {
        if (lockId != 0) server.Decref(lockId);
    }
}

internal sealed class EventObject : ServerObject
{
    private readonly object _gate = new();
    private bool _set;

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_gate)
        {
            switch (method)
            {
                case "set":
                    _set = true;
                    Monitor.PulseAll(_gate);
                    return;
                case "clear":
                    _set = false;
                    return;
                case "isset":
                    reply.Bool(_set);
                    return;
                case "wait":
                    reply.Bool(ServerWait.Until(_gate, () => _set, WireTimeout.Deadline(args.Int64()), context));
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }
}

internal sealed class BarrierObject(int parties, long defaultTimeout) : ServerObject
{
    private readonly object _gate = new();
    private int _count;
    private long _generation;
    private long _resetGeneration = -1;
    private bool _broken;

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        lock (_gate)
        {
            switch (method)
            {
                case "wait":
                    long timeout = args.Int64();
                    reply.Int32(Wait(context, WireTimeout.Deadline(timeout == -2 ? defaultTimeout : timeout)));
                    return;
                case "abort":
                    Break();
                    return;
                case "reset":
                    if (_count > 0) _resetGeneration = _generation;
                    _generation++;
                    _count = 0;
                    _broken = false;
                    Monitor.PulseAll(_gate);
                    return;
                case "parties":
                    reply.Int32(parties);
                    return;
                case "nwaiting":
                    reply.Int32(_broken ? 0 : _count);
                    return;
                case "broken":
                    reply.Bool(_broken);
                    return;
                default:
                    throw NoMethod(method);
            }
        }
    }

    private int Wait(CallContext context, long deadline)
    {
        if (_broken) throw new ManagerFault(Fault.BrokenBarrier, "the barrier is broken; Reset() it to use it again");
        long generation = _generation;
        int index = _count++;
        if (_count == parties)
        {
            _count = 0;
            _generation++;
            Monitor.PulseAll(_gate);
            return index;
        }

        bool passed;
        try
        {
            passed = ServerWait.Until(_gate, () => _generation != generation || _broken, deadline, context);
        }
        catch (ClientGoneException)
        {
            // A party that vanished can never arrive: the others must not wait for it forever.
            if (_generation == generation) Break();
            throw;
        }

        if (_generation != generation)
        {
            if (_resetGeneration == generation) throw new ManagerFault(Fault.BrokenBarrier, "the barrier was reset while this party waited");
            return index;
        }

        if (!passed)
        {
            Break();
            throw new ManagerFault(Fault.BrokenBarrier, "timed out waiting at the barrier, which is now broken");
        }

        throw new ManagerFault(Fault.BrokenBarrier, "the barrier was broken while this party waited");
    }

    private void Break()
    {
        _broken = true;
        _count = 0;
        Monitor.PulseAll(_gate);
    }
}

/// <summary>An instance of a user type registered with the manager; its interface's methods are called by
/// signature, with arguments decoded as that interface declares them.</summary>
internal sealed class CustomObject(ManagerServer server, Registration registration) : ServerObject
{
    private readonly object _instance = registration.CreateInstance();

    internal override void Invoke(string method, WireReader args, CallContext context, WireWriter reply)
    {
        if (method != "call") throw NoMethod(method);
        string signature = args.String() ?? string.Empty;
        var target = registration.Method(signature) ?? throw new ManagerFault(Fault.MissingMember, $"{registration.Name} has no method {signature}");
        var parameters = target.GetParameters();
        int n = args.Int32();
        if (n != parameters.Length) throw new InvalidDataException($"{signature} takes {parameters.Length} arguments, the request has {n}");
        var values = new object?[n];
        for (int i = 0; i < n; i++) values[i] = server.Codecs.Decode(parameters[i].ParameterType, args.Bytes(), null);
        object? result;
        try
        {
            // User types need not be thread-safe: calls on one instance take turns, as on one thread.
            lock (_instance) result = target.Invoke(_instance, values);
        }
        catch (TargetInvocationException ex) when (ex.InnerException is { } inner)
        {
            throw new ManagerFault(Fault.Remote, inner.Message) { Remote = RemoteException.From(inner) };
        }

        if (target.ReturnType != typeof(void)) reply.Bytes(server.Codecs.Encode(target.ReturnType, result, null).Data);
    }

    internal override void Freed()
    {
        if (_instance is IDisposable disposable) disposable.Dispose();
    }
}
