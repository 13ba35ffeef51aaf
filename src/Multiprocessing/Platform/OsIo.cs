using System.ComponentModel;
using System.Runtime.InteropServices;
using System.Text;

namespace Multiprocessing.Platform;

/// <summary>
/// The seam for byte streams between processes: pipes, socket pairs, blocking reads and writes with deadlines, and
/// passing a descriptor to another process over a Unix socket (SCM_RIGHTS). Only this file knows these are Linux
/// calls; the abstract socket namespace it uses for descriptor passing has no files to leak.
/// </summary>
internal static unsafe class OsIo
{
    /// <summary>A connected pair of stream sockets: both ends read and write.</summary>
    /// <exception cref="Win32Exception">The kernel refused (descriptor limit).</exception>
    internal static (int A, int B) SocketPair()
    {
        int* fds = stackalloc int[2];
        if (Posix.socketpair(Posix.AF_UNIX, Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0, fds) != 0)
            throw new Win32Exception(Marshal.GetLastPInvokeError(), "socketpair failed");

        // Bigger buffers mean fewer sleeps and wake-ups per large message; the kernel caps what it grants.
        int size = 4 << 20;
        for (int i = 0; i < 2; i++)
        {
            Posix.setsockopt(fds[i], Posix.SOL_SOCKET, 7 /* SO_SNDBUF */, &size, sizeof(int));
            Posix.setsockopt(fds[i], Posix.SOL_SOCKET, 8 /* SO_RCVBUF */, &size, sizeof(int));
        }

        return (fds[0], fds[1]);
    }

    /// <summary>A one-way pipe.</summary>
    /// <exception cref="Win32Exception">The kernel refused (descriptor limit).</exception>
    internal static (int Read, int Write) Pipe()
    {
        int* fds = stackalloc int[2];
        if (Posix.pipe2(fds, Posix.O_CLOEXEC) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "pipe2 failed");

        // 64 KiB by default: a megabyte message would cost sixteen sleeps and wake-ups each way. A refusal (over
        // the system's pipe-max-size) leaves the default, which still works.
        Posix.fcntl(fds[1], 1031 /* F_SETPIPE_SZ */, 1 << 20);
        return (fds[0], fds[1]);
    }

    /// <summary>A second descriptor for the same open file, closed on exec.</summary>
    /// <exception cref="Win32Exception">The kernel refused.</exception>
    internal static int Dup(int fd)
    {
        int own = Posix.fcntl(fd, Posix.F_DUPFD_CLOEXEC, 0);
        if (own < 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "duplicating a descriptor failed");
        return own;
    }

    internal static void Close(int fd) => Posix.close(fd);

    /// <summary>Reads what is there, at most <paramref name="buffer"/>'s length; 0 means the other end closed.
    /// A reset connection counts as closed.</summary>
    /// <exception cref="IOException">The read failed.</exception>
    internal static int Read(int fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = Posix.read(fd, p, buffer.Length);
                if (n >= 0) return (int)n;
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR) continue;
                if (errno == Posix.ECONNRESET) return 0;

                // A descriptor someone else made non-blocking (a socket the runtime created): wait, then retry.
                if (errno == Posix.EAGAIN)
                {
                    WaitReadable(fd, -1);
                    continue;
                }

