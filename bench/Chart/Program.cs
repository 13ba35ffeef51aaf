using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using ScottPlot;

namespace Multiprocessing.Bench.Chart;

/// <summary>Draws bench/results/*.json as one bar per workload: how many times better than Python we are, on a log
/// scale, so that a 10x and a 0.1x row look equally far from Python. Usage: <c>dotnet run --project bench/Chart
/// [output.png]</c>.</summary>
internal static partial class Program
{
    // Rows whose ratio does not compare the same work. Ours maps the 80 MB lazily and the kernel fills it while the
    // child starts, Python's zeroes it at once: the ~500x would stretch the axis and say nothing about either side.
    private static readonly HashSet<string> Skipped = new(StringComparer.Ordinal)
    {
        "80 MB of doubles: allocation alone",
    };

    private const int RowHeight = 34;

    private static int Main(string[] args)
    {
        var root = Multiprocessing.Bench.Checkout.Root();
        if (root is null)
        {
            Console.Error.WriteLine("run this from a checkout: no folder above the binary holds Directory.Packages.props and bench/");
            return 1;
        }

        var resultsDir = Path.Combine(root, "bench", "results");
        var rows = Load(resultsDir);
        if (rows.Count == 0)
        {
            Console.Error.WriteLine($"no rows in {resultsDir}/latest*.json: run the bench first");
            return 1;
        }

        var output = args.Length > 0 ? Path.GetFullPath(args[0]) : Path.Combine(resultsDir, "chart.png");
        Draw(rows, output);
        Console.WriteLine($"{rows.Count} workloads drawn to {output}");
        return 0;
    }

    /// <summary>One saved row of Compare.Save.</summary>
    private sealed record Row(string Workload, double Ours, double Python, string Unit, string Target)
    {
        /// <summary>Rates are better higher, times (and memory) lower: the factor is above 1 wherever we win.</summary>
        public bool HigherIsBetter => Unit.EndsWith("/s", StringComparison.Ordinal) || Unit == "x";

        public double Factor => HigherIsBetter ? Ours / Python : Python / Ours;

        /// <summary>The target as a factor on the same scale, or null where it is not a ratio to Python's figure
        /// (the CPU speedup's target is our own speedup, not a comparison).</summary>
        public double? TargetFactor
        {
            get
            {
                var match = TargetPattern().Match(Target);
                if (!match.Success) return null;
                var ratio = double.Parse(match.Groups[2].Value, CultureInfo.InvariantCulture);
                // Targets are written as ours/Python; for times that is the inverse of the factor.
                return HigherIsBetter ? ratio : 1 / ratio;
            }
        }
    }

    [GeneratedRegex(@"^(<=|>=)\s*([0-9.]+)x$")]
    private static partial Regex TargetPattern();

    /// <summary>The full run's rows, with those of a focused run (<c>-- pipes</c>, <c>-- managers</c>) in place of
    /// the same workload: the README quotes the focused runs, which are taken on a quiet machine.</summary>
    private static List<Row> Load(string dir)
    {
        var files = Directory.GetFiles(dir, "latest*.json")
            .OrderBy(f => Path.GetFileName(f) == "latest.json" ? 0 : 1)
            .ThenBy(f => f, StringComparer.Ordinal);
        var rows = new List<Row>();
        foreach (var file in files)
        {
            var loaded = JsonSerializer.Deserialize<List<Row>>(File.ReadAllText(file), new JsonSerializerOptions { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }) ?? [];
            foreach (var row in loaded)
            {
                int same = rows.FindIndex(r => r.Workload == row.Workload && r.Unit == row.Unit);
                if (same >= 0) rows[same] = row;
                else rows.Add(row);
            }
        }

        // A workload saved in two units (queue messages/s and MiB/s) is one measurement: one bar.
        return rows
            .Where(r => !Skipped.Contains(r.Workload) && r.Ours > 0 && r.Python > 0 && double.IsFinite(r.Factor))
            .DistinctBy(r => r.Workload)
            .ToList();
    }

    private static void Draw(List<Row> rows, string output)
    {
        using var plot = new Plot();
        // ScottPlot's own pick is the first family the font manager lists, a serif face on a bare Debian.
        if (SkiaSharp.SKFontManager.Default.FontFamilies.FirstOrDefault(f => f.Contains("Sans", StringComparison.Ordinal) && !f.Contains("Mono", StringComparison.Ordinal)) is { } sans)
            plot.Font.Set(sans);

        var better = Color.FromHex("#2E8B57");
        var worse = Color.FromHex("#D2691E");
        var bars = new List<Bar>();
        var tickPositions = new double[rows.Count];
        var tickLabels = new string[rows.Count];
        var targetXs = new List<double>();
        var targetYs = new List<double>();
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            double y = RowY(rows, i);
            double x = Math.Log10(row.Factor);
            bars.Add(new Bar { Position = y, ValueBase = 0, Value = x, Size = 0.7, FillColor = x >= 0 ? better : worse, LineWidth = 0 });
            tickPositions[i] = y;
            tickLabels[i] = row.Unit == "x" ? row.Workload : $"{row.Workload} ({row.Unit})";
            if (row.TargetFactor is { } target)
            {
                targetXs.Add(Math.Log10(target));
                targetYs.Add(y);
            }
        }

