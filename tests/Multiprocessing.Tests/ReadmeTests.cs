using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Xunit;

namespace Multiprocessing.Tests;

/// <summary>
/// The README's "Python to C#" table is the first thing a Python reader trusts, so every C# name in it is held to the
/// library's public surface: a renamed member, a wrong receiver, a named argument that no overload has, a property
/// written as a call or a wrong "→ Type" fails here instead of misleading a reader.
/// </summary>
public sealed class ReadmeTests
{
    [Fact]
    public void Every_csharp_name_in_the_python_to_csharp_table_exists_in_the_public_surface()
    {
        var rows = ReadmeTable.Parse(File.ReadAllText(ReadmePath()), "Python to C#");
        Assert.True(rows.Count >= 50, $"the table was expected to have at least 50 rows, the parser found {rows.Count}");

        var checker = new ApiNameChecker(typeof(Mp).Assembly);
        var problems = rows.SelectMany(checker.Check).ToList();
        Assert.True(problems.Count == 0, "README.md, Python to C#:\n" + string.Join("\n", problems));

        // A parser that skipped everything would pass the line above; each row's C# cell must name something checked.
        var silent = rows.Where(r => checker.CheckedNames(r) == 0).Select(r => $"line {r.Line}: {r.CSharp}").ToList();
        Assert.True(silent.Count == 0, "rows whose C# cell yielded no checked name:\n" + string.Join("\n", silent));
    }

    /// <summary>The check is only as good as what it reads: each API name in the real table, misspelt on its own,
    /// must make the row fail. A name the parser skipped by accident would survive its misspelling.</summary>
    [Fact]
    public void Each_name_in_the_table_misspelt_alone_makes_its_row_fail()
    {
        var rows = ReadmeTable.Parse(File.ReadAllText(ReadmePath()), "Python to C#");
        var checker = new ApiNameChecker(typeof(Mp).Assembly);
        var survivors = new List<string>();
        int mutants = 0;
        foreach (var row in rows)
        {
            foreach (var (cell, rebuild) in new (string, Func<string, TableRow>)[] { (row.CSharp, c => row with { CSharp = c }), (row.Notes, c => row with { Notes = c }) })
            {
                foreach (int at in ApiNameChecker.NameEnds(cell))
                {
                    mutants++;
                    var mutant = rebuild(cell.Insert(at, "Zz"));
                    if (!checker.Check(mutant).Any()) survivors.Add($"line {row.Line}: {(cell == row.CSharp ? mutant.CSharp : mutant.Notes)}");
                }
            }
        }

        Assert.True(mutants >= 200, $"only {mutants} names found to misspell");
        Assert.True(survivors.Count == 0, "misspelt names the check did not report:\n" + string.Join("\n", survivors));
    }