                throw new IOException($"reading from a connection failed: {new Win32Exception(errno).Message}");
            }
        }
    }

    /// <summary>Writes what a socket's buffer takes right now without waiting: the byte count, 0 when it is full.</summary>
    /// <exception cref="IOException">The other end is closed, or the write failed.</exception>
    internal static int TrySendNow(int socket, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            while (true)
            {
                nint n = Posix.send(socket, p, data.Length, Posix.MSG_DONTWAIT | Posix.MSG_NOSIGNAL);
                if (n >= 0) return (int)n;
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR) continue;
                if (errno == Posix.EAGAIN) return 0;
                if (errno is Posix.EPIPE or Posix.ECONNRESET) throw new IOException("the other end of the connection is closed (broken pipe)");
                throw new IOException($"writing to a connection failed: {new Win32Exception(errno).Message}");
            }
        }
    }

    /// <summary>Reads what a socket holds right now without waiting: -1 when it holds nothing yet, 0 when the other
    /// end closed (or reset), else the byte count.</summary>
    /// <exception cref="IOException">The read failed.</exception>
    internal static int TryReceiveNow(int socket, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = Posix.recv(socket, p, buffer.Length, Posix.MSG_DONTWAIT);
                if (n >= 0) return (int)n;
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR) continue;
                if (errno == Posix.EAGAIN) return -1;
                if (errno == Posix.ECONNRESET) return 0;
                throw new IOException($"reading from a connection failed: {new Win32Exception(errno).Message}");
            }
        }
    }

    /// <summary>Writes every byte, however many calls that takes.</summary>
    /// <exception cref="IOException">The other end is closed (Python's BrokenPipeError) or the write failed.</exception>
    internal static void WriteAll(int fd, ReadOnlySpan<byte> data, bool socket)
    {
        fixed (byte* start = data)
        {
            byte* p = start;
            nint left = data.Length;
            while (left > 0)
            {
                // send() with MSG_NOSIGNAL on sockets: a closed peer is an error here, never a signal.
                nint n = socket ? Posix.send(fd, p, left, Posix.MSG_NOSIGNAL) : Posix.write(fd, p, left);
                if (n > 0)
                {
                    p += n;
                    left -= n;
                    continue;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR) continue;
                if (errno == Posix.EAGAIN)
                {
                    WaitWritable(fd);
                    continue;
                }

                if (errno is Posix.EPIPE or Posix.ECONNRESET) throw new IOException("the other end of the connection is closed (broken pipe)");
                throw new IOException($"writing to a connection failed: {new Win32Exception(errno).Message}");
            }
        }
    }

    /// <summary>Waits until a read would not block (data, or the other end closed).</summary>
    /// <param name="fd">The descriptor.</param>
    /// <param name="timeoutMs">Milliseconds; -1 waits forever, 0 only looks.</param>
    /// <returns>False on timeout.</returns>
    internal static bool WaitReadable(int fd, int timeoutMs) => PollOne(fd, Posix.POLLIN, timeoutMs);

    /// <summary>
    /// Sleeps until a descriptor is ready for what is wanted (data, room to write) or hangs up, on its own epoll
    /// instance in one-shot mode: each wake disarms it, and <see cref="ReadinessWatch.Want"/> re-arms it. Unlike a
    /// blocking read, a watch can leave out readability while another thread reads the descriptor, so the sleeper is
    /// not woken for data it will not read. Not thread-safe: callers serialise <see cref="Want"/> with disposal.
    /// </summary>
    internal sealed class ReadinessWatch : IDisposable
    {
        private const int EpollCloexec = 0x80000;
        private const int CtlAdd = 1;
        private const int CtlMod = 3;
        private const uint EpollIn = 0x1;
        private const uint EpollOut = 0x4;
        private const uint EpollOneShot = 1u << 30;

        private readonly int _epoll;
        private readonly int _fd;

        /// <summary>Watches <paramref name="fd"/>, armed.</summary>
        /// <exception cref="Win32Exception">The kernel refused (descriptor limit).</exception>
        internal ReadinessWatch(int fd)
        {
            _fd = fd;
            _epoll = Posix.epoll_create1(EpollCloexec);
            if (_epoll < 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "epoll_create1 failed");
            Control(CtlAdd, EpollIn | EpollOneShot);
        }

        /// <summary>Wakes the next <see cref="Wait"/> once the descriptor is readable, if <paramref name="readable"/>,
        /// or has room to write, if <paramref name="writable"/>, or at once if it already is; a hang-up always wakes it.</summary>
        /// <exception cref="Win32Exception">The kernel refused.</exception>
        internal void Want(bool readable, bool writable) =>
            Control(CtlMod, (readable ? EpollIn : 0) | (writable ? EpollOut : 0) | EpollOneShot);

        /// <summary>Sleeps until the descriptor is ready for what was wanted, or hung up; the wake disarms it.</summary>
        /// <exception cref="Win32Exception">The wait failed.</exception>
        internal void Wait()
        {
            // struct epoll_event is 12 bytes packed on x86-64 and 16 elsewhere; room for either.
            long* events = stackalloc long[2];
            while (Posix.epoll_wait(_epoll, events, 1, -1) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != Posix.EINTR) throw new Win32Exception(errno, "epoll_wait failed");
            }
        }

        public void Dispose() => Posix.close(_epoll);

        private void Control(int op, uint events)
        {
            long* ev = stackalloc long[2];
            ev[0] = 0;
            ev[1] = 0;
            *(uint*)ev = events;
            if (Posix.epoll_ctl(_epoll, op, _fd, ev) != 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "epoll_ctl failed");
        }
    }

    /// <summary>Blocks until the other end of a socket has closed, without reading: data that arrives meanwhile
    /// stays for the descriptor's reader (POLLRDHUP; hang-up and errors are always reported).</summary>
    /// <param name="fd">A stream socket.</param>
    internal static void WaitForHangUp(int fd) => PollOne(fd, Posix.POLLRDHUP, -1);

    private static void WaitWritable(int fd) => PollOne(fd, Posix.POLLOUT, -1);

    private static bool PollOne(int fd, short events, int timeoutMs)
    {
        // struct pollfd { int fd; short events; short revents; }
        int* pfd = stackalloc int[2];
        while (true)
        {
            pfd[0] = fd;
            pfd[1] = (ushort)events;
            int rc = Posix.poll(pfd, 1, timeoutMs);
            if (rc > 0) return true;
            if (rc == 0) return false;
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Posix.EINTR) throw new IOException($"poll failed: {new Win32Exception(errno).Message}");
        }
    }

    /// <summary>Whether <paramref name="fd"/> is a socket (send with MSG_NOSIGNAL) rather than a pipe.</summary>
    internal static bool IsSocket(int fd)
    {
        byte* stat = stackalloc byte[256];
        if (Posix.fstat(fd, stat) != 0) return false;

        // st_mode sits at 24 in the x86-64 struct stat and at 16 in the generic (arm64) one.
        uint mode = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? *(uint*)(stat + 24) : *(uint*)(stat + 16);
        return (mode & 0xF000) == 0xC000;
    }

    // ---- descriptor passing ----

    /// <summary>Listens on an abstract Unix socket: a name with no file, gone when the process is.</summary>
    /// <exception cref="Win32Exception">The kernel refused.</exception>
    internal static int ListenAbstract(string name)
    {
        int fd = Posix.socket(Posix.AF_UNIX, Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "socket failed");
        byte* address = stackalloc byte[110];
        int length = AbstractAddress(name, address);
        if (Posix.bind(fd, address, length) != 0 || Posix.listen(fd, 64) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            Posix.close(fd);
            throw new Win32Exception(errno, "listening for descriptor requests failed");
        }

        return fd;
    }

    /// <summary>Wakes a thread blocked in <see cref="Accept"/> on this listening socket, which then fails; the
    /// descriptor stays open for that thread to close.</summary>
    internal static void StopListening(int listenFd)
    {
        if (Posix.shutdown(listenFd, Posix.SHUT_RDWR) != 0)
            throw new Win32Exception(Marshal.GetLastPInvokeError(), "shutdown of a listening socket failed");
    }

    /// <summary>Accepts one connection; returns it with the peer's user id.</summary>
    /// <exception cref="IOException">The listening socket was closed or failed.</exception>
    internal static (int Fd, uint Uid) Accept(int listenFd)
    {
        while (true)
        {
            int fd = Posix.accept4(listenFd, null, null, Posix.SOCK_CLOEXEC);
            if (fd < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR) continue;
                throw new IOException($"accept failed: {new Win32Exception(errno).Message}");
            }

            // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
            int* cred = stackalloc int[3];
            int length = 12;
            uint uid = Posix.getsockopt(fd, Posix.SOL_SOCKET, Posix.SO_PEERCRED, cred, &length) == 0 ? (uint)cred[1] : uint.MaxValue;
            return (fd, uid);
        }
    }

    internal static uint Uid => Posix.getuid();

    /// <summary>Connects to an abstract Unix socket; -1 when nobody listens there (the process has exited).</summary>
    internal static int ConnectAbstract(string name)
    {
        int fd = Posix.socket(Posix.AF_UNIX, Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new Win32Exception(Marshal.GetLastPInvokeError(), "socket failed");
        byte* address = stackalloc byte[110];
        int length = AbstractAddress(name, address);
        while (Posix.connect(fd, address, length) != 0)
        {
            if (Marshal.GetLastPInvokeError() == Posix.EINTR) continue;
            Posix.close(fd);
            return -1;
        }

        return fd;
    }

    /// <summary>Sends one status byte and, unless <paramref name="fd"/> is -1, the descriptor with it.</summary>
    internal static void SendDescriptor(int socket, byte status, int fd)
    {
        byte* control = stackalloc byte[24];
        new Span<byte>(control, 24).Clear();
        var iov = stackalloc nint[2];
        iov[0] = (nint)(&status);
        iov[1] = 1;
        var msg = stackalloc byte[56];
        new Span<byte>(msg, 56).Clear();
        *(nint*)(msg + 16) = (nint)iov;
        *(long*)(msg + 24) = 1;
        if (fd >= 0)
        {
            // struct cmsghdr { size_t len; int level; int type; } then the int: CMSG_LEN(4) = 20, CMSG_SPACE(4) = 24.
            *(long*)control = 20;
            *(int*)(control + 8) = Posix.SOL_SOCKET;
            *(int*)(control + 12) = Posix.SCM_RIGHTS;
            *(int*)(control + 16) = fd;
            *(nint*)(msg + 32) = (nint)control;
            *(long*)(msg + 40) = 24;
        }

        while (Posix.sendmsg(socket, msg, Posix.MSG_NOSIGNAL) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Posix.EINTR) throw new IOException($"passing a descriptor failed: {new Win32Exception(errno).Message}");
        }
    }

    /// <summary>Receives a status byte and the descriptor that came with it (-1 if none).</summary>
    internal static (byte Status, int Fd) ReceiveDescriptor(int socket)
    {
        byte status = 0;
        byte* control = stackalloc byte[64];
        new Span<byte>(control, 64).Clear();
        var iov = stackalloc nint[2];
        iov[0] = (nint)(&status);
        iov[1] = 1;
        var msg = stackalloc byte[56];
        new Span<byte>(msg, 56).Clear();
        *(nint*)(msg + 16) = (nint)iov;
        *(long*)(msg + 24) = 1;
        *(nint*)(msg + 32) = (nint)control;
        *(long*)(msg + 40) = 64;
        nint n;
        while ((n = Posix.recvmsg(socket, msg, Posix.MSG_CMSG_CLOEXEC)) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Posix.EINTR) throw new IOException($"receiving a descriptor failed: {new Win32Exception(errno).Message}");
        }

        if (n == 0) return (0, -1);
        int fd = -1;
        if (*(long*)(msg + 40) >= 20 && *(int*)(control + 8) == Posix.SOL_SOCKET && *(int*)(control + 12) == Posix.SCM_RIGHTS)
            fd = *(int*)(control + 16);
        return (status, fd);
    }

    private static int AbstractAddress(string name, byte* address)
    {
        // struct sockaddr_un { sa_family_t family; char path[108]; }, abstract when path[0] is NUL.
        *(ushort*)address = Posix.AF_UNIX;
        address[2] = 0;
        int n = Encoding.ASCII.GetBytes(name, new Span<byte>(address + 3, 100));
        return 3 + n;
    }
}
