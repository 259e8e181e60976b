//! TCP MD5 signatures (RFC 2385), as BGP sessions with a password use them.

use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;

use crate::Error;

/// `TCP_MD5SIG_MAXKEYLEN` from <linux/tcp.h>.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` from <linux/tcp.h>: libc has the option number but not the struct.
/// The address is a `struct __kernel_sockaddr_storage` (128 bytes, pointer-aligned).
#[repr(C, align(8))]
struct TcpMd5Sig {
    addr: [u8; 128],
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MAX_KEY_LEN],
}

/// Sets (or, with an empty `key`, removes) the MD5 key for segments to and from `peer` on a
/// TCP socket: on a listening socket before `accept`, on an outgoing one before `connect`.
/// The socket's family decides how the peer is written: on an IPv6 socket an IPv4 peer is
/// given as its IPv4-mapped address, which the kernel files as an IPv4 key.
///
/// Fails with EINVAL-style [`Error::Invalid`] for a key longer than [`MAX_KEY_LEN`], and
/// with the kernel's errno otherwise (ENOENT: removing a key that was not set; ENOPROTOOPT:
/// a kernel without `CONFIG_TCP_MD5SIG`).
pub fn set_tcp_md5(fd: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> Result<(), Error> {
    let op = || format!("setting TCP MD5 key for {peer}");
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            op(),
            format!("key is {} bytes, at most {MAX_KEY_LEN} allowed", key.len()),
        ));
    }
    let v6_socket = socket_is_v6(fd).map_err(|e| Error::os(op(), e))?;
    let mut sig = TcpMd5Sig {
        addr: [0; 128],
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    let peer_v6 = match peer {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(a) if v6_socket => Some(a.to_ipv6_mapped()),
        IpAddr::V4(_) => None,
    };
    match (peer, peer_v6) {
        (_, Some(a)) => {
            // struct sockaddr_in6: family, port, flowinfo, address, scope id.
            sig.addr[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            sig.addr[8..24].copy_from_slice(&a.octets());
        }
        (IpAddr::V4(a), None) => {
            // struct sockaddr_in: family, port, address.
            sig.addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            sig.addr[4..8].copy_from_slice(&a.octets());
        }
        (IpAddr::V6(_), None) => unreachable!("an IPv6 peer always has an IPv6 address"),
    }
    #[allow(unsafe_code)]
    // SAFETY: `sig` is a live, initialised `struct tcp_md5sig` for the whole call and the
    // length passed is its exact size, so the kernel reads only memory we own; `fd` is a
    // borrowed descriptor that stays open for the call.
    let res = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    Errno::result(res).map(drop).map_err(|e| Error::os(op(), e))
}

/// Whether the socket is AF_INET6.
fn socket_is_v6(fd: BorrowedFd<'_>) -> std::io::Result<bool> {
    let addr = rustix::net::getsockname(fd)?;
    Ok(addr.address_family() == rustix::net::AddressFamily::INET6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    #[test]
    fn struct_matches_the_kernel_layout() {
        assert_eq!(mem::size_of::<TcpMd5Sig>(), 216);
        assert_eq!(mem::offset_of!(TcpMd5Sig, keylen), 130);
        assert_eq!(mem::offset_of!(TcpMd5Sig, key), 136);
    }

    #[test]
    fn keys_are_set_and_removed_and_long_keys_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        set_tcp_md5(l.as_fd(), peer, b"secret").unwrap();
        set_tcp_md5(l.as_fd(), peer, b"").unwrap();
        let e = set_tcp_md5(l.as_fd(), peer, b"").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let e = set_tcp_md5(l.as_fd(), peer, &[b'k'; 81]).unwrap_err();
        assert!(e.to_string().contains("at most 80"), "{e}");
    }

    #[test]
    fn ipv4_peer_on_an_ipv6_socket_is_mapped() {
        let Ok(l) = TcpListener::bind("[::]:0") else {
            eprintln!("skipped: no IPv6 on this host");
            return;
        };
        set_tcp_md5(l.as_fd(), "127.0.0.1".parse().unwrap(), b"secret").unwrap();
        set_tcp_md5(l.as_fd(), "::1".parse().unwrap(), b"secret").unwrap();
    }

    /// Over loopback: matching keys connect, a missing key on one side does not.
    #[test]
    fn signed_segments_only_reach_a_socket_with_the_same_key() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        set_tcp_md5(l.as_fd(), addr.ip(), b"secret").unwrap();
        let connects = |key: Option<&[u8]>| {
            let s = rustix::net::socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            if let Some(key) = key {
                set_tcp_md5(s.as_fd(), addr.ip(), key).unwrap();
            }
            // Non-blocking, bounded by a poll: an unanswered SYN must not hang the test.
            let _ = rustix::net::connect(&s, &addr);
            let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLOUT)];
            let ready = poll(&mut fds, PollTimeout::from(1500u16)).unwrap() > 0;
            (ready && rustix::net::sockopt::socket_error(&s).unwrap().is_ok()).then_some(s)
        };
        let signed = connects(Some(b"secret")).expect("signed connection");
        let (mut accepted, _) = l.accept().unwrap();
        accepted.write_all(b"x").unwrap();
        let mut stream = TcpStream::from(signed);
        stream.set_nonblocking(false).unwrap();
        let mut byte = [0; 1];
        stream.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        assert!(connects(None).is_none(), "an unsigned SYN must be dropped");
        assert!(
            connects(Some(b"wrong")).is_none(),
            "a wrongly signed SYN too"
        );
    }
}