    [Theory]
    [InlineData("| `p.start()` | `p.Begin()` | |", "`Begin`")]
    [InlineData("| `mp.Pool()` | `Mp.Poool(processes: ...)` | |", "`Poool`")]
    [InlineData("| `mp.Pool()` | `Mp.Pool()` → `ProcessPoool` | |", "`ProcessPoool`")]
    [InlineData("| `mp.Pool()` | `Mp.Pool()` → `ProcessLock` | |", "returns")]
    [InlineData("| `mp.Pool()` | `Mp.Pool(workers: 4)` | |", "`workers`")]
    [InlineData("| `mp.Barrier(a, b, c, d)` | `Mp.Barrier(a, b, c, d)` | |", "4 positional")]
    [InlineData("| `p.is_alive()` | `p.IsAlive()` | |", "not a method")]
    [InlineData("| `p.exitcode` | `p.Start` | |", "is a method")]
    [InlineData("| `p.start()` | `x.Start()` | |", "receiver `x`")]
    [InlineData("| `pool.map()` | `pool.CurrentTaskCancellationToken` | |", "is static")]
    [InlineData("| `conn.poll()` | `Poll()`, `Peek()` | |", "`Peek`")]
    [InlineData("| `q.get()` | `q.Get()` | `Frobnicate(n)` does it |", "`Frobnicate`")]
    [InlineData("| `mp.Pipe()` | `Mp.Pipe<T, U>()` | |", "type argument")]
    [InlineData("| `import multiprocessing` | `using Multiprocesing;` | |", "namespace")]
    public void The_checker_reports_a_name_that_does_not_exist(string row, string expected)
    {
        var rows = ReadmeTable.Parse($"## Python to C#\n\n| Python | C# | Notes |\n|---|---|---|\n{row}\n", "Python to C#");
        var problems = new ApiNameChecker(typeof(Mp).Assembly).Check(Assert.Single(rows)).ToList();
        Assert.Contains(problems, p => p.Contains(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void The_checker_accepts_a_true_row()
    {
        const string row = "| `p.join(timeout)` | `p.Join(TimeSpan?)` → `bool`, `await p.JoinAsync(ct)` | `Dispose()`; `Mp.CurrentProcess.Pid` |";
        var rows = ReadmeTable.Parse($"## Python to C#\n\n| Python | C# | Notes |\n|---|---|---|\n{row}\n", "Python to C#");
        var checker = new ApiNameChecker(typeof(Mp).Assembly);
        Assert.Empty(checker.Check(Assert.Single(rows)));
        Assert.Equal(3, checker.CheckedNames(rows[0])); // p.Join, TimeSpan, p.JoinAsync
    }

    private static string ReadmePath()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var path = Path.Combine(dir.FullName, "README.md");
            if (File.Exists(path) && File.Exists(Path.Combine(dir.FullName, "Directory.Packages.props"))) return path;
        }

        throw new FileNotFoundException("no README.md beside Directory.Packages.props above " + AppContext.BaseDirectory);
    }
}

/// <summary>One row of a three-column Markdown table: Python, C#, notes.</summary>
internal sealed record TableRow(int Line, string Python, string CSharp, string Notes);

internal static class ReadmeTable
{
    /// <summary>The rows of the first table under the heading, header and separator left out.</summary>
    public static List<TableRow> Parse(string markdown, string heading)
    {
        var lines = markdown.Split('\n');
        int start = Array.FindIndex(lines, l => l.TrimEnd() == "## " + heading);
        if (start < 0) throw new InvalidOperationException($"no '## {heading}' section");
        var rows = new List<TableRow>();
        bool header = true;
        for (int i = start + 1; i < lines.Length && !lines[i].StartsWith("## ", StringComparison.Ordinal); i++)
        {
            var line = lines[i].Trim();
            if (!line.StartsWith('|'))
            {
                if (rows.Count > 0) break;
                continue;
            }

            var cells = SplitCells(line);
            if (header || cells.All(c => c.Trim().Trim(':').All(ch => ch == '-')))
            {
                header = false;
                continue;
            }

            if (cells.Count != 3) throw new InvalidOperationException($"line {i + 1}: {cells.Count} cells, expected 3: {line}");
            rows.Add(new TableRow(i + 1, cells[0].Trim(), cells[1].Trim(), cells[2].Trim()));
        }

        return rows;
    }

    /// <summary>Splits on the pipes outside code spans, so a `|` inside backticks stays in its cell.</summary>
    private static List<string> SplitCells(string line)
    {
        var cells = new List<string>();
        var cell = new StringBuilder();
        bool code = false;
        foreach (char c in line.AsSpan(1, line.Length - (line.EndsWith('|') ? 2 : 1)))
        {
            if (c == '`') code = !code;
            if (c == '|' && !code)
            {
                cells.Add(cell.ToString());
                cell.Clear();
            }
            else
            {
                cell.Append(c);
            }
        }

        cells.Add(cell.ToString());
        return cells;
    }

