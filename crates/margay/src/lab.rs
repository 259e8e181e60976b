//! `margay lab …`: parses the lab's flags and hands them to `margay-lab`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use margay_lab::probe::{self, Protocol};
use margay_lab::spec::{self, DatastoreKind, Mode, Overrides};
use margay_lab::up::UpOptions;
use margay_lab::{status, LinuxHost};

#[derive(clap::Args)]
pub struct LabName {
    /// Which lab (several can run side by side).
    #[arg(long, default_value = "margay")]
    name: String,
    /// Where labs keep their state.
    #[arg(long, env = "MARGAY_LAB_ROOT", default_value = margay_lab::state::DEFAULT_ROOT)]
    lab_root: PathBuf,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a cluster: fabric, nodes running the agent, pods wired by the CNI plugin.
    Up(UpArgs),
    /// Remove every namespace, link, process and file of a lab (safe to repeat).
    Down(LabName),
    /// Nodes, agents' readiness, pods with their addresses.
    Status {
        #[command(flatten)]
        lab: LabName,
        #[arg(short, long, value_enum, default_value = "table")]
        output: TableOrJson,
    },
    /// Run a command inside a pod's network namespace: `lab exec ns/pod -- CMD…`.
    Exec {
        #[command(flatten)]
        lab: LabName,
        /// NAMESPACE/NAME (a bare NAME is in `default`).
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create or update resources in the lab's datastore.
    Apply {
        #[command(flatten)]
        lab: LabName,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Every pod tries every pod, in parallel (1 s per try): the real reachability matrix.
    Probe {
        #[command(flatten)]
        lab: LabName,
        /// Only this port [default: every port some pod serves].
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum)]
        protocol: Option<ProbeProtocol>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: TableOrJson,
    },
    /// Probe the lab and compare with `policy matrix` on its datastore: prints every pair
    /// where the packets and the policy model disagree; exits 1 if there is any.
    Verify {
        #[command(flatten)]
        lab: LabName,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum)]
        protocol: Option<ProbeProtocol>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: TableOrJson,
    },
    /// The pod's server (started by `lab up` inside each pod).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<u16>,
        #[arg(long, value_delimiter = ',')]
        udp: Vec<u16>,
    },
}

#[derive(clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    lab: LabName,
    /// A YAML lab description (nodes, pools, namespaces, pods, resources); see docs/lab.md.
    #[arg(long)]
    spec: Option<PathBuf>,
    #[arg(long, conflicts_with = "spec", default_value_t = 3)]
    nodes: usize,
    #[arg(long, conflicts_with = "spec", default_value_t = 2)]
    pods_per_node: usize,
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// With `--mode bgp`: the first N nodes are route reflectors, the node-to-node mesh is
    /// off and every node peers with the reflectors [default: 0, the full mesh].
    #[arg(long)]
    route_reflectors: Option<usize>,
    // `--datastore sqlite|etcd` arrives through the global `--datastore` (see `run`).
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TableOrJson {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
}

impl From<ProbeProtocol> for Protocol {
    fn from(p: ProbeProtocol) -> Protocol {
        match p {
            ProbeProtocol::Tcp => Protocol::Tcp,
            ProbeProtocol::Udp => Protocol::Udp,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Vxlan,
    Crosssubnet,
    Ipip,
    Bgp,
}

/// `lab up --datastore sqlite|etcd` shares its flag with the global `--datastore URL`, so it
/// arrives here as that flag's value; the default URL or the environment's means "not given".
fn lab_datastore(global: &str) -> anyhow::Result<Option<DatastoreKind>> {
    let from_env = std::env::var("MARGAY_DATASTORE").ok();
    if global == margay_datastore::DEFAULT_URL || from_env.as_deref() == Some(global) {
        return Ok(None);
    }
    global.parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "--datastore {global:?}: a lab makes its own datastore; choose sqlite or etcd"
        )
    })
}

