//! A throwaway containerd for tests that prove a CNI chain end to end.
//!
//! Everything lives in one temp dir: config, socket, root, state, log, ctr's IO
//! FIFOs, the test image and the CNI state dir. containerd runs in a private mount
//! namespace with that dir's `run/` bound over `/run`, because containerd 1.6 puts
//! shim sockets (`/run/containerd/s`) and runc state (`/run/containerd/runc`) there
//! whatever its config says; as a bonus the rootfs mounts the shims make stay out
//! of the host's mount table. Dropping a [`Containerd`] tears all of it down, also
//! when the test panics.
//!
//! CNI: `ctr run --cni` (containerd 1.6) loads the first config in `/etc/cni/net.d`
//! and plugins from `/opt/cni/bin` (go-cni defaults, no ctr flag changes them), and
//! libcni caches results in `/var/lib/cni`. Each `ctr run` therefore runs in its own
//! private mount namespace with the test's dirs bound over those three paths.
//!
//! DEL: in 1.6 only a *foreground* `ctr run` calls CNI DEL, when its task exits
//! (the deferred `network.Remove` in `cmd/ctr/commands/run/run.go`; the binary has
//! that path's "network review" error string and no CNI metadata for `ctr task rm`,
//! which came in 1.7). A `ctr run -d --cni` container is never DELeted. So every
//! container is a foreground `ctr run --cni --rm` child process, and
//! [`Containerd::remove`] kills the task and waits for that child: once it has
//! exited, DEL has run and the container is gone.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The image every container runs: busybox-static and a few applet links.
const IMAGE: &str = "localhost/margay-test:busybox";
const APPLETS: &[&str] = &[
    "sh", "ping", "ip", "sleep", "cat", "ifconfig", "route", "nc",
];
const BUSYBOX: &str = "/bin/busybox";

/// Where `ctr run --cni` and the CNI plugins it runs look; see the module doc.
const HOST_CNI_CONF: &str = "/etc/cni/net.d";
const HOST_CNI_BIN: &str = "/opt/cni/bin";
const HOST_CNI_STATE: &str = "/var/lib/cni";
/// ptp (and most chains) switch forwarding on; the host gets its value back.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

const START_TIMEOUT: Duration = Duration::from_secs(10);
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A CNI config dir and plugin bin dir, as `install-cni` would fill them.
pub struct CniDirs {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The network namespace that plays the node: ctr (and so every plugin) runs in it, so
    /// host-side veths and routes stay off the real host.
    pub node_netns: Option<PathBuf>,
}

pub struct Containerd {
    dir: TempDir,
    namespace: String,
    snapshotter: String,
    daemon: Child,
    /// Foreground `ctr run` children by container name.
    containers: Mutex<HashMap<String, Child>>,
    execs: AtomicU64,
    _host: HostState,
}

/// A container started by [`Containerd::run_container`].
pub struct RunningContainer<'a> {
    ctrd: &'a Containerd,
    name: String,
}

