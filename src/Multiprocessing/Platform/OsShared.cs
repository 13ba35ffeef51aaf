using System.ComponentModel;
using System.Runtime.InteropServices;

namespace Multiprocessing.Platform;

/// <summary>
/// The seam for memory shared between processes and for waiting on it: anonymous segments (memfd) that other
/// processes reach through <c>/proc/PID/fd/N</c>, futexes, and "is that process still there". Only this file knows
/// these are Linux calls.
/// </summary>
internal static unsafe class OsShared
{
    private static readonly long FutexSyscall = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 98 : 202;

    /// <summary>Creates a zero-filled anonymous segment and maps it. It has no name in any file system, so nothing of
    /// it can outlive the last process that has it open or mapped, however that process ends.</summary>
    /// <exception cref="Win32Exception">The kernel refused (out of memory, descriptor limit).</exception>
    internal static (int Fd, nint Address, long Inode) CreateSegment(long size, string label)
    {
        int fd = Posix.memfd_create("mp-" + label, Posix.MFD_CLOEXEC);
        if (fd < 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "memfd_create failed");
        try
        {
            if (Posix.ftruncate(fd, size) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), $"sizing a shared segment to {size} bytes failed");
            return (fd, Map(fd, size), Inode(fd));
        }
        catch
        {
            Posix.close(fd);
            throw;
        }
    }

    /// <summary>Opens and maps the segment another process (or this one) holds as descriptor <paramref name="fd"/>.
    /// The inode check turns "that descriptor number now means something else" into an error, not corruption.</summary>
    /// <exception cref="InvalidOperationException">The holder is gone or no longer has the segment.</exception>
    internal static (int Fd, nint Address) OpenSegment(int holderPid, int fd, long inode, long size)
    {
        int own;
        fixed (byte* path = Posix.ProcPath(holderPid, "fd/", fd))
        {
            own = Posix.open(path, Posix.O_RDWR | Posix.O_CLOEXEC, 0);
        }

        if (own < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new InvalidOperationException(
                $"the shared object cannot be opened: process {holderPid}, which sent it, has exited or closed it ({new Win32Exception(errno).Message})");
        }

        try
        {
            if (Inode(own) != inode)
                throw new InvalidOperationException($"the shared object cannot be opened: process {holderPid} closed it and reused its descriptor");
            return (own, Map(own, size));
        }
        catch
        {
            Posix.close(own);
            throw;
        }
    }

    /// <summary>Creates or opens a named POSIX segment (a file in /dev/shm, the names Python's shared_memory uses)
    /// and maps it. Opening takes the segment's own size.</summary>
    /// <exception cref="IOException">Creating a name that exists.</exception>
    /// <exception cref="FileNotFoundException">Opening a name that does not exist.</exception>
    internal static (int Fd, nint Address, long Size) OpenNamed(string name, bool create, long size)
    {
        string path = "/dev/shm/" + name;
        int flags = Posix.O_RDWR | Posix.O_CLOEXEC | Posix.O_NOFOLLOW | (create ? Posix.O_CREAT | Posix.O_EXCL : 0);
        int fd = Posix.open(path, flags, 384 /* 0600 */);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Posix.EEXIST) throw new IOException($"a shared memory block named '{name}' already exists");
            if (errno == Posix.ENOENT) throw new FileNotFoundException($"no shared memory block named '{name}' exists", path);
            throw new IOException($"opening shared memory block '{name}' failed: {new Win32Exception(errno).Message}");
        }

        try
        {
            if (create && Posix.ftruncate(fd, size) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), $"sizing shared memory block '{name}' to {size} bytes failed");
            if (!create) size = FileSize(fd);
            return (fd, size == 0 ? 0 : Map(fd, size), size);
        }
        catch
        {
            Posix.close(fd);
            if (create) Posix.unlink(path);
            throw;
        }
    }

    /// <summary>Removes a named segment's name; false if it was already gone.</summary>
    internal static bool UnlinkNamed(string name) => Posix.unlink("/dev/shm/" + name) == 0;

    /// <summary>Allocates a large segment's pages on a background thread. The kernel zeroes every new page, about
    /// 40 ms for 80 MB here; done while a child is being started (on another core) instead of at the child's first
    /// touches, it costs no one any wall time. Contents are not changed: only missing pages are added.</summary>
    internal static void PrefaultInBackground(int fd, long size)
    {
        // A private duplicate: the segment may be closed while this runs, and its number reused.
        int own = Posix.fcntl(fd, 1030 /* F_DUPFD_CLOEXEC */, 0);
        if (own < 0) return;
        ThreadPool.UnsafeQueueUserWorkItem(
            static state =>
            {
                // Failure (a full /dev/shm) only means the pages are allocated at first touch instead, where the
                // caller sees the error as it would without this.
                Posix.fallocate(state.Fd, 0, 0, state.Size);
                Posix.close(state.Fd);
            },
            (Fd: own, Size: size),
            preferLocal: false);
    }

    internal static void Unmap(nint address, long size) => Posix.munmap((void*)address, (nuint)size);

    internal static void Close(int fd) => Posix.close(fd);

    /// <summary>Sleeps while <c>*address == expected</c>, for at most <paramref name="timeout"/>. Returns false only
    /// on timeout; a wake, a changed value or a signal all return true (callers re-check their condition).</summary>
    internal static bool FutexWait(int* address, int expected, TimeSpan timeout)
    {
        long ticks = Math.Max(0, timeout.Ticks);
        long* ts = stackalloc long[2];
        ts[0] = ticks / TimeSpan.TicksPerSecond;
        ts[1] = ticks % TimeSpan.TicksPerSecond * 100;
        long rc = Posix.syscall(FutexSyscall, address, Posix.FUTEX_WAIT, expected, ts, null, 0);
        return rc == 0 || Marshal.GetLastPInvokeError() != Posix.ETIMEDOUT;
    }

    /// <summary>Wakes up to <paramref name="count"/> processes sleeping on <paramref name="address"/>.</summary>
    internal static void FutexWake(int* address, int count) =>
        Posix.syscall(FutexSyscall, address, Posix.FUTEX_WAKE, count, null, null, 0);

    /// <summary>Whether a process exists and has not exited. A zombie (exited, not yet reaped by its parent) counts
    /// as dead: whatever it held is abandoned even though its pid is still taken.</summary>
    internal static bool IsAlive(int pid)
    {
        if (pid == Environment.ProcessId) return true;
        int fd;
        fixed (byte* path = Posix.ProcPath(pid, "stat"))
        {
            fd = Posix.open(path, Posix.O_RDONLY | Posix.O_CLOEXEC, 0);
        }

        if (fd < 0) return false;
        try
        {
            byte* buffer = stackalloc byte[512];
            nint n = Posix.read(fd, buffer, 512);
            if (n <= 0) return false;
            var text = new ReadOnlySpan<byte>(buffer, (int)n);

            // "pid (comm) S ...": comm may itself hold parentheses, so the state follows the last one.
            int close = text.LastIndexOf((byte)')');
            if (close < 0 || close + 2 >= text.Length) return false;
            byte state = text[close + 2];
            return state is not (byte)'Z' and not (byte)'X' and not (byte)'x';
        }
        finally
        {
            Posix.close(fd);
        }
    }

    private static nint Map(int fd, long size)
    {
        void* address = Posix.mmap(null, (nuint)size, Posix.PROT_READ | Posix.PROT_WRITE, Posix.MAP_SHARED, fd, 0);
        if (address == (void*)-1) throw new Win32Exception(Marshal.GetLastPInvokeError(), $"mapping a shared segment of {size} bytes failed");
        return (nint)address;
    }

    private static long FileSize(int fd)
    {
        byte* stat = stackalloc byte[256];
        if (Posix.fstat(fd, stat) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "fstat failed");

        // st_size sits at 48 in both the x86-64 and the generic (arm64) struct stat.
        return *(long*)(stat + 48);
    }

    private static long Inode(int fd)
    {
        byte* stat = stackalloc byte[256];
        if (Posix.fstat(fd, stat) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "fstat failed");

        // st_ino follows the 8-byte st_dev in both the x86-64 and the generic (arm64) struct stat.
        return *(long*)(stat + 8);
    }
}
