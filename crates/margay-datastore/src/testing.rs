//! Test fixtures for Margay crates (cargo feature `testing`): a throwaway etcd server and
//! throwaway SQLite URLs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long [`EtcdServer::start`] waits for etcd to report healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 3;

/// Server-side TLS files (PEM) for [`EtcdServer::start_tls`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// CA that client certificates must be signed by.
    pub ca: PathBuf,
    /// Server certificate, valid for IP 127.0.0.1.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A single-member etcd on free loopback ports with its data in a temporary directory.
/// Dropping it kills the process, reaps it and removes the directory.
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    tls: bool,
    // Dropped after `drop` has killed the process.
    dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits (at most ~10 s) until it answers.
    ///
    /// # Panics
    /// When the etcd binary is missing (run `scripts/setup.sh`) or etcd does not come up.
    pub fn start() -> EtcdServer {
        Self::start_with(None, None)
    }

    /// Like [`EtcdServer::start`], also listening on `ip` (an address of the calling thread's
    /// network namespace), for clients in other namespaces; see [`EtcdServer::url_on`].
    pub fn start_on(ip: std::net::IpAddr) -> EtcdServer {
        Self::start_with(None, Some(ip))
    }

    /// Like [`EtcdServer::start`], but clients must speak TLS and present a certificate
    /// signed by `tls.ca`; [`EtcdServer::url`] is then `etcds://…`.
    pub fn start_tls(tls: &ServerTls) -> EtcdServer {
        Self::start_with(Some(tls), None)
    }

    fn start_with(tls: Option<&ServerTls>, extra: Option<std::net::IpAddr>) -> EtcdServer {
        let binary = find_etcd().unwrap_or_else(|| {
            panic!(
                "the etcd binary was found neither at /usr/bin/etcd nor on PATH: run \
                 scripts/setup.sh, which installs it (Margay's etcd tests need a real etcd)"
            )
        });
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            // Ports are picked by binding port 0 and releasing it; another process can grab
            // one in between, hence the retries.
            match Self::try_start(&binary, tls, extra) {
                Ok(server) => return server,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "etcd ({}) did not start after {START_ATTEMPTS} attempts:\n{}",
            binary.display(),
            failures.join("\n---\n")
        );
    }

    fn try_start(
        binary: &Path,
        tls: Option<&ServerTls>,
        extra: Option<std::net::IpAddr>,
    ) -> Result<EtcdServer, String> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        // Health is probed over plain HTTP on the metrics listener, which stays plain when
        // the client port speaks TLS.
        let metrics_port = free_port()?;
        let dir = temp_dir()?;
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("etcd log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("etcd log: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut client_url = format!("{scheme}://127.0.0.1:{client_port}");
        if let Some(ip) = extra {
            client_url.push_str(&format!(",{scheme}://{ip}:{client_port}"));
        }
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(binary);
        if let Some(tls) = tls {
            command
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=margay-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=margay-test={peer_url}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ))
            // A lone member elects itself as soon as its election timer fires: keep it short.
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut server = EtcdServer {
            child,
            client_port,
            tls: tls.is_some(),
            dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}:\n{}",
                    read_log(&log_path)
                ));
            }
            if is_healthy(metrics_port) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                // Dropping `server` kills the process.
                return Err(format!(
                    "etcd not healthy after {STARTUP_TIMEOUT:?}:\n{}",
                    read_log(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The datastore URL for clients reaching the server at `ip` (see [`EtcdServer::start_on`]).
    pub fn url_on(&self, ip: std::net::IpAddr) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{ip}:{}", self.client_port)
    }

    /// The PID of the etcd process (to pause it and see how clients cope with an outage).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The datastore URL, `etcd://127.0.0.1:PORT` (`etcds://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// The client endpoint, `127.0.0.1:PORT` (for talking to etcd directly).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The server's temporary directory (data and `etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Already-exited processes make kill fail; wait still reaps them.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `sqlite://` URL for a database file inside `dir`.
pub fn temp_sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("margay.db").display())
}

fn find_etcd() -> Option<PathBuf> {
    let system = PathBuf::from("/usr/bin/etcd");
    if system.is_file() {
        return Some(system);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("etcd"))
        .find(|path| path.is_file())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// Prefers tmpfs: etcd fsyncs every write, which on a real disk makes tests crawl.
fn temp_dir() -> Result<TempDir, String> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("margay-etcd-")
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::Builder::new()
        .prefix("margay-etcd-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))
}

/// etcd's `/health` answers `{"health":"true"}` once the member has a leader and serves.
fn is_healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains(r#""health":"true""#)
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