    /// <summary>A cell as alternating prose and code spans, in order.</summary>
    public static List<(bool Code, string Text)> Segments(string cell)
    {
        var parts = cell.Split('`');
        return parts.Select((text, i) => (Code: i % 2 == 1, Text: text)).Where(s => s.Code || s.Text.Length > 0).ToList();
    }
}

/// <summary>
/// Reads the C# in code spans as chains of names (<c>Mp.Pool(...)</c>, <c>pool.IMap(...)</c>, <c>AsyncResult&lt;T&gt;</c>,
/// <c>Poll()</c>) and resolves each against the public types of the library and of the BCL it uses.
/// <para>How a name is read, deliberately rather than by what happens to parse:</para>
/// <list type="bullet">
/// <item>A lowercase name that starts a chain is a local, a parameter or a keyword, never API; followed by a dot it is a
/// receiver, which must be one of <see cref="Receivers"/> (the variable names the table uses) so its member is checked
/// on that type. Python's own lowercase names in the notes (<c>get_value()</c>, <c>qsize</c>) fall under the same rule.
/// Lowercase names are checked in two places only: a named argument inside a call, which some overload must take,
/// and a span that is nothing but <c>name:</c>, a parameter some public method must have.</item>
/// <item>A capitalised name is a type (ours or the BCL's) or a member. In the C# column a bare member (<c>Poll()</c>)
/// must exist on a type the row names or on a receiver's type, from either column (the Python column's <c>conn.</c>
/// says whose <c>Poll</c> it is); a row that names no type of ours checks it against every public type. The notes
/// mention members of other rows' types in passing (<c>`Join` returns when the parent dies</c>), so a bare name there
/// need only exist somewhere in the public surface.</item>
/// <item><see cref="Placeholders"/> and <see cref="PythonNames"/> are the only capitalised names not resolved: example
/// code's own names and Python's exceptions quoted for comparison.</item>
/// <item>String literals are dropped and an argument written <c>...</c> means elided arguments, so only named
/// arguments are checked for such a call.</item>
/// </list>
/// </summary>
internal sealed partial class ApiNameChecker
{
    /// <summary>The receiver variables the table uses. <c>ns</c> is a <c>dynamic</c> ManagedNamespace: what follows it
    /// is an attribute the user picks, not API.</summary>
    private static readonly Dictionary<string, string[]> Receivers = new(StringComparer.Ordinal)
    {
        ["p"] = ["ChildProcess"],
        ["pool"] = ["ProcessPool"],
        ["res"] = ["AsyncResult`1"],
        ["l"] = ["ProcessLock", "ProcessRLock"],
        ["conn"] = ["Connection`1"],
        ["q"] = ["ProcessQueue`1"],
        ["m"] = ["ProcessManager"],
        ["ns"] = [],
    };

    /// <summary>Names the examples make up: the user's function, type parameters, and the user's interface and
    /// class in the manager-registration row.</summary>
    private static readonly HashSet<string> Placeholders = new(StringComparer.Ordinal) { "F", "T", "K", "V", "TResult", "IMaths", "Maths" };

    /// <summary>Python's exceptions, quoted in the notes beside the .NET type that stands for them.</summary>
    private static readonly HashSet<string> PythonNames = new(StringComparer.Ordinal) { "BrokenPipeError", "EOFError" };

    private static readonly Dictionary<string, string> Keywords = new(StringComparer.Ordinal)
    {
        ["bool"] = "Boolean", ["int"] = "Int32", ["long"] = "Int64", ["double"] = "Double", ["string"] = "String",
        ["object"] = "Object", ["void"] = "Void", ["byte"] = "Byte",
    };

    private readonly Assembly _library;
    private readonly List<Type> _libraryTypes;
    private readonly Dictionary<string, List<Type>> _types = new(StringComparer.Ordinal);
    private readonly HashSet<string> _namespaces = new(StringComparer.Ordinal);
    private readonly Dictionary<TableRow, int> _checked = [];

    public ApiNameChecker(Assembly library)
    {
        _library = library;
        _libraryTypes = [.. library.GetExportedTypes()];
        var assemblies = new List<Assembly> { library, typeof(object).Assembly, typeof(Enumerable).Assembly, typeof(List<>).Assembly };
        assemblies.AddRange(library.GetReferencedAssemblies().Select(Assembly.Load));
        foreach (var type in assemblies.Distinct().SelectMany(a => a.GetExportedTypes()))
        {
            if (type.FullName is null) continue;
            Index(type.Name, type);
            Index(type.FullName.Replace('+', '.'), type);
            if (type.Assembly == library && type.Namespace is not null) _namespaces.Add(type.Namespace);
        }
    }

    private void Index(string key, Type type)
    {
        if (!_types.TryGetValue(key, out var list)) _types[key] = list = [];
        list.Add(type);
    }

