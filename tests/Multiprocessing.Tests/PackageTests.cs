using System.Diagnostics;
using System.IO.Compression;
using System.Security;
using System.Xml.Linq;
using Xunit;
using Xunit.Abstractions;

namespace Multiprocessing.Tests;

/// <summary>
/// The package as a user gets it: packed, restored from a folder feed into an app outside this repo, published, and
/// run from the publish output with nothing but what the package brought.
/// </summary>
public sealed class PackageTests(ITestOutputHelper log) : ProcessTest
{
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Guard = TimeSpan.FromSeconds(30);
    private static readonly string TargetFramework = $"net{Environment.Version.Major}.{Environment.Version.Minor}";

    // Whatever the library project reads from outside its own folder has to come along into the copy.
    private static readonly string[] RootFiles =
        ["Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props", "global.json", "nuget.config", "NuGet.Config", "README.md"];

    [Fact]
    public async Task A_published_app_that_consumes_the_package_runs_a_pool_map()
    {
        using var scratch = new Scratch();
        var version = "0.0.0-test." + Guid.NewGuid().ToString("N")[..12];
        var feed = scratch.File("feed");
        var library = scratch.File("lib");
        var app = scratch.File("app");
        var published = scratch.File("out");

        // Packed from a copy, so that this build's bin and obj (and anyone else's Release build of the repo) are left
        // alone while the test host runs from them.
        CopyLibrary(library);
        await Dotnet(library, "pack", "src/Multiprocessing", "-c", "Release", "-o", feed, $"-p:PackageVersion={version}", "-p:NuGetAudit=false", "--disable-build-servers");

        var package = Path.Combine(feed, $"Multiprocessing.{version}.nupkg");
        var readyToRun = Path.Combine(library, "src", "Multiprocessing", "obj", "Release", TargetFramework, "r2r", "Multiprocessing.dll");
        CheckContents(package, File.Exists(readyToRun) ? readyToRun : null);

        WriteApp(app, version, feed, scratch.File("packages"));
        await Dotnet(app, "publish", "-c", "Release", "-o", published, "--disable-build-servers");

        // Both launch paths: `dotnet exec` of the packaged assembly, and the startup hook that self-contained apps use.
        foreach (var mode in new[] { "exec", "hook" })
        {
            var clock = Stopwatch.StartNew();
            using var run = TestApp.StartFrom(Path.Combine(published, "App.dll"), new Dictionary<string, string> { ["MULTIPROCESSING_LAUNCH"] = mode });
            int exitCode = run.WaitForExit(Guard);
            log.WriteLine($"run ({mode}): {clock.ElapsedMilliseconds} ms");
            Assert.True(exitCode == 0 && run.Stdout.Trim() == "0,1,4,9,16,25,36,49,64,81", $"{mode}: exit code {exitCode}; stdout: {run.Stdout} stderr: {run.Stderr}");
        }
    }

    private static void CopyLibrary(string destination)
    {
        var root = Path.GetFullPath(BuildInfo.Get("RepoRoot"));
        foreach (var name in RootFiles)
        {
            var file = Path.Combine(root, name);
            if (File.Exists(file)) CopyFile(file, Path.Combine(destination, name));
        }

        var project = Path.Combine(root, "src", "Multiprocessing");
        foreach (var file in Directory.EnumerateFiles(project, "*", SearchOption.AllDirectories))
        {
            var relative = Path.GetRelativePath(project, file);
            var top = relative.Split(Path.DirectorySeparatorChar)[0];
            if (top is "bin" or "obj") continue;
            CopyFile(file, Path.Combine(destination, "src", "Multiprocessing", relative));
        }
    }