        var barPlot = plot.Add.Bars(bars);
        barPlot.Horizontal = true;

        var targets = plot.Add.Markers(targetXs.ToArray(), targetYs.ToArray(), MarkerShape.VerticalBar, 24, Colors.Black);
        targets.MarkerLineWidth = 2;
        targets.LegendText = "target";

        var python = plot.Add.VerticalLine(0, 1.5f, Colors.Black);
        python.LegendText = "Python = 1x";

        // The bars are one plottable in two colours, so their legend entries are given by hand.
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "better than Python", FillColor = better });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "worse than Python", FillColor = worse });
        plot.ShowLegend(Alignment.UpperRight);
        plot.Legend.FontSize = 13;

        plot.Axes.Left.SetTicks(tickPositions, tickLabels);
        plot.Axes.Left.TickLabelStyle.FontSize = 13;
        plot.Axes.Left.MajorTickStyle.Length = 0;

        var xs = rows.Select(r => Math.Log10(r.Factor)).Concat(targetXs).Append(0).ToList();
        double left = xs.Min() - 0.3; // room for a label left of the longest losing bar
        double right = xs.Max() + 0.25;
        plot.Axes.SetLimits(left, right, -0.6, rows.Count - 0.4);
        plot.Axes.Bottom.TickGenerator = LogTicks(left, right);
        plot.Axes.Bottom.TickLabelStyle.FontSize = 13;
        plot.Grid.YAxisStyle.IsVisible = false;

        plot.Title("Multiprocessing for .NET against CPython's multiprocessing, per workload", 18);
        plot.Axes.Title.FullFigureCenter = true;
        plot.XLabel(
            "times better than Python (log scale)\n"
            + "ms, us and MiB: Python's figure / ours;  /s: our figure / Python's\n"
            + "both sides run each workload in the same bench run on one 2-core VM, median of several runs\n"
            + "data: bench/results/latest*.json; rows from the -- pipes and -- managers runs replace the full run's",
            13);

        int width = 1400, height = 210 + RowHeight * rows.Count;
        AddFactorLabels(plot, rows, width, height);

        var directory = Path.GetDirectoryName(output);
        if (!string.IsNullOrEmpty(directory)) Directory.CreateDirectory(directory);
        plot.SavePng(output, width, height);
    }

    private static double RowY(List<Row> rows, int i) => rows.Count - 1 - i; // first row on top, as in the README

    /// <summary>Puts each factor at the end of its bar, or past the target mark where the mark would cut through the
    /// text. Needs the data area's width in pixels, so the plot is laid out once first; the labels sit inside the
    /// data area and do not change that layout.</summary>
    private static void AddFactorLabels(Plot plot, List<Row> rows, int width, int height)
    {
        const float gap = 5, charWidth = 9; // generous for 13 px bold digits, so a near miss still clears the mark
        plot.RenderInMemory(width, height);
        var limits = plot.Axes.GetLimits();
        double pixelsPerUnit = plot.LastRender.DataRect.Width / (limits.Right - limits.Left);
        for (int i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            var text = FormatFactor(row.Factor);
            double x = Math.Log10(row.Factor);
            int side = x >= 0 ? 1 : -1;
            double textUnits = (gap + charWidth * text.Length) / pixelsPerUnit;
            double at = x;
            if (row.TargetFactor is { } target)
            {
                // Distance of the mark beyond the bar end, measured outwards from 1x.
                double beyond = (Math.Log10(target) - x) * side;
                if (beyond >= 0 && beyond < textUnits) at = Math.Log10(target);
            }

            var label = plot.Add.Text(text, at, RowY(rows, i));
            label.Alignment = side > 0 ? Alignment.MiddleLeft : Alignment.MiddleRight;
            label.OffsetX = side * gap;
            label.LabelFontSize = 13;
            label.LabelBold = true;
        }
    }

    private static string FormatFactor(double factor) => factor switch
    {
        >= 10 => string.Create(CultureInfo.InvariantCulture, $"{factor:F0}x"),
        >= 1 => string.Create(CultureInfo.InvariantCulture, $"{factor:F1}x"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{factor:F2}x"),
    };

    /// <summary>Ticks at 1, 2 and 5 of every decade the axis spans, labelled as factors rather than logarithms.</summary>
    private static ScottPlot.TickGenerators.NumericManual LogTicks(double left, double right)
    {
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        for (int decade = (int)Math.Floor(left); decade <= (int)Math.Ceiling(right); decade++)
        {
            foreach (var step in (ReadOnlySpan<double>)[1, 2, 5])
            {
                double value = step * Math.Pow(10, decade);
                double x = Math.Log10(value);
                if (x < left || x > right) continue;
                ticks.AddMajor(x, string.Create(CultureInfo.InvariantCulture, $"{value:0.###}x"));
            }
        }

        return ticks;
    }
}
