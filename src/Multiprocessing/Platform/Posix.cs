using System.Runtime.InteropServices;

namespace Multiprocessing.Platform;

/// <summary>Raw libc entry points (Linux, glibc). Only <see cref="OsProcess"/> calls these.</summary>
internal static unsafe partial class Posix
{
    private const string Libc = "libc";

    internal const int SIGKILL = 9;
    internal const int SIGTERM = 15;
    internal const int EINTR = 4;
    internal const int ECHILD = 10;
    internal const int ESRCH = 3;

    internal const int AF_UNIX = 1;
    internal const int SOCK_STREAM = 1;
    internal const int SOCK_CLOEXEC = 0x80000;
    internal const int F_SETFD = 2;
    internal const int FD_CLOEXEC = 1;
    internal const int O_RDONLY = 0;

    internal const int P_PID = 1;
    internal const int WNOHANG = 1;
    internal const int WEXITED = 4;
    internal const int WNOWAIT = 0x01000000;

    internal const short POSIX_SPAWN_SETSIGDEF = 0x04;
    internal const short POSIX_SPAWN_SETSIGMASK = 0x08;

    // glibc x86_64/arm64 sizes are 80 (file actions), 336 (attr), 128 (sigset, siginfo); over-allocate for safety.
    internal const int OpaqueSize = 1024;

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int socketpair(int domain, int type, int protocol, int* fds);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int close(int fd);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint read(int fd, byte* buffer, nint count);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint write(int fd, byte* buffer, nint count);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int kill(int pid, int sig);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int waitpid(int pid, int* status, int options);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int waitid(int idtype, int id, void* infop, int options);

    [LibraryImport(Libc, EntryPoint = "_exit")]
    internal static partial void _exit(int status);