    /// <summary>How many names of the row's C# cell were resolved, after <see cref="Check"/>.</summary>
    public int CheckedNames(TableRow row) => _checked.GetValueOrDefault(row);

    /// <summary>Every name in the row that the library (or the BCL, for BCL types) does not have.</summary>
    public IEnumerable<string> Check(TableRow row)
    {
        var problems = new List<string>();
        void Report(string problem) => problems.Add($"line {row.Line}: {problem}");

        var context = new List<Type>();
        foreach (var receiver in ReceiverNames(row.Python).Concat(ReceiverNames(row.CSharp)))
        {
            if (Receivers.TryGetValue(receiver, out var names)) context.AddRange(names.SelectMany(n => _types[n]));
        }

        var csharp = ReadmeTable.Segments(row.CSharp);
        var notes = ReadmeTable.Segments(row.Notes);
        foreach (var (code, text) in csharp.Concat(notes))
        {
            if (!code) continue;
            foreach (var chain in Chains(text).SelectMany(c => c.Flatten()))
            {
                if (chain.Elements.Count == 1 && Resolve(chain.Elements[0], out var types) && types.Any(t => t.Assembly == _library))
                    context.AddRange(types.Where(t => t.Assembly == _library));
            }
        }

        _checked[row] = CheckCell(csharp, strict: true, context, Report);
        CheckCell(notes, strict: false, context, Report);
        return problems;
    }

    /// <summary>Checks each code span of a cell, and each "`call` → `Type`" claim in it; returns how many names
    /// resolved.</summary>
    private int CheckCell(List<(bool Code, string Text)> segments, bool strict, List<Type> context, Action<string> report)
    {
        List<MemberInfo>? lastCall = null;
        string? lastCallText = null;
        bool arrow = false, pair = false;
        int count = 0;
        foreach (var (code, text) in segments)
        {
            if (!code)
            {
                // Only an arrow followed directly by the type ("→ `T`", or "→ two `T`" for a pair) claims a return type.
                var trimmed = text.Trim();
                arrow = trimmed is "→" or "→ two";
                pair = trimmed == "→ two";
                continue;
            }

            if (arrow && lastCall is { Count: > 0 })
            {
                var claimed = ParseTypeRef(text);
                if (!lastCall.Any(m => ReturnMatches(ReturnType(m), claimed, pair)))
                    report($"`{lastCallText}` returns {string.Join(" or ", lastCall.Select(m => Describe(ReturnType(m))).Distinct())}, not {(pair ? "two " : "")}`{text}`");
            }

            arrow = false;
            lastCall = null;
            if (UsingDirective().Match(text) is { Success: true } directive)
            {
                count++;
                if (!_namespaces.Contains(directive.Groups[1].Value)) report($"`{text}`: the library has no namespace `{directive.Groups[1].Value}`");
                continue;
            }

            // `taskTimeout:` alone names a parameter that calls take.
            if (ParameterMention().Match(text) is { Success: true } parameter)
            {
                count++;
                var name = parameter.Groups[1].Value;
                bool exists = _libraryTypes
                    .SelectMany(t => t.GetMethods().Cast<MethodBase>().Concat(t.GetConstructors()))
                    .Any(m => m.GetParameters().Any(p => p.Name == name));
                if (!exists) report($"`{text}`: no public method of the library has a parameter `{name}`");
                continue;
            }

            var chains = Chains(text);
            foreach (var chain in chains)
            {
                var members = CheckChain(chain, strict, context, report, text);
                if (members is not null) count++;
                count += chain.Inner.SelectMany(c => c.Flatten()).Count(c => CheckChain(c, strict, context, report, text) is not null);

                // The call a following "→ `Type`" speaks of is the span's last top-level call.
                bool isCall = chain.Elements[^1].Args is not null;
                lastCall = isCall ? members : null;
                lastCallText = isCall ? text : null;
            }
        }

        return count;
    }

