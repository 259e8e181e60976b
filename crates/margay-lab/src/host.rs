//! Every side effect the lab has on the machine, behind one trait: the orchestration in
//! [`crate::up`] is tested against a fake, the Linux implementation against the kernel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use margay_sys::netlink::{Route, RouteSocket, VethRequest};
use margay_sys::netns::{self, NetNs};
use serde_json::Value;

use crate::state::LabState;
use crate::topology::Step;

/// A side effect that failed; `Display` names what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct HostError {
    pub action: String,
    pub message: String,
}

impl HostError {
    pub fn new(action: impl Into<String>, message: impl ToString) -> HostError {
        HostError {
            action: action.into(),
            message: message.to_string(),
        }
    }
}

/// A long-running process started inside a namespace, outliving the command that started it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Its standard error (its log) goes here.
    pub log: PathBuf,
    /// Wait for this line on its standard output before returning (it is then ready).
    pub ready_line: Option<String>,
}

/// A process run to completion inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Where agents serve their status inside their node's namespace.
pub const AGENT_HEALTH: &str = "127.0.0.1:9099";
pub const AGENT_METRICS: &str = "127.0.0.1:9091";

pub trait Host: Sync {
    fn apply(&self, step: &Step) -> Result<(), HostError>;
    /// Kills every process in the namespace, then deletes it. `None`: there was none.
    fn remove_netns(&self, name: &str) -> Result<Option<usize>, HostError>;
    /// Processes running in the namespace.
    fn processes(&self, netns: &str) -> Result<usize, HostError>;
    /// Starts a daemon; returns its pid.
    fn spawn(&self, daemon: &Daemon) -> Result<u32, HostError>;
    fn run(&self, invocation: &Invocation) -> Result<Finished, HostError>;
    /// Runs a command with this terminal's standard streams; returns its exit code.
    fn exec(&self, netns: &str, argv: &[String]) -> Result<i32, HostError>;
    /// `GET /status` from the agent of the node whose namespace this is.
    fn agent_status(&self, netns: &str) -> Result<Value, HostError>;
    /// The destinations of the IPv4 routes in the namespace's main table.
    fn routes(&self, netns: &str) -> Result<Vec<Ipv4Net>, HostError>;
    /// Whether this kernel can make IPIP tunnels.
    fn ipip_supported(&self) -> bool;
}

/// The machine itself.
pub struct LinuxHost;

fn open(name: &str) -> Result<NetNs, HostError> {
    NetNs::open(&LabState::netns_path(name)).map_err(|e| HostError::new("", e))
}

fn socket(name: &str) -> Result<RouteSocket, HostError> {
    RouteSocket::new_in(&open(name)?).map_err(|e| HostError::new("", e))
}

fn index(sock: &mut RouteSocket, netns: &str, link: &str) -> Result<u32, HostError> {
    match sock.link_by_name(link) {
        Ok(Some(l)) => Ok(l.index),
        Ok(None) => Err(HostError::new(
            "",
            format!("no link {link} in netns {netns}"),
        )),
        Err(e) => Err(HostError::new("", e)),
    }
}

impl Host for LinuxHost {
    fn apply(&self, step: &Step) -> Result<(), HostError> {
        let result = match step {
            Step::Netns { name } => NetNs::create_named(name)
                .map(drop)
                .map_err(|e| HostError::new("", e)),
            Step::Bridge { netns, name } => socket(netns).and_then(|mut s| {
                s.create_bridge(name)
                    .map(drop)
                    .map_err(|e| HostError::new("", e))
            }),
            Step::Veth {
                netns,
                name,
                peer_netns,
                peer,
            } => {
                let peer_ns = open(peer_netns)?;
                socket(netns).and_then(|mut s| {
                    s.create_veth(&VethRequest {
                        name,
                        mac: None,
                        mtu: None,
                        peer_name: peer,
                        peer_ns: Some(&peer_ns),
                        peer_mac: None,
                    })
                    .map(drop)
                    .map_err(|e| HostError::new("", e))
                })
            }
            Step::Master {
                netns,
                link,
                bridge,
            } => socket(netns).and_then(|mut s| {
                let port = index(&mut s, netns, link)?;
                let master = index(&mut s, netns, bridge)?;
                s.set_master(port, master)
                    .map_err(|e| HostError::new("", e))
            }),
            Step::Address {
                netns,
                link,
                address,
            } => socket(netns).and_then(|mut s| {
                let i = index(&mut s, netns, link)?;
                s.add_address(i, IpNet::V4(*address))
                    .map_err(|e| HostError::new("", e))
            }),
            Step::Up { netns, link } => socket(netns).and_then(|mut s| {
                s.set_up_by_name(link, None)
                    .map_err(|e| HostError::new("", e))
            }),
            Step::Route {
                netns,
                destination,
                via,
            } => socket(netns).and_then(|mut s| {
                s.add_route(&Route {
                    gateway: Some((*via).into()),
                    ..Route::new(IpNet::V4(*destination))
                })
                .map_err(|e| HostError::new("", e))
            }),
            Step::Sysctl { netns, key, value } => open(netns).and_then(|ns| {
                let key = key.replace('.', "/");
                ns.run(|| margay_sys::sysctl::write(&key, value))
                    .and_then(|r| r)
                    .map_err(|e| HostError::new("", e))
            }),
        };
        result.map_err(|e| HostError::new(step.to_string(), e.message))
    }