    [LibraryImport(Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int setenv(string name, string value, int overwrite);

    [LibraryImport(Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int unsetenv(string name);

    [LibraryImport(Libc)]
    internal static partial int posix_spawn(int* pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport(Libc)]
    internal static partial int posix_spawn_file_actions_init(void* fileActions);

    [LibraryImport(Libc)]
    internal static partial int posix_spawn_file_actions_destroy(void* fileActions);

    [LibraryImport(Libc)]
    internal static partial int posix_spawn_file_actions_adddup2(void* fileActions, int fd, int newfd);

    [LibraryImport(Libc)]
    internal static partial int posix_spawn_file_actions_addopen(void* fileActions, int fd, byte* path, int oflag, int mode);

    [LibraryImport(Libc)]
    internal static partial int posix_spawnattr_init(void* attr);

    [LibraryImport(Libc)]
    internal static partial int posix_spawnattr_destroy(void* attr);

    [LibraryImport(Libc)]
    internal static partial int posix_spawnattr_setflags(void* attr, short flags);

    [LibraryImport(Libc)]
    internal static partial int posix_spawnattr_setsigmask(void* attr, void* sigmask);

    [LibraryImport(Libc)]
    internal static partial int posix_spawnattr_setsigdefault(void* attr, void* sigdefault);

    [LibraryImport(Libc)]
    internal static partial int sigemptyset(void* set);

    [LibraryImport(Libc)]
    internal static partial int sigfillset(void* set);

    [LibraryImport(Libc)]
    internal static partial int sigdelset(void* set, int signum);

    internal const int O_RDWR = 2;
    internal const int O_CREAT = 0x40;
    internal const int O_EXCL = 0x80;
    internal const int O_NOFOLLOW = 0x20000;
    internal const int EEXIST = 17;
    internal const int ENOENT = 2;

    [LibraryImport(Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int unlink(string path);
    internal const int O_CLOEXEC = 0x80000;
    internal const uint MFD_CLOEXEC = 1;
    internal const int PROT_READ = 1;
    internal const int PROT_WRITE = 2;
    internal const int MAP_SHARED = 1;
    internal const int MAP_POPULATE = 0x8000;
    internal const int EAGAIN = 11;
    internal const int ETIMEDOUT = 110;
    internal const int FUTEX_WAIT = 0;
    internal const int FUTEX_WAKE = 1;

    [LibraryImport(Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int memfd_create(string name, uint flags);

    [LibraryImport(Libc, SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int open(string path, int flags, int mode);

    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true)]
    internal static partial int open(byte* path, int flags, int mode);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int chdir(byte* path);

    /// <summary>"/proc/PID/" + <paramref name="rest"/> (ASCII) + the number, NUL-terminated. Digits are written by
    /// hand: formatting an int through the runtime initializes culture data, which costs a fresh process 1.5 ms.</summary>
    internal static byte[] ProcPath(int pid, string rest, int number = -1)
    {
        Span<byte> buffer = stackalloc byte[96];
        int n = 0;
        void Text(Span<byte> into, string text, ref int at)
        {
            foreach (char c in text) into[at++] = (byte)c;
        }

        void Digits(Span<byte> into, int value, ref int at)
        {
            Span<byte> reversed = stackalloc byte[10];
            int count = 0;
            do
            {
                reversed[count++] = (byte)('0' + value % 10);
                value /= 10;
            }
            while (value > 0);
            while (count > 0) into[at++] = reversed[--count];
        }

        Text(buffer, "/proc/", ref n);
        Digits(buffer, pid, ref n);
        buffer[n++] = (byte)'/';
        Text(buffer, rest, ref n);
        if (number >= 0) Digits(buffer, number, ref n);
        buffer[n++] = 0;
        return buffer[..n].ToArray();
    }

    /// <summary>A NUL-terminated path for libc. Plain ASCII is copied by a loop: the first call of the runtime's
    /// UTF-8 encoder costs a fresh process 2-3 ms, and a child's first steps open paths and nothing else needs it.</summary>
    internal static byte[] PathBytes(string path)
    {
        var bytes = new byte[path.Length + 1];
        for (int i = 0; i < path.Length; i++)
        {
            char c = path[i];
            if (c >= 0x80) return System.Text.Encoding.UTF8.GetBytes(path + "\0");
            bytes[i] = (byte)c;
        }

        return bytes;
    }

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int ftruncate(int fd, long length);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int fallocate(int fd, int mode, long offset, long length);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int fstat(int fd, byte* stat);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int munmap(void* addr, nuint length);

    // glibc's syscall() is variadic; on x86-64 and arm64 integer and pointer arguments travel in the same registers
    // either way, and its assembly stub does not read %al, so a fixed prototype is sound there.
    [LibraryImport(Libc, SetLastError = true)]
    internal static partial long syscall(long number, int* address, int op, int value, void* timeout, void* address2, int value3);
}

/// <summary>Descriptor, pipe and socket entry points used by <see cref="OsIo"/>.</summary>
internal static unsafe partial class Posix
{
    internal const int EPIPE = 32;
    internal const int ECONNRESET = 104;
    internal const int F_DUPFD_CLOEXEC = 1030;
    internal const short POLLIN = 0x1;
    internal const short POLLOUT = 0x4;
    internal const short POLLRDHUP = 0x2000;
    internal const int SOL_SOCKET = 1;
    internal const int SCM_RIGHTS = 1;
    internal const int SO_PEERCRED = 17;
    internal const int MSG_NOSIGNAL = 0x4000;
    internal const int MSG_DONTWAIT = 0x40;
    internal const int MSG_CMSG_CLOEXEC = 0x40000000;

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int pipe2(int* fds, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int poll(void* fds, ulong count, int timeoutMs);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int socket(int domain, int type, int protocol);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int bind(int fd, void* address, int length);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int listen(int fd, int backlog);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int shutdown(int fd, int how);

    internal const int SHUT_RDWR = 2;

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int accept4(int fd, void* address, int* length, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int connect(int fd, void* address, int length);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint send(int fd, byte* buffer, nint count, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint sendmsg(int fd, void* message, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int epoll_create1(int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int epoll_ctl(int epoll, int op, int fd, void* ev);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int epoll_wait(int epoll, void* events, int maxEvents, int timeoutMs);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint recv(int fd, byte* buffer, nint count, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial nint recvmsg(int fd, void* message, int flags);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int getsockopt(int fd, int level, int name, void* value, int* length);

    [LibraryImport(Libc, SetLastError = true)]
    internal static partial int setsockopt(int fd, int level, int name, void* value, int length);

    [LibraryImport(Libc)]
    internal static partial uint getuid();
}