    /// <summary>Resolves one chain; returns the members its last element named (empty for a type), or null when the
    /// chain is not API (a local, a keyword, a placeholder) or did not resolve (then it has been reported).</summary>
    private List<MemberInfo>? CheckChain(Chain chain, bool strict, List<Type> context, Action<string> report, string span)
    {
        var first = chain.Elements[0];
        List<Type> receivers;
        int next;
        bool instanceOnly;
        if (char.IsLower(first.Name[0]) || first.Name[0] == '@')
        {
            if (chain.Elements.Count == 1) return null;
            if (!Receivers.TryGetValue(first.Name, out var names))
            {
                report($"`{span}`: receiver `{first.Name}` is not one of the table's variables ({string.Join(", ", Receivers.Keys)}); add it to ApiNameChecker.Receivers with its type");
                return null;
            }

            if (names.Length == 0) return null;
            receivers = names.SelectMany(n => _types[n]).ToList();
            next = 1;
            instanceOnly = true;
        }
        else
        {
            // The longest dotted prefix that is a type: System.TimeoutException, Mp, PoolOptions.
            int typeEnd = -1;
            List<Type>? types = null;
            for (int k = chain.Elements.Count; k >= 1 && types is null; k--)
            {
                var key = string.Join('.', chain.Elements.Take(k).Select(e => e.Name));
                if (k > 1 && chain.Elements.Take(k - 1).Any(e => e.Args is not null || e.TypeArgs.Count > 0)) continue;
                if (TypesNamed(key, chain.Elements[k - 1].TypeArgs.Count) is { Count: > 0 } found)
                {
                    types = found;
                    typeEnd = k;
                }
            }

            if (types is null)
            {
                if (Placeholders.Contains(first.Name) || PythonNames.Contains(first.Name)) return null;
                if (chain.Elements.Count > 1)
                {
                    report($"`{span}`: no public type `{first.Name}`");
                    return null;
                }

                // A bare member: on the row's types in the C# column, anywhere in the notes.
                var scope = strict && context.Count > 0 ? context : _libraryTypes;
                var found = FindMembers(scope, first, instanceOnly: false, qualified: false, span, report, out bool named);
                if (!named)
                {
                    report(strict && context.Count > 0
                        ? $"`{span}`: `{first.Name}` is neither a public type nor a member of {string.Join(", ", context.Distinct().Select(Describe))}"
                        : $"`{span}`: `{first.Name}` is neither a public type nor a public member of the library");
                }

                return named ? found : null;
            }

            receivers = types;
            next = typeEnd;
            instanceOnly = false;
            if (next == chain.Elements.Count) return [];
        }

        List<MemberInfo> members = [];
        for (int i = next; i < chain.Elements.Count; i++)
        {
            var element = chain.Elements[i];
            members = FindMembers(receivers, element, instanceOnly, qualified: true, span, report, out bool named);
            if (!named)
            {
                report($"`{span}`: {string.Join(" / ", receivers.Select(Describe))} has no public member `{element.Name}`");
                return null;
            }

            if (members.Count == 0) return null; // found by name, but reported as unusable as written
            receivers = members.Select(ReturnType).Where(t => t != typeof(void)).Distinct().ToList();
            instanceOnly = true;
        }

        return members;
    }

    /// <summary>The members of the types called as the element is written: with parentheses a method whose
    /// parameters take those arguments, without them anything but a method when a receiver qualifies it.</summary>
    private static List<MemberInfo> FindMembers(List<Type> types, Element element, bool instanceOnly, bool qualified, string span, Action<string> report, out bool named)
    {
        const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.FlattenHierarchy;
        var all = types
            .SelectMany(t => t.IsInterface ? t.GetInterfaces().Prepend(t) : [t])
            .SelectMany(t => t.GetMember(element.Name, MemberTypes.Method | MemberTypes.Property | MemberTypes.Field | MemberTypes.Event | MemberTypes.NestedType, flags))
            .Where(m => m is not MethodInfo { IsSpecialName: true })
            .ToList();
        named = all.Count > 0;
        if (!named) return [];

        var name = $"`{element.Name}`";
        if (instanceOnly && all.All(IsStatic))
        {
            report($"`{span}`: {name} is static, so it is not reached through an instance");
            return [];
        }

        if (element.Args is null)
        {
            if (qualified && all.All(m => m is MethodInfo))
            {
                report($"`{span}`: {name} is a method, so it needs parentheses");
                return [];
            }

            return all;
        }

        var methods = all.OfType<MethodInfo>().Where(m => !instanceOnly || !m.IsStatic).ToList();
        if (methods.Count == 0)
        {
            report($"`{span}`: {name} is not a method, so it takes no parentheses");
            return [];
        }

        if (element.TypeArgs.Count > 0)
        {
            methods = methods.Where(m => m.IsGenericMethodDefinition && m.GetGenericArguments().Length == element.TypeArgs.Count).ToList();
            if (methods.Count == 0)
            {
                report($"`{span}`: no overload of {name} takes {element.TypeArgs.Count} type argument(s)");
                return [];
            }
        }

        var fitting = methods.Where(m => Fits(m.GetParameters(), element.Args)).ToList();
        if (fitting.Count == 0)
        {
            var positional = element.Args.Count(a => a.Name is null);
            var namedArgs = element.Args.Where(a => a.Name is not null).Select(a => $"`{a.Name}`");
            report($"`{span}`: no overload of {name} takes {positional} positional argument(s)"
                + (namedArgs.Any() ? $" and the named argument(s) {string.Join(", ", namedArgs)}" : "")
                + $"; it has ({string.Join("), (", methods.Select(m => string.Join(", ", m.GetParameters().Select(p => p.Name))))})");
        }

        return fitting.Cast<MemberInfo>().ToList();
    }

