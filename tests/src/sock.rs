//! Socket options the tests need, through libc: socket cookie, `tcp_info`, abortive close, SYN retries, and a
//! connect from an explicitly bound local address (so the local port is known even when the connect fails).

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{SockaddrStorage, bind, connect, getsockname};

/// `SO_COOKIE` (asm-generic/socket.h; not exported by libc for every Linux target).
const SO_COOKIE: libc::c_int = 57;

/// TCP states as in `tcp_info.tcpi_state`.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;

fn getsockopt_raw<T: Copy>(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: the option types used here are plain C structs / integers; all-zero is a valid value.
    let mut value: T = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and both outlive the call.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut value as *mut T).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn setsockopt_raw<T>(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is readable for size_of::<T>() bytes during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel socket cookie (what the agent reports as `cookie`).
pub fn socket_cookie(fd: &impl AsRawFd) -> u64 {
    getsockopt_raw::<u64>(fd, libc::SOL_SOCKET, SO_COOKIE).expect("getsockopt(SO_COOKIE)")
}

/// `getsockopt(TCP_INFO)`.
pub fn tcp_info(fd: &impl AsRawFd) -> libc::tcp_info {
    getsockopt_raw::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO).expect("getsockopt(TCP_INFO)")
}

/// The TCP state (`tcpi_state`) of a socket.
pub fn tcp_state(fd: &impl AsRawFd) -> u8 {
    tcp_info(fd).tcpi_state
}

/// `SO_LINGER {on, 0}`: `close()` then aborts the connection with a RST.
pub fn set_linger_zero(fd: &impl AsRawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    setsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger).expect("setsockopt(SO_LINGER)");
}

/// `TCP_SYNCNT`: how many SYN retransmissions before connect() times out.
pub fn set_syn_count(fd: &impl AsRawFd, count: libc::c_int) {
    setsockopt_raw(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, &count).expect("setsockopt(TCP_SYNCNT)");
}

/// Creates a TCP socket bound to `local` (port 0 = kernel-chosen), optionally sets `TCP_SYNCNT`, and connects to
/// `remote`. Returns the bound local address (known before connecting), the socket cookie, and the connect
/// result.
pub fn tcp_connect_bound(
    local: SocketAddr,
    remote: SocketAddr,
    syn_count: Option<libc::c_int>,
) -> (SocketAddr, u64, io::Result<TcpStream>) {
    let domain = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket(): {}", io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(n) = syn_count {
        set_syn_count(&fd, n);
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local)).unwrap_or_else(|e| panic!("bind({local}): {e}"));
    let bound: SockaddrStorage = getsockname(fd.as_raw_fd()).expect("getsockname");
    let bound = storage_to_std(&bound).expect("bound address is IPv4/IPv6");
    let cookie = socket_cookie(&fd);
    let result = connect(fd.as_raw_fd(), &SockaddrStorage::from(remote))
        .map(|()| TcpStream::from(fd))
        .map_err(io::Error::from);
    (bound, cookie, result)
}

fn storage_to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = s.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    None
}