impl Containerd {
    /// Why this machine cannot run the harness, if it cannot.
    pub fn unavailable() -> Option<String> {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next());
        if uid != Some("0") {
            return Some("containerd tests need root".into());
        }
        let missing: Vec<&str> = [
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "kill",
            "runc",
            "unshare",
            "mount",
            "umount",
        ]
        .into_iter()
        .filter(|b| !on_path(b))
        .collect();
        if !missing.is_empty() {
            return Some(format!("not on PATH: {}", missing.join(", ")));
        }
        if !Path::new(BUSYBOX).exists() {
            return Some(format!("{BUSYBOX} missing (busybox-static)"));
        }
        None
    }

    /// Starts containerd in a fresh temp dir and imports [`IMAGE`] into it.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("margay-ctrd-")
            .tempdir()
            .expect("temp dir");
        let p = dir.path();
        for sub in ["root", "state", "run", "tmp", "opt", "fifo", "cni-state"] {
            fs::create_dir(p.join(sub)).expect("create containerd dirs");
        }
        fs::write(p.join("config.toml"), config_toml(p)).expect("write config.toml");
        let host = HostState::acquire();
        let log = File::create(p.join("containerd.log")).expect("containerd.log");
        let daemon = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" /run && exec containerd --config "$2""#)
            .arg("sh")
            .arg(p.join("run"))
            .arg(p.join("config.toml"))
            .env("TMPDIR", p.join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut ctrd = Containerd {
            namespace: format!("margay-test-{}-{}", std::process::id(), unique()),
            dir,
            snapshotter: String::new(),
            daemon,
            containers: Mutex::default(),
            execs: AtomicU64::new(0),
            _host: host,
        };
        ctrd.wait_ready();
        ctrd.snapshotter = ctrd.pick_snapshotter();
        ctrd.import_image();
        ctrd
    }

    /// The temp dir everything lives in; tests may put their own files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the CNI plugins see as `/var/lib/cni` (host-local keeps its
    /// reservations in `networks/<network>/`).
    pub fn cni_state_dir(&self) -> PathBuf {
        self.dir().join("cni-state")
    }

    /// Panics with `msg` and the tail of containerd's log.
    pub fn fail(&self, msg: impl Display) -> ! {
        let log = tail(&self.dir().join("containerd.log"), 40);
        panic!("{msg}\n--- containerd.log (tail) ---\n{log}");
    }

    /// Runs `args` in a new container `name` attached to the CNI chain in `cni`,
    /// and returns once CNI ADD has succeeded and the task is running.
    pub fn run_container(&self, name: &str, cni: &CniDirs, args: &[&str]) -> RunningContainer<'_> {
        let log_path = self.ctr_log(name);
        let log = File::create(&log_path).expect("ctr run log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(concat!(
                r#"mount --bind "$1" "$2" && mount --bind "$3" "$4" && "#,
                r#"mount --bind "$5" "$6" && shift 6 && exec "$@""#
            ))
            .arg("sh")
            .arg(&cni.conf_dir)
            .arg(HOST_CNI_CONF)
            .arg(&cni.bin_dir)
            .arg(HOST_CNI_BIN)
            .arg(self.cni_state_dir())
            .arg(HOST_CNI_STATE)
            .args(
                cni.node_netns
                    .iter()
                    .flat_map(|ns| ["nsenter".into(), format!("--net={}", ns.display())]),
            )
            .arg("ctr")
            .args(self.ctr_globals())
            .args(["run", "--cni", "--rm", "--snapshotter", &self.snapshotter])
            .arg("--fifo-dir")
            .arg(self.dir().join("fifo"))
            .args([IMAGE, name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn ctr run");
        self.lock_containers().insert(name.to_string(), child);

        // ctr starts the task only after CNI ADD succeeded.
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let exited = self
                .lock_containers()
                .get_mut(name)
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.fail(format!(
                    "ctr run {name} exited ({status}) before its task ran\n--- ctr log ---\n{}",
                    tail(&log_path, 40)
                ));
            }
            let tasks = self.ctr_ok(&["task", "ls"]);
            let running = tasks.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&name) && f.last() == Some(&"RUNNING")
            });
            if running {
                return RunningContainer {
                    ctrd: self,
                    name: name.to_string(),
                };
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "container {name} not running after {RUN_TIMEOUT:?}\n--- ctr log ---\n{}",
                    tail(&log_path, 40)
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Runs `args` inside container `name` (`ctr task exec`).
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        let exec_id = format!("exec-{}", self.execs.fetch_add(1, Ordering::Relaxed));
        let fifo = self.dir().join("fifo");
        let mut a = vec!["task", "exec", "--exec-id", &exec_id, "--fifo-dir"];
        a.push(fifo.to_str().expect("utf-8 temp path"));
        a.push(name);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// Kills container `name` and waits until ctr has run CNI DEL and removed it.
    pub fn remove(&self, name: &str) {
        let child = self.lock_containers().remove(name);
        let Some(child) = child else {
            self.fail(format!("no container {name} to remove"));
        };
        if let Err(e) = self.stop_container(name, child) {
            self.fail(e);
        }
    }

    fn stop_container(&self, name: &str, mut child: Child) -> Result<(), String> {
        self.ctr(&["task", "kill", "--signal", "KILL", name]);
        let log = self.ctr_log(name);
        if wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "ctr run {name} still running {STOP_TIMEOUT:?} after the kill; CNI DEL may not have run\n--- ctr log ---\n{}",
                tail(&log, 40)
            ));
        }
        // ctr logs a failed DEL as "network review" and exits with the task's status.
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("network review") {
            return Err(format!(
                "CNI DEL failed for {name}\n--- ctr log ---\n{text}"
            ));
        }
        Ok(())
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.daemon.try_wait() {
                self.fail(format!("containerd exited during startup ({status})"));
            }
            if self.ctr(&["version"]).status.success() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("containerd not answering after {START_TIMEOUT:?}"));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// overlayfs where the kernel and filesystem allow it (containerd skips the
    /// plugin otherwise, e.g. on overlay-on-overlay), else native.
    fn pick_snapshotter(&self) -> String {
        let plugins = self.ctr_ok(&["plugins", "ls"]);
        let overlay_ok = plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4
                && f[0] == "io.containerd.snapshotter.v1"
                && f[1] == "overlayfs"
                && f[3] == "ok"
        });
        if overlay_ok { "overlayfs" } else { "native" }.to_string()
    }

    fn import_image(&self) {
        let archive = self.dir().join("busybox-oci.tar");
        fs::write(&archive, busybox_oci_archive()).expect("write image archive");
        let archive = archive.to_str().expect("utf-8 temp path");
        self.ctr_ok(&[
            "images",
            "import",
            "--snapshotter",
            &self.snapshotter,
            archive,
        ]);
        let images = self.ctr_ok(&["images", "ls", "-q"]);
        if !images.lines().any(|l| l == IMAGE) {
            self.fail(format!("import did not create {IMAGE}; images: {images}"));
        }
    }

    fn ctr_globals(&self) -> Vec<String> {
        vec![
            // The default waits 10 s on a dead socket; the harness polls instead.
            "--connect-timeout".into(),
            "2s".into(),
            "--address".into(),
            self.socket(),
            "--namespace".into(),
            self.namespace.clone(),
        ]
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .args(self.ctr_globals())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            self.fail(format!(
                "ctr {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn socket(&self) -> String {
        self.dir().join("containerd.sock").display().to_string()
    }

    fn ctr_log(&self, name: &str) -> PathBuf {
        self.dir().join(format!("ctr-run-{name}.log"))
    }

    fn lock_containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_daemon(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.daemon.id().to_string()])
            .status();
        if wait_timeout(&mut self.daemon, STOP_TIMEOUT).is_none() {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let children: Vec<(String, Child)> = self.lock_containers().drain().collect();
        for (name, child) in children {
            if let Err(e) = self.stop_container(&name, child) {
                eprintln!("containerd harness cleanup: {e}");
            }
        }
        // Whatever no ctr child owns any more, e.g. after a run that failed half way.
        if matches!(self.daemon.try_wait(), Ok(None)) {
            for id in self.ctr_ok_lines(&["tasks", "ls", "-q"]) {
                self.ctr(&["tasks", "delete", "--force", &id]);
            }
            for id in self.ctr_ok_lines(&["containers", "ls", "-q"]) {
                self.ctr(&["containers", "delete", &id]);
            }
        }
        self.stop_daemon();
        kill_processes_mentioning(self.dir());
        remove_cgroups(&self.namespace);
        unmount_under(self.dir());
        if let Err(e) = fs::remove_dir_all(self.dir()) {
            eprintln!(
                "containerd harness cleanup: removing {}: {e}",
                self.dir().display()
            );
        }
    }
}