    private static bool Fits(ParameterInfo[] parameters, List<Argument> args)
    {
        bool elided = args.Any(a => a.Name is null && a.Text == "...");
        int positional = args.Count(a => a.Name is null);
        bool paramsArray = parameters.Length > 0 && parameters[^1].IsDefined(typeof(ParamArrayAttribute));
        if (!elided && positional > parameters.Length && !paramsArray) return false;
        var covered = new HashSet<string>(parameters.Take(elided ? 0 : positional).Select(p => p.Name!), StringComparer.Ordinal);
        foreach (var arg in args.Where(a => a.Name is not null))
        {
            if (!parameters.Any(p => p.Name == arg.Name) || !covered.Add(arg.Name!)) return false;
        }

        return elided || parameters.All(p => covered.Contains(p.Name!) || p.IsOptional || p.IsDefined(typeof(ParamArrayAttribute)));
    }

    private static bool IsStatic(MemberInfo member) => member switch
    {
        MethodInfo m => m.IsStatic,
        PropertyInfo p => (p.GetMethod ?? p.SetMethod)!.IsStatic,
        FieldInfo f => f.IsStatic,
        EventInfo e => e.AddMethod!.IsStatic,
        _ => true,
    };

    private static Type ReturnType(MemberInfo member) => member switch
    {
        MethodInfo m => m.ReturnType,
        PropertyInfo p => p.PropertyType,
        FieldInfo f => f.FieldType,
        EventInfo e => e.EventHandlerType!,
        Type t => t,
        _ => typeof(void),
    };

    private bool Resolve(Element element, out List<Type> types)
    {
        types = TypesNamed(element.Name, element.TypeArgs.Count) ?? [];
        return types.Count > 0;
    }

    /// <summary>Types by simple or full name; with type arguments only the generic type of that arity, without them
    /// the plain type (a mention of <c>Connection</c> alone would be a mistake, but <c>Enumerable</c> is fine).</summary>
    private List<Type>? TypesNamed(string name, int typeArgs)
    {
        var key = Keywords.GetValueOrDefault(name, name) + (typeArgs > 0 ? $"`{typeArgs}" : "");
        return _types.TryGetValue(key, out var found) ? found : null;
    }

    private static IEnumerable<string> ReceiverNames(string cell) =>
        ReadmeTable.Segments(cell).Where(s => s.Code).SelectMany(s => ReceiverPattern().Matches(StripLiterals(s.Text)).Select(m => m.Groups[1].Value));

    // ---- reading C# spans ----

    /// <summary>An argument of a call: its name when written <c>name: value</c>, and its text.</summary>
    internal sealed record Argument(string? Name, string Text);

    /// <summary><c>Name&lt;TypeArgs&gt;(Args)</c>; Args is null where there are no parentheses.</summary>
    internal sealed record Element(string Name, List<string> TypeArgs, List<Argument>? Args);

    /// <summary>A dotted chain of elements, with the chains found inside its type and call arguments.</summary>
    internal sealed record Chain(List<Element> Elements, List<Chain> Inner)
    {
        public IEnumerable<Chain> Flatten() => Inner.SelectMany(c => c.Flatten()).Prepend(this);
    }