    private static void CopyFile(string from, string to)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(to)!);
        File.Copy(from, to);
    }

    private static void CheckContents(string package, string? readyToRun)
    {
        using var zip = ZipFile.OpenRead(package);
        var names = zip.Entries.Select(e => e.FullName).ToList();
        Assert.Contains("README.md", names);
        Assert.Equal(
            [$"lib/{TargetFramework}/Multiprocessing.dll", $"lib/{TargetFramework}/Multiprocessing.xml"],
            names.Where(n => n.StartsWith("lib/", StringComparison.Ordinal)).Order(StringComparer.Ordinal));

        XDocument nuspec;
        using (var stream = zip.GetEntry("Multiprocessing.nuspec")!.Open()) nuspec = XDocument.Load(stream);
        var ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        Assert.Equal("README.md", (string?)metadata.Element(ns + "readme"));
        Assert.False(string.IsNullOrWhiteSpace((string?)metadata.Element(ns + "license")));
        Assert.Equal(
            ["MessagePack", "Microsoft.Extensions.Logging.Abstractions"],
            metadata.Descendants(ns + "dependency").Select(d => (string)d.Attribute("id")!).Order(StringComparer.Ordinal));

        // Where the build compiles ReadyToRun, that image is what children should start from, not the plain IL.
        if (readyToRun is not null)
        {
            using var packed = new MemoryStream();
            using (var stream = zip.GetEntry($"lib/{TargetFramework}/Multiprocessing.dll")!.Open()) stream.CopyTo(packed);
            Assert.True(packed.ToArray().AsSpan().SequenceEqual(File.ReadAllBytes(readyToRun)), "the packed assembly is not the ReadyToRun build");
        }
    }

    private static void WriteApp(string directory, string version, string feed, string packages)
    {
        Directory.CreateDirectory(directory);

        // Empty files end MSBuild's upward search, so nothing above the temp folder leaks into the app.
        foreach (var name in new[] { "Directory.Build.props", "Directory.Build.targets", "Directory.Packages.props" })
            File.WriteAllText(Path.Combine(directory, name), "<Project />\n");

        // Packages that this repo's restore already fetched are used in place; the test's own package goes to a
        // folder inside the scratch directory, so the user's package cache never keeps a test version.
        var cache = BuildInfo.Get("NuGetPackageRoot");
        var fallback = cache.Length > 0 && Directory.Exists(cache) ? $"<RestoreFallbackFolders>{SecurityElement.Escape(cache)}</RestoreFallbackFolders>" : string.Empty;
        File.WriteAllText(Path.Combine(directory, "App.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>{TargetFramework}</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
                <NuGetAudit>false</NuGetAudit>
                <RestorePackagesPath>{SecurityElement.Escape(packages)}</RestorePackagesPath>
                {fallback}
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Multiprocessing" Version="{version}" />
              </ItemGroup>
            </Project>
            """);

        // The test package only ever comes from the folder feed; anything the cache lacks may come from nuget.org.
        File.WriteAllText(Path.Combine(directory, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="test-feed" value="{SecurityElement.Escape(feed)}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
              <packageSourceMapping>
                <packageSource key="test-feed">
                  <package pattern="Multiprocessing" />
                </packageSource>
                <packageSource key="nuget.org">
                  <package pattern="*" />
                </packageSource>
              </packageSourceMapping>
            </configuration>
            """);

        File.WriteAllText(Path.Combine(directory, "Program.cs"), """
            using Multiprocessing;

            using var pool = Mp.Pool(2);
            Console.WriteLine(string.Join(",", pool.Map(x => x * x, Enumerable.Range(0, 10))));
            """);
    }

    private async Task Dotnet(string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in args) start.ArgumentList.Add(arg);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";

        var command = $"dotnet {string.Join(' ', args)}";
        var clock = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using (var timeout = new CancellationTokenSource(CommandTimeout))
        {
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync();
                throw new Xunit.Sdk.XunitException($"{command} ran past {CommandTimeout}:\n{await output}\n{await errors}");
            }
        }

        log.WriteLine($"{command}: {clock.ElapsedMilliseconds} ms");
        Assert.True(process.ExitCode == 0, $"{command} exited with {process.ExitCode}:\n{await output}\n{await errors}");
    }
}