impl Containerd {
    /// Stdout lines of a ctr command, none if it fails (for cleanup only).
    fn ctr_ok_lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.ctr(args);
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl RunningContainer<'_> {
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ctrd.exec(&self.name, args)
    }

    /// eth0's IPv4 address, as the container sees it.
    pub fn ipv4(&self) -> Ipv4Net {
        let out = self.exec(&["ip", "-o", "-4", "addr", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.parse().ok());
        match addr {
            Some(a) if out.status.success() => a,
            _ => self.ctrd.fail(format!(
                "no IPv4 on eth0 in {}: {text}{}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// See [`Containerd::remove`].
    pub fn remove(self) {
        self.ctrd.remove(&self.name);
    }
}

fn config_toml(dir: &Path) -> String {
    let p = |s: &str| dir.join(s).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Nothing that pulls, serves Kubernetes or needs special storage.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = p("root"),
        state = p("state"),
        sock = p("containerd.sock"),
        opt = p("opt"),
    )
}

/// An OCI image-layout tarball holding one uncompressed layer with busybox.
fn busybox_oci_archive() -> Vec<u8> {
    let busybox = fs::read(BUSYBOX).expect("read busybox");
    let mut layer = tar::Builder::new(Vec::new());
    add_dir(&mut layer, "bin/");
    add_file(&mut layer, "bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        add_symlink(&mut layer, &format!("bin/{applet}"), "busybox");
    }
    let layer = layer.into_inner().expect("layer tar");

    let mut blobs = Vec::new();
    let layer = blob(&mut blobs, "application/vnd.oci.image.layer.v1.tar", layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        // Uncompressed layer: its diff_id is its digest.
        "rootfs": { "type": "layers", "diff_ids": [layer["digest"]] },
    });
    let config = blob(
        &mut blobs,
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&config).expect("config json"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = blob(
        &mut blobs,
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&manifest).expect("manifest json"),
    );
    manifest["annotations"] = json!({ "org.opencontainers.image.ref.name": IMAGE });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest],
    });

    let mut out = tar::Builder::new(Vec::new());
    add_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let index = serde_json::to_vec(&index).expect("index json");
    add_file(&mut out, "index.json", 0o644, &index);
    add_dir(&mut out, "blobs/");
    add_dir(&mut out, "blobs/sha256/");
    for (hex, data) in &blobs {
        add_file(&mut out, &format!("blobs/sha256/{hex}"), 0o644, data);
    }
    out.into_inner().expect("image tar")
}

