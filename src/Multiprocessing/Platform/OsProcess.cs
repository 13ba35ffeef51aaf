using System.Collections.Concurrent;
using System.ComponentModel;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace Multiprocessing.Platform;

/// <summary>
/// The one seam between the library and the operating system's process model. Everything above it speaks in
/// pids, signals and sockets; only this file knows they are Linux syscalls.
/// </summary>
internal static unsafe class OsProcess
{
    /// <summary>The descriptor number a child finds its control socket on.</summary>
    internal const int ChildControlFd = 3;

    /// <summary>Starts <paramref name="path"/> with the given argv and environment; the child gets
    /// <paramref name="controlFd"/> as descriptor 3 and /dev/null as stdin, and shares stdout and stderr.</summary>
    /// <exception cref="Win32Exception">posix_spawn failed.</exception>
    internal static int Spawn(string path, IReadOnlyList<string> argv, IReadOnlyList<string> environment, int controlFd)
    {
        var strings = new List<nint>(argv.Count + environment.Count + 2);
        byte* actions = stackalloc byte[Posix.OpaqueSize];
        byte* attr = stackalloc byte[Posix.OpaqueSize];
        byte* mask = stackalloc byte[Posix.OpaqueSize];
        byte* defaults = stackalloc byte[Posix.OpaqueSize];
        var argvBlock = (byte**)NativeMemory.AllocZeroed((nuint)(argv.Count + 1), (nuint)sizeof(nint));
        var envBlock = (byte**)NativeMemory.AllocZeroed((nuint)(environment.Count + 1), (nuint)sizeof(nint));
        byte* Utf8(string s)
        {
            var p = Marshal.StringToCoTaskMemUTF8(s);
            strings.Add(p);
            return (byte*)p;
        }

        try
        {
            for (int i = 0; i < argv.Count; i++) argvBlock[i] = Utf8(argv[i]);
            for (int i = 0; i < environment.Count; i++) envBlock[i] = Utf8(environment[i]);

            Check(Posix.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init");
            Check(Posix.posix_spawnattr_init(attr), "posix_spawnattr_init");
            try
            {
                // dup2 onto itself would not clear FD_CLOEXEC, so the source must never already be 3.
                if (controlFd == ChildControlFd) throw new InvalidOperationException("control descriptor collides with 3");
                Check(Posix.posix_spawn_file_actions_adddup2(actions, controlFd, ChildControlFd), "adddup2");
                Check(Posix.posix_spawn_file_actions_addopen(actions, 0, Utf8("/dev/null"), Posix.O_RDONLY, 0), "addopen");

                // The runtime blocks and ignores signals for its own reasons; a child must start clean.
                Posix.sigemptyset(mask);
                Posix.sigfillset(defaults);
                Posix.sigdelset(defaults, Posix.SIGKILL);
                Posix.sigdelset(defaults, 19 /* SIGSTOP */);
                Check(Posix.posix_spawnattr_setsigmask(attr, mask), "setsigmask");
                Check(Posix.posix_spawnattr_setsigdefault(attr, defaults), "setsigdefault");
                Check(Posix.posix_spawnattr_setflags(attr, Posix.POSIX_SPAWN_SETSIGDEF | Posix.POSIX_SPAWN_SETSIGMASK), "setflags");

                int pid;
                int rc = Posix.posix_spawn(&pid, Utf8(path), actions, attr, argvBlock, envBlock);
                if (rc != 0) throw new Win32Exception(rc, $"posix_spawn of '{path}' failed");
                return pid;
            }
            finally
            {
                Posix.posix_spawn_file_actions_destroy(actions);
                Posix.posix_spawnattr_destroy(attr);
            }
        }
        finally
        {
            foreach (var p in strings) Marshal.FreeCoTaskMem(p);
            NativeMemory.Free(argvBlock);
            NativeMemory.Free(envBlock);
        }
    }

    /// <summary>Creates a connected stream socket pair: the parent's end as a <see cref="Socket"/> and the raw
    /// descriptor that becomes the child's descriptor 3. Both are close-on-exec, so no other child inherits them.</summary>
    internal static (Socket Parent, int ChildFd) CreateControlPair()
    {
        int* fds = stackalloc int[2];
        if (Posix.socketpair(Posix.AF_UNIX, Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0, fds) != 0)
            throw new Win32Exception(Marshal.GetLastPInvokeError(), "socketpair failed");
        int child = fds[1];
        if (child == ChildControlFd)
        {
            // Move it off 3 (see Spawn); F_DUPFD_CLOEXEC keeps the flag.
            int moved = Posix.fcntl(child, 1030 /* F_DUPFD_CLOEXEC */, 4);
            Posix.close(child);
            child = moved;
        }

        return (FromDescriptor(fds[0]), child);
    }

    /// <summary>Wraps an inherited or created socket descriptor, taking ownership.</summary>
    internal static Socket FromDescriptor(int fd) => new(new SafeSocketHandle(fd, ownsHandle: true));

    /// <summary>Fills <paramref name="buffer"/> from a descriptor with blocking reads; false at end of stream.
    /// A child reads its control descriptor this way rather than through <see cref="Socket"/>, whose first use
    /// costs a fresh runtime several milliseconds.</summary>
    internal static bool ReadExactly(int fd, Span<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            int n = ReadSome(fd, buffer);
            if (n == 0) return false;
            buffer = buffer[n..];
        }

        return true;
    }