    fn remove_netns(&self, name: &str) -> Result<Option<usize>, HostError> {
        let action = || format!("removing netns {name}");
        let path = LabState::netns_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let pids = netns::pids_in(&path).map_err(|e| HostError::new(action(), e))?;
        for pid in &pids {
            margay_sys::process::kill(*pid).map_err(|e| HostError::new(action(), e))?;
        }
        // A killed process leaves the namespace when it has exited; wait for that.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| margay_sys::process::is_alive(*p)) {
            if Instant::now() > deadline {
                return Err(HostError::new(
                    action(),
                    "processes inside did not exit within 10 s of SIGKILL",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        netns::delete_named(name).map_err(|e| HostError::new(action(), e))?;
        Ok(Some(pids.len()))
    }

    fn processes(&self, name: &str) -> Result<usize, HostError> {
        netns::pids_in(&LabState::netns_path(name))
            .map(|p| p.len())
            .map_err(|e| HostError::new(format!("listing processes in netns {name}"), e))
    }

    fn spawn(&self, d: &Daemon) -> Result<u32, HostError> {
        let action = || format!("starting {} in netns {}", d.program.display(), d.netns);
        let log = std::fs::File::create(&d.log)
            .map_err(|e| HostError::new(action(), format!("{}: {e}", d.log.display())))?;
        let ns = open(&d.netns).map_err(|e| HostError::new(action(), e.message))?;
        let mut child = ns
            .run(|| {
                Command::new(&d.program)
                    .args(&d.args)
                    .env_remove("CNI_COMMAND")
                    .stdin(Stdio::null())
                    .stdout(if d.ready_line.is_some() {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stderr(log)
                    // Its own process group: a Ctrl-C aimed at `lab up` must not stop the lab.
                    .process_group(0)
                    .spawn()
            })
            .map_err(|e| HostError::new(action(), e))?
            .map_err(|e| HostError::new(action(), e))?;
        let pid = child.id();
        if let (Some(ready), Some(stdout)) = (&d.ready_line, child.stdout.take()) {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.trim_end() == ready => {}
                Ok(line) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
                    return Err(HostError::new(
                        action(),
                        format!(
                            "it stopped before it was ready (said {:?}): {}",
                            line.trim_end(),
                            last_line(&log)
                        ),
                    ));
                }
                Err(_) => {
                    let _ = child.kill();
                    return Err(HostError::new(action(), "not ready within 10 s"));
                }
            }
        }
        // Not waited for: it outlives this command, and init reaps it once this exits.
        drop(child);
        Ok(pid)
    }

    fn run(&self, inv: &Invocation) -> Result<Finished, HostError> {
        let action = || format!("running {} in netns {}", inv.program.display(), inv.netns);
        let ns = open(&inv.netns).map_err(|e| HostError::new(action(), e.message))?;
        let output = ns
            .run(|| {
                let mut child = Command::new(&inv.program)
                    .args(&inv.args)
                    .env_remove("CNI_COMMAND")
                    .envs(inv.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                let mut stdin = child.stdin.take().expect("stdin is piped");
                stdin.write_all(&inv.stdin)?;
                drop(stdin);
                child.wait_with_output()
            })
            .map_err(|e| HostError::new(action(), e))?
            .map_err(|e| HostError::new(action(), e))?;
        Ok(Finished {
            code: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    fn exec(&self, netns: &str, argv: &[String]) -> Result<i32, HostError> {
        let action = || format!("running {:?} in netns {netns}", argv.join(" "));
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| HostError::new(action(), "no command given"))?;
        let ns = open(netns).map_err(|e| HostError::new(action(), e.message))?;
        let status = ns
            .run(|| Command::new(program).args(args).status())
            .map_err(|e| HostError::new(action(), e))?
            .map_err(|e| HostError::new(action(), e))?;
        // Killed by a signal: the shell's convention, 128 + signal.
        Ok(status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }))
    }

    fn agent_status(&self, netns: &str) -> Result<Value, HostError> {
        let action = || format!("asking the agent in netns {netns}");
        let addr: SocketAddr = AGENT_HEALTH.parse().expect("constant address");
        open(netns)
            .map_err(|e| HostError::new(action(), e.message))?
            .run(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime
                    .block_on(margay_agent::http::fetch_status(addr))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| HostError::new(action(), e))?
            .map_err(|e| HostError::new(action(), e))
    }

    fn routes(&self, netns: &str) -> Result<Vec<Ipv4Net>, HostError> {
        let action = || format!("listing routes in netns {netns}");
        let mut sock = socket(netns).map_err(|e| HostError::new(action(), e.message))?;
        let routes = sock
            .routes(false)
            .map_err(|e| HostError::new(action(), e))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.table == Route::MAIN_TABLE)
            .filter_map(|r| match r.destination {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    fn ipip_supported(&self) -> bool {
        // Asked of the kernel itself, in a scratch namespace: modules may be built in.
        let name = format!("margay-ipip-check-{}", std::process::id());
        let supported = NetNs::create_named(&name)
            .and_then(|ns| RouteSocket::new_in(&ns))
            .and_then(|mut s| s.create_ipip("tunl-check", None, None))
            .is_ok();
        let _ = netns::delete_named(&name);
        supported
    }
}

/// The last non-empty line of a log, for error messages.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
}

/// Reads a file if it exists (for logs in messages).
pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}
