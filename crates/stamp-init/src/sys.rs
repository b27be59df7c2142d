//! The system calls the init needs that `std` does not offer, each a small safe wrapper.
//!
//! Every `unsafe` block below calls one libc function with pointers to live, correctly sized
//! buffers owned by the caller's stack frame (or NUL-terminated `CString`s) and checks its
//! return value; none keeps a pointer beyond the call.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount(2)`: mounts `source` of type `fstype` on `target` with `flags` and `data`.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all four are valid NUL-terminated strings living across the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

/// Remounts the root filesystem read-only (before power-off, so that it is clean).
pub fn remount_root_ro() -> io::Result<()> {
    let root = cstr("/")?;
    // SAFETY: `root` is a valid string; NULL source, type and data are allowed for a remount.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    })
}

/// `sethostname(2)`.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() }
}

/// Powers the machine off (`reboot(RB_POWER_OFF)`); returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: no pointers.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    io::Error::last_os_error()
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_cad() {
    // SAFETY: no pointers.
    unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
}

/// Returns true if and only if file descriptor `fd` is open.
pub fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD takes no pointer.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Makes `fd` a copy of `file`'s descriptor (`dup2(2)`).
pub fn dup_to(file: &impl AsRawFd, fd: libc::c_int) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::dup2(file.as_raw_fd(), fd) })
}

/// The signals the init handles synchronously: blocked, then taken with [`wait_signal`].
pub const SIGNALS: [libc::c_int; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t on our stack.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Blocks [`SIGNALS`] in this process (children get an empty mask from `std::process`).
pub fn block_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })
}

/// Waits up to `secs` seconds for one of [`SIGNALS`]; None on timeout or interruption.
pub fn wait_signal(secs: i64) -> Option<libc::c_int> {
    let set = signal_set();
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `ts` are valid; siginfo is not wanted (NULL is allowed).
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (rc > 0).then_some(rc)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps one ended child without blocking: its pid and how it ended, or None if there is none.
pub fn reap_one() -> Option<(i32, Exit)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    };
    Some((pid, exit))
}

/// Sends `sig` to `pid` (`-1`: every process but PID 1). Errors are ignored: the target may be
/// gone already.
pub fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: no pointers.
    unsafe { libc::kill(pid, sig) };
}

/// Sets the supplementary groups of the calling process. Only async-signal-safe work: meant
/// for a child between fork and exec.
pub fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })
}

/// Loads a kernel module from an open file (`finit_module(2)`) with no parameters.
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    let params = cstr("")?;
    // SAFETY: the fd is open for the call's duration and `params` is a valid string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Binds socket `sock` to interface `ifname` (`SO_BINDTODEVICE`).
pub fn bind_to_device(sock: &impl AsRawFd, ifname: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `ifname`'s bytes.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            ifname.len() as libc::socklen_t,
        )
    })
}

/// Sets `SO_REUSEADDR` on `sock`.
pub fn reuse_addr(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the pointer and length describe `one`.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// A `struct ifreq` (40 bytes on Linux): the name, then a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(ifname: &str) -> io::Result<Self> {
        let mut name = [0u8; libc::IFNAMSIZ];
        if ifname.is_empty() || ifname.len() >= name.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad interface name",
            ));
        }
        name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        Ok(IfReq {
            name,
            data: [0; 24],
        })
    }

    fn with_addr(ifname: &str, addr: Ipv4Addr) -> io::Result<Self> {
        let mut r = IfReq::new(ifname)?;
        r.data[..16].copy_from_slice(&sockaddr_in(addr));
        Ok(r)
    }
}