    /// <summary>One blocking read of whatever is available; 0 at end of stream.</summary>
    internal static int ReadSome(int fd, Span<byte> buffer)
    {
        while (true)
        {
            nint n;
            fixed (byte* p = buffer) n = Posix.read(fd, p, buffer.Length);
            if (n >= 0) return (int)n;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Posix.EINTR) continue;
            if (errno == 104 /* ECONNRESET */) return 0;
            throw new Win32Exception(errno, $"read from descriptor {fd} failed");
        }
    }

    /// <summary>Writes all of <paramref name="data"/> with blocking writes.</summary>
    internal static void WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            nint n;
            fixed (byte* p = data) n = Posix.write(fd, p, data.Length);
            if (n > 0)
            {
                data = data[(int)n..];
                continue;
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno == Posix.EINTR) continue;
            throw new Win32Exception(errno, $"write to descriptor {fd} failed");
        }
    }

    /// <summary>Closes a raw descriptor.</summary>
    internal static void Close(int fd) => Posix.close(fd);

    /// <summary>Marks an inherited descriptor close-on-exec so the child's own children do not inherit it.</summary>
    internal static void SetCloseOnExec(int fd)
    {
        if (Posix.fcntl(fd, Posix.F_SETFD, Posix.FD_CLOEXEC) != 0)
            throw new Win32Exception(Marshal.GetLastPInvokeError(), $"fcntl(F_SETFD) on descriptor {fd} failed");
    }

    /// <summary>Sends a signal. A process that is already gone is not an error.</summary>
    internal static void Signal(int pid, int signal)
    {
        if (Posix.kill(pid, signal) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Posix.ESRCH) throw new Win32Exception(errno, $"kill({pid}, {signal}) failed");
        }
    }

    /// <summary>Whether a process of ours has exited, without reaping it (its pid stays reserved, so a later
    /// signal cannot hit a stranger that reused it). Blocks until it exits when <paramref name="block"/>.</summary>
    internal static bool HasExited(int pid, bool block)
    {
        byte* info = stackalloc byte[Posix.OpaqueSize];
        new Span<byte>(info, 128).Clear();
        int options = Posix.WEXITED | Posix.WNOWAIT | (block ? 0 : Posix.WNOHANG);
        while (true)
        {
            int rc = Posix.waitid(Posix.P_PID, pid, info, options);
            if (rc == 0)
            {
                // With WNOHANG, "still running" is rc 0 with si_pid (offset 16 on Linux) left at zero.
                return *(int*)(info + 16) != 0;
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno == Posix.EINTR) continue;
            if (errno == Posix.ECHILD) return true;
            throw new Win32Exception(errno, $"waitid({pid}) failed");
        }
    }

    /// <summary>Reaps an exited child and returns its exit code the way Python reports it: the status for a normal
    /// exit, minus the signal number for a death by signal. Null when someone else reaped it first.</summary>
    internal static int? Reap(int pid)
    {
        // Read before the reap: a zombie's /proc entry is what still knows the file names.
        var diagnosticFiles = DiagnosticChildren.TryRemove(pid, out var tempDirectory) ? DiagnosticFiles(pid, tempDirectory) : [];
        int status;
        while (true)
        {
            int rc = Posix.waitpid(pid, &status, Posix.WNOHANG);
            if (rc == pid) break;
            if (rc == 0) throw new InvalidOperationException($"process {pid} has not exited yet");
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Posix.EINTR) continue;
            if (errno == Posix.ECHILD) return null;
            throw new Win32Exception(errno, $"waitpid({pid}) failed");
        }

        foreach (var file in diagnosticFiles) RemoveLeftover(file);
        int low = status & 0x7f;
        return low == 0 ? (status >> 8) & 0xff : -low;
    }

    /// <summary>Children started with the runtime's diagnostics on, and the temp directory each one puts its
    /// diagnostic socket and debugger pipes in.</summary>
    private static readonly ConcurrentDictionary<int, string> DiagnosticChildren = new();

    /// <summary>Marks a child whose runtime makes diagnostic files: they are removed when it is reaped, since a child
    /// leaves with _exit (or is killed) and so never removes them itself.</summary>
    internal static void RemoveDiagnosticFilesOnReap(int pid, string tempDirectory) => DiagnosticChildren[pid] = tempDirectory;

    /// <summary>The runtime names its diagnostic socket and debugger pipes after the pid and the process's start time
    /// in clock ticks (field 22 of /proc/PID/stat).</summary>
    private static string[] DiagnosticFiles(int pid, string tempDirectory)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return [];
        }

        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        if (fields.Length < 20) return [];
        var key = pid + "-" + fields[19];
        return [Path.Combine(tempDirectory, "dotnet-diagnostic-" + key + "-socket"), Path.Combine(tempDirectory, "clr-debug-pipe-" + key + "-in"), Path.Combine(tempDirectory, "clr-debug-pipe-" + key + "-out")];
    }

    private static void RemoveLeftover(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Mp.LoggerFactory.CreateLogger("Multiprocessing").LogWarning(ex, "Could not remove the runtime diagnostic file {Path} of a reaped child", path);
        }
    }

    /// <summary>Ends this process at once: no finalizers, no exit handlers.</summary>
    [DoesNotReturn]
    internal static void ExitNow(int code)
    {
        Posix._exit(code);
        throw new UnreachableException();
    }

    /// <summary>Makes <paramref name="path"/> the working directory if it exists; a directory that is gone leaves
    /// the current one. Without Directory.SetCurrentDirectory, whose path conversion would be a child's first use of
    /// the runtime's UTF-8 encoder.</summary>
    internal static void TryChangeDirectory(string path)
    {
        fixed (byte* bytes = Posix.PathBytes(path))
        {
            Posix.chdir(bytes);
        }
    }

    /// <summary>Sets an environment variable in the native environment (what native libraries such as CUDA read)
    /// and in .NET's copy.</summary>
    internal static void SetEnvironment(string name, string? value)
    {
        if (value is null) Posix.unsetenv(name);
        else Posix.setenv(name, value, 1);
        Environment.SetEnvironmentVariable(name, value);
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0) throw new Win32Exception(rc, what + " failed");
    }
}
