namespace Multiprocessing.Bench;

/// <summary>Where the bench tools find the repository they were built in; compiled into both bench projects.</summary>
internal static class Checkout
{
    /// <summary>The checkout this binary was built in, or null for a copy published elsewhere. The central package
    /// file marks the root: a worktree's .git is a file, and a source archive has no .git at all.</summary>
    internal static string? Root()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Directory.Packages.props")) && Directory.Exists(Path.Combine(dir.FullName, "bench")))
                return dir.FullName;
        }

        return null;
    }
}