pub fn run(cmd: LabCommand, global_datastore: &str) -> anyhow::Result<()> {
    let host = LinuxHost;
    if !matches!(cmd, LabCommand::Serve { .. }) {
        margay_lab::require_root()?;
    }
    match cmd {
        LabCommand::Up(args) => up(&host, args, lab_datastore(global_datastore)?),
        LabCommand::Down(lab) => {
            match margay_lab::up::down_by_name(&host, &lab.lab_root, &lab.name)? {
                Some(removed) => println!(
                    "lab {} removed: {} namespaces, {} processes",
                    lab.name, removed.namespaces, removed.processes
                ),
                None => println!("lab {} is not up; nothing to remove", lab.name),
            }
            Ok(())
        }
        LabCommand::Status { lab, output } => {
            let state = margay_lab::load(&lab.lab_root, &lab.name)?;
            let status = status::collect(&host, &state);
            match output {
                TableOrJson::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                TableOrJson::Table => print!("{}", status::render(&status)),
            }
            Ok(())
        }
        LabCommand::Exec { lab, pod, command } => {
            let state = margay_lab::load(&lab.lab_root, &lab.name)?;
            let pod = status::find_pod(&state, &pod)?;
            let code = margay_lab::Host::exec(&host, &pod.netns, &command)?;
            std::process::exit(code);
        }
        LabCommand::Apply {
            lab,
            files,
            namespace,
        } => {
            let state = margay_lab::load(&lab.lab_root, &lab.name)?;
            let report = margay_lab::access::with_client(&state, |client| async move {
                let scope = margay_ctl::NamespaceScope::One(namespace);
                Ok(margay_ctl::apply_files(
                    &client,
                    &files,
                    margay_client::ApplyMode::Apply,
                    &scope,
                )
                .await)
            })??;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for line in &report.lines {
                println!("{line}");
            }
            Ok(())
        }
        LabCommand::Probe {
            lab,
            port,
            protocol,
            output,
        } => {
            let state = margay_lab::load(&lab.lab_root, &lab.name)?;
            let targets = probe_targets(&state, port, protocol.map(ProbeProtocol::into));
            let matrices = status::probe_lab(&state, &targets)?;
            print_matrices(&state, matrices, output)
        }
        LabCommand::Verify {
            lab,
            port,
            protocol,
            output,
        } => {
            let state = margay_lab::load(&lab.lab_root, &lab.name)?;
            let targets = probe_targets(&state, port, protocol.map(ProbeProtocol::into));
            let diffs = margay_lab::verify::verify(&state, &targets)?;
            match output {
                TableOrJson::Json => println!("{}", serde_json::to_string_pretty(&diffs)?),
                TableOrJson::Table if diffs.is_empty() => println!(
                    "probe and policy matrix agree on every pair ({})",
                    targets
                        .iter()
                        .map(|(p, pr)| format!("{p}/{pr}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TableOrJson::Table => {
                    let rows: Vec<Vec<String>> = diffs
                        .iter()
                        .map(|d| {
                            let word = |b: bool| if b { "allowed" } else { "denied" }.to_owned();
                            vec![
                                format!("{}/{}", d.port, d.protocol),
                                d.from.clone(),
                                d.to.clone(),
                                word(d.probed),
                                word(d.expected),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        margay_ctl::output::render_table(
                            &["PORT", "FROM", "TO", "PROBE", "POLICY MATRIX"],
                            &rows
                        )
                    );
                }
            }
            if !diffs.is_empty() {
                anyhow::bail!(
                    "{} pairs differ between lab probe and policy matrix",
                    diffs.len()
                );
            }
            Ok(())
        }
        LabCommand::Serve { name, tcp, udp } => {
            let server =
                margay_lab::serve::bind(&margay_lab::serve::ServeOptions { name, tcp, udp })?;
            // `lab up` waits for this line: every port is bound.
            let mut stdout = std::io::stdout();
            writeln!(stdout, "ready")?;
            stdout.flush()?;
            server.run()?;
            Ok(())
        }
    }
}

/// The (port, protocol) pairs to probe: those served that match the flags, or exactly what
/// was asked when nobody serves it (the answer is then honestly "denied").
fn probe_targets(
    state: &margay_lab::LabState,
    port: Option<u16>,
    protocol: Option<Protocol>,
) -> Vec<(u16, Protocol)> {
    let served: Vec<_> = status::served_ports(state)
        .into_iter()
        .filter(|(p, pr)| port.is_none_or(|want| want == *p) && protocol.is_none_or(|w| w == *pr))
        .collect();
    match (served.is_empty(), port) {
        (true, Some(port)) => vec![(port, protocol.unwrap_or(Protocol::Tcp))],
        _ => served,
    }
}

fn print_matrices(
    state: &margay_lab::LabState,
    probes: Vec<probe::Matrix>,
    output: TableOrJson,
) -> anyhow::Result<()> {
    match output {
        TableOrJson::Json => {
            let report = probe::Report { probes };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        TableOrJson::Table => {
            let ids: Vec<String> = status::endpoints(state).into_iter().map(|e| e.id).collect();
            for m in &probes {
                println!("{}", probe::render_table(m, &ids));
                println!(
                    "{}/{}: {} allowed, {} denied\n",
                    m.port,
                    m.protocol,
                    m.allowed.len(),
                    m.denied.len()
                );
            }
        }
    }
    Ok(())
}

fn up(host: &LinuxHost, args: UpArgs, datastore: Option<DatastoreKind>) -> anyhow::Result<()> {
    let overrides = Overrides {
        mode: args.mode.map(|m| match m {
            ModeArg::Vxlan => Mode::Vxlan,
            ModeArg::Crosssubnet => Mode::Crosssubnet,
            ModeArg::Ipip => Mode::Ipip,
            ModeArg::Bgp => Mode::Bgp,
        }),
        datastore,
        route_reflectors: args.route_reflectors,
    };
    let lab_spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            spec::parse_spec(&text, &path.display().to_string(), &overrides)?
        }
        None => spec::default_spec(args.nodes, args.pods_per_node, &overrides)?,
    };
    let started = std::time::Instant::now();
    let progress = |line: &str| {
        eprintln!("[{:5.1}s] {line}", started.elapsed().as_secs_f64());
    };
    let name = args.lab.name.clone();
    let state = margay_lab::up::up(
        host,
        &UpOptions {
            name: name.clone(),
            root: args.lab.lab_root.clone(),
            binary: std::env::current_exe().context("finding the running binary")?,
            spec: lab_spec,
            progress: &progress,
        },
    )?;
    let status = status::collect(host, &state);
    print!("\n{}", status::render(&status));
    let flag = if name == "margay" {
        String::new()
    } else {
        format!(" --name {name}")
    };
    let first = state
        .topology
        .pods
        .first()
        .map_or("default/pod-1-1".to_owned(), |p| p.spec.id());
    println!(
        "\nLab {name} is up in {:.1} s. Explore it:\n  margay lab probe{flag}              \
         # every pod tries every pod\n  margay lab status{flag}\n  margay lab exec{flag} \
         {first} -- ip addr\n  margay lab apply{flag} -f policy.yaml\nTake it down:\n  \
         margay lab down{flag}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
