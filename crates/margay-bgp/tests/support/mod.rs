//! What the root tests and the feed benchmark share: namespaces wired with veths, BIRD and
//! GoBGP daemons killed on drop, and speakers running inside a namespace.
#![allow(dead_code)] // each test crate uses its own subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use margay_bgp::sink::NetlinkSink;
use margay_bgp::speaker::{Speaker, SpeakerConfig};
use margay_sys::netlink::{Route, RouteSocket};
use margay_sys::netns::NetNs;
pub use margay_testkit::netns::{run, TestNs};

/// Why the root tests cannot run here, if they cannot.
pub fn missing(tools: &[&str]) -> Option<String> {
    if !margay_sys::process::is_root() {
        return Some("needs root".into());
    }
    tools
        .iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} is not installed"))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// Polls `check` every 50 ms until it holds; false if `timeout` passes first.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_for`], panicking with `what` and `context()` on timeout.
pub fn eventually(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    assert!(
        wait_for(timeout, check),
        "timed out waiting for {what}\n{}",
        context()
    );
}

pub fn netns_path(ns: &TestNs) -> PathBuf {
    Path::new("/var/run/netns").join(ns.name())
}

/// Connects `a` and `b` with a veth (`eth-<n>` on both sides) and gives each end its address.
pub fn link(a: &TestNs, a_addr: &str, b: &TestNs, b_addr: &str, n: usize) {
    let (ea, eb) = (format!("eth{n}a"), format!("eth{n}b"));
    run(&[
        "ip",
        "link",
        "add",
        &ea,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &eb,
        "netns",
        b.name(),
    ]);
    a.ip(&format!("addr add {a_addr} dev {ea}"));
    a.ip(&format!("link set {ea} up"));
    b.ip(&format!("addr add {b_addr} dev {eb}"));
    b.ip(&format!("link set {eb} up"));
}

/// A bridge `br0` with `addr` in `hub`, and each of `nodes` attached to it with its address:
/// one L2 segment, so next hops from any node are directly reachable from the others.
pub fn lan(hub: &TestNs, addr: &str, nodes: &[(&TestNs, &str)]) {
    hub.ip("link add br0 type bridge");
    hub.ip(&format!("addr add {addr} dev br0"));
    hub.ip("link set br0 up");
    for (i, (ns, a)) in nodes.iter().enumerate() {
        let (ea, eb) = (format!("eth{i}"), format!("port{i}"));
        run(&[
            "ip",
            "link",
            "add",
            &ea,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &eb,
            "netns",
            hub.name(),
        ]);
        ns.ip(&format!("addr add {a} dev {ea}"));
        ns.ip(&format!("link set {ea} up"));
        hub.ip(&format!("link set {eb} master br0"));
        hub.ip(&format!("link set {eb} up"));
    }
}

/// `ip -o route show proto P` lines of the namespace (IPv4).
pub fn kernel_routes(ns: &TestNs, proto: &str) -> String {
    run(&["ip", "-n", ns.name(), "-o", "route", "show", "proto", proto])
}

/// Routes of `protocol` in the namespace's main table, counted over netlink (fast enough to
/// poll a table of 100,000).
pub fn count_routes(sock: &mut RouteSocket, protocol: u8) -> usize {
    sock.routes(false)
        .map(|rs| rs.iter().filter(|r| r.protocol == protocol).count())
        .unwrap_or(0)
}

/// A BIRD 2 daemon in a namespace, with its config and control socket in a temp dir; killed
/// on drop.
pub struct Bird {
    child: Child,
    dir: tempfile::TempDir,
    ns: String,
}

impl Bird {
    pub fn start(ns: &TestNs, config: &str) -> Bird {
        let dir = tempfile::Builder::new()
            .prefix("mgybgp-bird")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("bird.conf");
        fs::write(&conf, config).unwrap();
        let sock = dir.path().join("bird.ctl");
        let log = fs::File::create(dir.path().join("bird.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting bird");
        let mut bird = Bird {
            child,
            dir,
            ns: ns.name().to_owned(),
        };
        let up = wait_for(Duration::from_secs(10), || {
            bird.try_birdc(&["show", "status"])
                .is_some_and(|s| s.contains("Daemon is up"))
        });
        assert!(up, "bird did not come up: {}", bird.log());
        assert!(
            bird.child.try_wait().unwrap().is_none(),
            "bird exited: {}",
            bird.log()
        );
        bird
    }

    /// The daemon's own pid (the child is `ip netns exec`, which execs bird).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("bird.log")).unwrap_or_default()
    }

    fn try_birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.path().join("bird.ctl"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        // birdc exits non-zero for answers like "Network not found", which are answers all
        // the same; only a daemon it cannot reach is a failure.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (!text.contains("Unable to connect")).then_some(text)
    }

    pub fn birdc(&self, args: &[&str]) -> String {
        self.try_birdc(args)
            .unwrap_or_else(|| panic!("birdc {args:?} failed; log: {}", self.log()))
    }

    /// Whether `show protocols NAME` says Established.
    pub fn established(&self, protocol: &str) -> bool {
        self.birdc(&["show", "protocols", protocol])
            .contains("Established")
    }

    /// Rewrites the config and makes BIRD reload it.
    pub fn reconfigure(&self, config: &str) {
        fs::write(self.dir.path().join("bird.conf"), config).unwrap();
        let out = self.birdc(&["configure"]);
        assert!(out.contains("Reconfigured"), "birdc configure: {out}");
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A speaker running in a namespace: a thread that entered it runs a current-thread tokio
/// runtime, with a [`NetlinkSink`] programming that namespace. Dropping it shuts the speaker
/// down (if it is still running) and joins the thread.
pub struct NsSpeaker {
    pub speaker: Speaker,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsSpeaker {
    pub fn start(ns: &TestNs, config: SpeakerConfig) -> NsSpeaker {
        let netns = NetNs::open(&netns_path(ns)).unwrap();
        let (tx, rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let result = netns.run(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let sink = NetlinkSink::new(RouteSocket::new().unwrap(), Route::PROTO_MARGAY);
                    let speaker = match Speaker::start(config, sink) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(speaker.clone()));
                    tokio::select! {
                        _ = stop_rx => speaker.shutdown().await,
                        () = speaker.stopped() => {}
                    }
                });
            });
            result.unwrap();
        });
        let speaker = rx
            .recv()
            .expect("speaker thread")
            .unwrap_or_else(|e| panic!("starting the speaker: {e}"));
        NsSpeaker {
            speaker,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` on a runtime of the calling thread (the handle works from any runtime).
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    pub fn established(&self) -> bool {
        let st = self.block_on(self.speaker.status());
        !st.is_empty()
            && st
                .iter()
                .all(|p| p.state == margay_bgp::speaker::State::Established)
    }

    pub fn status_text(&self) -> String {
        format!("{:#?}", self.block_on(self.speaker.status()))
    }

    /// Closes without NOTIFICATION and leaves the kernel routes in place.
    pub fn stop_for_restart(mut self) {
        self.block_on(self.speaker.shutdown_for_restart());
        self.join();
    }

    fn join(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NsSpeaker {
    fn drop(&mut self) {
        self.join();
    }
}

/// A daemon process, killed on drop.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn running(&self) -> bool {
        // try_wait needs &mut; a pid that still has a /proc entry that is not a zombie is up.
        std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))
            .is_ok_and(|s| !s.contains(") Z "))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