    internal static List<Chain> Chains(string span)
    {
        var text = StripLiterals(span);
        var chains = new List<Chain>();
        int i = 0;
        while (i < text.Length)
        {
            // A name that continues a number, a member access already read, or a `.Member` mention with no receiver.
            bool leadingDot = text[i] == '.' && i + 1 < text.Length && IsNameStart(text[i + 1]) && (i == 0 || !IsNamePart(text[i - 1]) && text[i - 1] != ')');
            if (leadingDot) i++;
            if (!IsNameStart(text[i]) || (i > 0 && !leadingDot && (IsNamePart(text[i - 1]) || text[i - 1] == '.')))
            {
                i++;
                continue;
            }

            var elements = new List<Element>();
            var inner = new List<Chain>();
            while (true)
            {
                int start = i;
                if (text[i] == '@') i++;
                while (i < text.Length && IsNamePart(text[i])) i++;
                var name = text[start..i].TrimStart('@');
                var typeArgs = new List<string>();
                if (i < text.Length && text[i] == '<' && Close(text, i, '<', '>') is int closeAngle)
                {
                    typeArgs = SplitTopLevel(text[(i + 1)..closeAngle]);
                    inner.AddRange(typeArgs.SelectMany(Chains));
                    i = closeAngle + 1;
                }

                if (i < text.Length && text[i] == '?') i++; // nullable: TimeSpan?, ProcessInfo?
                List<Argument>? args = null;
                if (i < text.Length && text[i] == '(' && Close(text, i, '(', ')') is int closeParen)
                {
                    var body = text[(i + 1)..closeParen];
                    args = body.Trim().Length == 0 ? [] : SplitTopLevel(body).Select(ToArgument).ToList();
                    inner.AddRange(Chains(body));
                    i = closeParen + 1;
                }

                elements.Add(new Element(name, typeArgs, args));
                if (i + 1 < text.Length && text[i] == '.' && IsNameStart(text[i + 1]))
                {
                    i++;
                    continue;
                }

                break;
            }

            chains.Add(new Chain(elements, inner));
        }

        return chains;
    }

    private static Argument ToArgument(string text)
    {
        var match = NamedArgument().Match(text);
        return match.Success ? new Argument(match.Groups[1].Value, match.Groups[2].Value.Trim()) : new Argument(null, text.Trim());
    }

    private static bool IsNameStart(char c) => char.IsLetter(c) || c == '_' || c == '@';

    private static bool IsNamePart(char c) => char.IsLetterOrDigit(c) || c == '_';

    /// <summary>The index of the bracket closing the one at <paramref name="open"/>, or null. A lambda's <c>=&gt;</c>
    /// is not a closing angle bracket.</summary>
    private static int? Close(string text, int open, char opening, char closing)
    {
        int depth = 0;
        for (int i = open; i < text.Length; i++)
        {
            if (text[i] == opening) depth++;
            else if (text[i] == closing && !(closing == '>' && i > 0 && text[i - 1] == '=') && --depth == 0) return i;
        }

        return null;
    }

    private static List<string> SplitTopLevel(string text)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            switch (text[i])
            {
                case '(' or '[' or '{':
                case '<' when i > 0 && IsNamePart(text[i - 1]):
                    depth++;
                    break;
                case ')' or ']' or '}':
                case '>' when depth > 0 && text[i - 1] != '=':
                    depth--;
                    break;
                case ',' when depth == 0:
                    parts.Add(text[start..i].Trim());
                    start = i + 1;
                    break;
            }
        }

