//! The pod's server (`margay lab serve`): answers on every TCP and UDP port it is given with
//! its own name, so a probe knows it reached that very pod and not some other one.
//!
//! Plain blocking `std::net` with one thread per socket: a lab pod serves a handful of ports
//! and a few connections per probe, and tiny beats clever here.

use std::convert::Infallible;
use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{mpsc, Arc};
use std::thread;

use socket2::Socket;

/// `socket()`'s answer for an address family the kernel was built without.
const EAFNOSUPPORT: i32 = rustix::io::Errno::AFNOSUPPORT.raw_os_error();

use crate::probe::{Protocol, Transport};

/// What `margay lab serve` was asked to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The pod's id, `NS/POD`: every answer is this line.
    pub name: String,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// Binding or serving failed.
///
/// `Display` is one complete line including the cause (the OS error is not a `source()`, so
/// error chains do not print it twice).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {protocol} port {port} on {ip}: {error}")]
    Bind {
        protocol: Protocol,
        port: u16,
        ip: IpAddr,
        error: io::Error,
    },
    #[error("serving {protocol} port {port}: {error}")]
    Serve {
        protocol: Protocol,
        port: u16,
        error: io::Error,
    },
    #[error("starting a thread for {protocol} port {port}: {error}")]
    Thread {
        protocol: Protocol,
        port: u16,
        error: io::Error,
    },
}

/// Every port bound, not yet served: binding first lets the caller report "ready" only once
/// all ports accept, and keeps the sockets in the namespace of the thread that bound them.
#[derive(Debug)]
pub struct Server {
    name: Arc<str>,
    sockets: Vec<Bound>,
}

#[derive(Debug)]
enum Bound {
    Tcp(u16, TcpListener),
    Udp(u16, UdpSocket),
}

/// Binds every TCP and UDP port on `0.0.0.0` and `[::]` (IPv6-only, so the two never clash).
/// On a kernel without IPv6 it serves IPv4 alone; any other failure is an error.
pub fn bind(opts: &ServeOptions) -> Result<Server, ServeError> {
    let mut sockets = Vec::new();
    for (transport, ports) in [(Transport::Tcp, &opts.tcp), (Transport::Udp, &opts.udp)] {
        let protocol = transport.protocol();
        for &port in ports {
            for ip in [
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ] {
                let bind_error = |error| ServeError::Bind {
                    protocol,
                    port,
                    ip,
                    error,
                };
                let socket = match open(transport, ip) {
                    Ok(socket) => socket,
                    // A kernel without IPv6 (ipv6.disable=1): serve IPv4 alone. (A namespace
                    // with IPv6 merely disabled by sysctl still binds `::`.)
                    Err(e) if ip.is_ipv6() && e.raw_os_error() == Some(EAFNOSUPPORT) => continue,
                    Err(error) => return Err(bind_error(error)),
                };
                bind_one(&socket, transport, SocketAddr::new(ip, port)).map_err(bind_error)?;
                sockets.push(match transport {
                    Transport::Tcp => Bound::Tcp(port, socket.into()),
                    Transport::Udp => Bound::Udp(port, socket.into()),
                });
            }
        }
    }
    Ok(Server {
        name: opts.name.as_str().into(),
        sockets,
    })
}

/// A blocking socket of `transport` in `ip`'s family.
fn open(transport: Transport, ip: IpAddr) -> io::Result<Socket> {
    let socket = transport.socket(ip)?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn bind_one(socket: &Socket, transport: Transport, addr: SocketAddr) -> io::Result<()> {
    if transport == Transport::Tcp {
        // A restarted server must not wait out the TIME_WAIT of its last connections.
        socket.set_reuse_address(true)?;
    }
    socket.bind(&addr.into())?;
    if transport == Transport::Tcp {
        socket.listen(128)?;
    }
    Ok(())
}

impl Server {
    /// Serves forever, one thread per socket; returns only the first error of any of them.
    /// A server with no ports just waits.
    pub fn run(self) -> Result<Infallible, ServeError> {
        let (failed, first_failure) = mpsc::channel();
        for socket in self.sockets {
            let (protocol, port) = match &socket {
                Bound::Tcp(port, _) => (Protocol::Tcp, *port),
                Bound::Udp(port, _) => (Protocol::Udp, *port),
            };
            let name = Arc::clone(&self.name);
            let failed = failed.clone();
            thread::Builder::new()
                .name(format!("serve-{protocol}-{port}"))
                .spawn(move || {
                    let error = match socket {
                        Bound::Tcp(_, listener) => serve_tcp(&listener, &name),
                        Bound::Udp(_, socket) => serve_udp(&socket, &name),
                    };
                    // The receiver only goes away once run() has returned an earlier error.
                    let _ = failed.send(ServeError::Serve {
                        protocol,
                        port,
                        error,
                    });
                })
                .map_err(|error| ServeError::Thread {
                    protocol,
                    port,
                    error,
                })?;
        }
        // `failed` is still held here, so the channel never closes and this waits for ever
        // unless a thread reports.
        Err(first_failure
            .recv()
            .expect("run() holds a sender, so the channel stays open"))
    }
}

/// Accepts, writes the name, closes; returns the error that stopped it.
fn serve_tcp(listener: &TcpListener, name: &str) -> io::Error {
    let line = format!("{name}\n");
    loop {
        match listener.accept() {
            // The prober may already be gone (its deadline passed): nothing to do about it.
            Ok((mut stream, _)) => drop(stream.write_all(line.as_bytes())),
            // The client reset the connection before it was accepted.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                ) => {}
            Err(e) => return e,
        }
    }
}

/// Answers every datagram with the name; returns the error that stopped it.
fn serve_udp(socket: &UdpSocket, name: &str) -> io::Error {
    let line = format!("{name}\n");
    let mut buf = [0; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            // A sender that cannot be answered (gone, unreachable) is the prober's problem.
            Ok((_, from)) => drop(socket.send_to(line.as_bytes(), from)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::time::Duration;

    fn opts(name: &str, tcp: &[u16], udp: &[u16]) -> ServeOptions {
        ServeOptions {
            name: name.into(),
            tcp: tcp.to_vec(),
            udp: udp.to_vec(),
        }
    }

    #[test]
    fn a_busy_ipv4_port_is_an_error_naming_port_and_protocol() {
        // Holding 127.0.0.1:P makes 0.0.0.0:P unavailable (no SO_REUSEADDR on UDP).
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let e = bind(&opts("x/a", &[], &[port])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("binding UDP port {port} on 0.0.0.0: ")),
            "{e}"
        );
        assert!(
            matches!(e, ServeError::Bind { error, .. } if error.kind() == ErrorKind::AddrInUse)
        );
    }

    #[test]
    fn answers_with_its_name_over_tcp_and_udp() {
        // A free port: the kernel's pick for a socket we then close (free for both protocols
        // with overwhelming likelihood).
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = bind(&opts("ns/pod", &[port], &[port])).unwrap();
        thread::spawn(move || server.run());

        let mut line = String::new();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        BufReader::new(stream).read_line(&mut line).unwrap();
        assert_eq!(line, "ns/pod\n");

        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.connect(("127.0.0.1", port)).unwrap();
        client.send(b"?").unwrap();
        let mut buf = [0; 64];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ns/pod\n");

        // IPv6 too, when this host has it.
        if let Ok(stream) = TcpStream::connect(("::1", port)) {
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            assert_eq!(line, "ns/pod\n");
        }
    }
}