/// Stores `data` as a blob and returns its OCI descriptor.
fn blob(blobs: &mut Vec<(String, Vec<u8>)>, media_type: &str, data: Vec<u8>) -> Value {
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let descriptor = json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": data.len(),
    });
    blobs.push((hex, data));
    descriptor
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) {
    let h = header(path, tar::EntryType::Directory, 0o755, 0, None);
    tar.append(&h, &[][..]).expect("tar dir");
}

fn add_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let h = header(path, tar::EntryType::Regular, mode, data.len(), None);
    tar.append(&h, data).expect("tar file");
}

fn add_symlink(tar: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let h = header(path, tar::EntryType::Symlink, 0o777, 0, Some(target));
    tar.append(&h, &[][..]).expect("tar symlink");
}

/// Root-owned with mtime 0: nothing from the build host but the bytes goes in.
fn header(
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: usize,
    link: Option<&str>,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("tar path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    if let Some(link) = link {
        h.set_link_name(link).expect("tar link");
    }
    h.set_cksum();
    h
}

/// Host state shared by every harness in this process: the dirs `ctr run`
/// binds over (see the module doc), created where missing, and the
/// `ip_forward` value the CNI plugins may flip. The last harness to finish
/// removes exactly the dirs that were created and restores `ip_forward`; the
/// count keeps parallel tests from pulling either from under each other.
struct HostState;

struct SharedHostState {
    users: usize,
    created: Vec<PathBuf>,
    ip_forward: String,
}

static HOST_STATE: Mutex<SharedHostState> = Mutex::new(SharedHostState {
    users: 0,
    created: Vec::new(),
    ip_forward: String::new(),
});

impl HostState {
    fn acquire() -> HostState {
        let mut state = HOST_STATE.lock().unwrap_or_else(PoisonError::into_inner);
        if state.users == 0 {
            state.ip_forward = fs::read_to_string(IP_FORWARD).expect("read ip_forward");
            for target in [HOST_CNI_CONF, HOST_CNI_BIN, HOST_CNI_STATE] {
                let mut missing: Vec<&Path> = Path::new(target)
                    .ancestors()
                    .take_while(|p| !p.exists())
                    .collect();
                missing.reverse();
                for dir in missing {
                    fs::create_dir(dir).expect("create CNI mount point");
                    state.created.push(dir.to_path_buf());
                }
            }
        }
        state.users += 1;
        HostState
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        let mut state = HOST_STATE.lock().unwrap_or_else(PoisonError::into_inner);
        state.users -= 1;
        if state.users > 0 {
            return;
        }
        while let Some(dir) = state.created.pop() {
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!(
                    "containerd harness cleanup: removing {}: {e}",
                    dir.display()
                );
            }
        }
        if fs::read_to_string(IP_FORWARD).ok().as_deref() != Some(state.ip_forward.as_str()) {
            let _ = fs::write(IP_FORWARD, &state.ip_forward);
        }
    }
}

/// SIGKILLs every process whose command line names `dir`: shims (`-address
/// DIR/containerd.sock`) that outlived containerd.
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != std::process::id() && cmdline.windows(needle.len()).any(|w| w == needle) {
            kill(pid);
        }
    }
}

/// runc leaves the per-namespace parent cgroup (`<controller>/<namespace>`)
/// behind; container cgroups still there hold processes nothing else reaped.
fn remove_cgroups(namespace: &str) {
    let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let ns_dir = controller.path().join(namespace);
        let Ok(children) = fs::read_dir(&ns_dir) else {
            continue;
        };
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let procs = fs::read_to_string(child.path().join("cgroup.procs")).unwrap_or_default();
            procs.lines().filter_map(|p| p.parse().ok()).for_each(kill);
            let deadline = Instant::now() + Duration::from_secs(2);
            while fs::remove_dir(child.path()).is_err() && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
        }
        if let Err(e) = fs::remove_dir(&ns_dir) {
            eprintln!(
                "containerd harness cleanup: removing {}: {e}",
                ns_dir.display()
            );
        }
    }
}

/// Lazily unmounts whatever is still mounted under `dir` in the host's view.
/// containerd and ctr mount only inside their private namespaces, which die
/// with them, so this is a safety net that normally finds nothing.
fn unmount_under(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.reverse();
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// Distinguishes harnesses started by one test process.
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