/// A `struct sockaddr_in` (port 0) as bytes.
fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    b[4..8].copy_from_slice(&addr.octets());
    b
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let b = sockaddr_in(addr);
    let mut sa_data = [0 as libc::c_char; 14];
    for (d, s) in sa_data.iter_mut().zip(&b[2..]) {
        *d = *s as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn ioctl_ifreq(sock: &impl AsRawFd, req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    // SAFETY: `r` is a live, correctly sized `struct ifreq` for these SIOC* requests.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), req as _, r as *mut IfReq) })
}

/// Brings interface `ifname` up (`SIOCSIFFLAGS` with `IFF_UP`).
pub fn if_up(sock: &impl AsRawFd, ifname: &str) -> io::Result<()> {
    let mut r = IfReq::new(ifname)?;
    ioctl_ifreq(sock, libc::SIOCGIFFLAGS, &mut r)?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifreq(sock, libc::SIOCSIFFLAGS, &mut r)
}

/// Sets interface `ifname`'s IPv4 address and netmask.
pub fn if_set_addr(
    sock: &impl AsRawFd,
    ifname: &str,
    addr: Ipv4Addr,
    mask: Ipv4Addr,
) -> io::Result<()> {
    ioctl_ifreq(
        sock,
        libc::SIOCSIFADDR,
        &mut IfReq::with_addr(ifname, addr)?,
    )?;
    ioctl_ifreq(
        sock,
        libc::SIOCSIFNETMASK,
        &mut IfReq::with_addr(ifname, mask)?,
    )
}

/// Sets interface `ifname`'s MTU.
pub fn if_set_mtu(sock: &impl AsRawFd, ifname: &str, mtu: u16) -> io::Result<()> {
    let mut r = IfReq::new(ifname)?;
    r.data[..4].copy_from_slice(&i32::from(mtu).to_ne_bytes());
    ioctl_ifreq(sock, libc::SIOCSIFMTU, &mut r)
}

/// Adds an IPv4 route on `ifname` (`SIOCADDRT`): to `dst`/`mask` via `gateway` (or directly
/// when None).
pub fn add_route(
    sock: &impl AsRawFd,
    ifname: &str,
    dst: Ipv4Addr,
    mask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let dev = cstr(ifname)?;
    let mut flags = libc::RTF_UP;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    if mask == Ipv4Addr::BROADCAST {
        flags |= libc::RTF_HOST;
    }
    let mut rt = libc::rtentry {
        rt_pad1: 0,
        rt_dst: sockaddr(dst),
        rt_gateway: sockaddr(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr(mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: `rt` is a valid rtentry whose `rt_dev` points to `dev`, alive across the call;
    // the kernel only reads it.
    check(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut libc::rtentry,
        )
    })
}

/// Makes `cmd`'s child unblock every signal (std keeps the parent's mask, and the init blocks
/// [`SIGNALS`]) and drop to `uid`/`gid` with supplementary `groups` just before exec (in that
/// order: groups and gid need root).
pub fn set_credentials(cmd: &mut std::process::Command, uid: u32, gid: u32, groups: Vec<u32>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child and only makes async-signal-safe system
    // calls (sigprocmask, setgroups, setgid, setuid) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))?;
            setgroups(&groups)?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
}

/// A new pseudo-terminal of `rows` × `cols`: (master, slave).
pub fn openpty(rows: u16, cols: u16) -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out pointers are valid; name and termios may be NULL.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    })
}

/// Sets the window size of the terminal `fd`.
pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: `ws` is a valid winsize for TIOCSWINSZ.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
}

/// Makes `cmd`'s child a session leader with its stdin (a terminal) as its controlling
/// terminal.
pub fn controlling_terminal(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))
        });
    }
}

/// Makes `fd` non-blocking (for every descriptor that shares its open file).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: no pointers.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(flags)?;
    // SAFETY: no pointers.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

/// `poll(2)` on one descriptor: the events that happened (0 on timeout); `timeout_ms` -1
/// waits for ever.
pub fn poll(
    fd: &impl AsRawFd,
    events: libc::c_short,
    timeout_ms: libc::c_int,
) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(if rc == 0 { 0 } else { p.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A vsock stream socket listening on `port` of any CID (the agent's port under Firecracker,
/// or QEMU with a vhost-user vsock device).
pub fn vsock_listen(port: u32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: no pointers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a new descriptor this function owns.
    let sock = unsafe { std::fs::File::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zero is a valid value of every field.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: the pointer and length describe `addr`.
    check(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: no pointers.
    check(unsafe { libc::listen(sock.as_raw_fd(), 4) })?;
    Ok(sock)
}

/// Accepts a connection on listening socket `sock`, waiting for one; the connection is
/// non-blocking.
pub fn accept(sock: &impl AsRawFd) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    loop {
        // SAFETY: null address pointers are allowed (the peer's address is not wanted).
        let fd = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` is a new descriptor the caller owns.
            return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