        parts.Add(text[start..].Trim());
        return parts;
    }

    /// <summary>Where each name the check resolves ends in a cell: capitalised names (not placeholders nor
    /// Python's), receivers, named arguments inside a call and a lone `name:`; never inside a string literal.</summary>
    internal static IEnumerable<int> NameEnds(string cell)
    {
        int offset = 0;
        foreach (var (code, text) in ReadmeTable.Segments(cell))
        {
            int start = offset + (code ? 1 : 0);
            offset = start + text.Length + (code ? 1 : 0);
            if (!code) continue;
            var literals = Literal().Matches(text).Select(m => (m.Index, End: m.Index + m.Length)).ToList();
            var ends = new SortedSet<int>();
            foreach (Match m in Capitalised().Matches(text))
            {
                if (!Placeholders.Contains(m.Value) && !PythonNames.Contains(m.Value)) ends.Add(m.Index + m.Length);
            }

            foreach (Match m in ReceiverPattern().Matches(text)) ends.Add(m.Groups[1].Index + m.Groups[1].Length);
            if (ParameterMention().Match(text) is { Success: true } lone) ends.Add(lone.Groups[1].Index + lone.Groups[1].Length);
            int depth = 0;
            for (int i = 0; i < text.Length; i++)
            {
                depth += text[i] switch { '(' => 1, ')' => -1, _ => 0 };
                if (depth > 0 && NamedArgumentAt().Match(text, i) is { Success: true } arg && arg.Index == i && (i == 0 || !IsNamePart(text[i - 1])))
                    ends.Add(arg.Groups[1].Index + arg.Groups[1].Length);
            }

            foreach (int end in ends.Where(e => !literals.Any(l => e > l.Index && e < l.End))) yield return start + end;
        }
    }

    private static string StripLiterals(string text) => Literal().Replace(text, "\"\"");

    // ---- "→ Type" claims ----

    internal sealed record TypeRef(string Name, List<TypeRef> Args);

    private static TypeRef ParseTypeRef(string text)
    {
        text = text.Trim().TrimEnd('?');
        int angle = text.IndexOf('<', StringComparison.Ordinal);
        if (angle < 0) return new TypeRef(Keywords.GetValueOrDefault(text, text), []);
        var args = SplitTopLevel(text[(angle + 1)..text.LastIndexOf('>')]).Select(ParseTypeRef).ToList();
        return new TypeRef(text[..angle], args);
    }

    /// <summary>Whether the declared return type is the claimed one. A generic parameter matches whatever the row
    /// puts in its place (<c>SharedValue&lt;double&gt;</c> for <c>SharedValue&lt;T&gt;</c>).</summary>
    private static bool ReturnMatches(Type type, TypeRef claimed, bool pair)
    {
        if (pair)
        {
            return type.IsGenericType && type.GetGenericTypeDefinition() == typeof(ValueTuple<,>)
                && type.GetGenericArguments().All(t => ReturnMatches(t, claimed, pair: false));
        }

        if (type.IsGenericParameter) return true;
        if (Nullable.GetUnderlyingType(type) is { } underlying) type = underlying;
        var name = type.IsGenericType ? type.Name[..type.Name.IndexOf('`', StringComparison.Ordinal)] : type.Name;
        if (name != claimed.Name) return false;
        var args = type.IsGenericType ? type.GetGenericArguments() : [];
        return args.Length == claimed.Args.Count && args.Zip(claimed.Args).All(p => ReturnMatches(p.First, p.Second, pair: false));
    }

    private static string Describe(Type type) => type.IsGenericType
        ? $"{type.Name[..type.Name.IndexOf('`', StringComparison.Ordinal)]}<{string.Join(", ", type.GetGenericArguments().Select(Describe))}>"
        : type.Name;

    [GeneratedRegex(@"^\s*using\s+([A-Z][\w.]*)\s*;")]
    private static partial Regex UsingDirective();

    [GeneratedRegex(@"^\s*@?([A-Za-z_]\w*):\s*$")]
    private static partial Regex ParameterMention();

    [GeneratedRegex(@"(?<![\w.])([a-z]\w*)\.(?=[A-Za-z_])")]
    private static partial Regex ReceiverPattern();

    [GeneratedRegex(@"^@?([A-Za-z_]\w*)\s*:(?!:)(.*)$", RegexOptions.Singleline)]
    private static partial Regex NamedArgument();

    [GeneratedRegex(@"(?<![\w@])[A-Z]\w*")]
    private static partial Regex Capitalised();

    [GeneratedRegex(@"\G@?([A-Za-z_]\w*)\s*:(?!:)")]
    private static partial Regex NamedArgumentAt();

    [GeneratedRegex(@"""[^""]*""|'[^']*'")]
    private static partial Regex Literal();
}
