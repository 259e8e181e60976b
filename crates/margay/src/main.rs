//! The `margay` binary: parses arguments and dispatches to the library crates.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use margay_client::{ApplyMode, Client};
use margay_ctl::{NamespaceScope, OutputFormat, Report};
use margay_datastore::{ConnectOptions, DEFAULT_URL};

mod lab;

#[derive(Parser)]
#[command(
    name = "margay",
    about = "Kubernetes pod networking: CLI, CNI plugin and node agent"
)]
struct Cli {
    /// Datastore URL: sqlite:///path/to.db (default) or etcd://host:port[,host:port…].
    #[arg(long, global = true, env = "MARGAY_DATASTORE", default_value = DEFAULT_URL)]
    datastore: String,
    /// CA certificate for etcd over TLS.
    #[arg(long, global = true, env = "MARGAY_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd over TLS.
    #[arg(long, global = true, env = "MARGAY_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Client key for etcd over TLS.
    #[arg(long, global = true, env = "MARGAY_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version and git commit.
    Version,
    /// Create or update resources from files (all documents are validated before any is written).
    Apply(WriteArgs),
    /// Create resources; fails if one exists.
    Create(WriteArgs),
    /// Replace existing resources; fails if one does not exist.
    Replace(WriteArgs),
    /// Delete resources named in files, or by kind and name.
    Delete(DeleteArgs),
    /// List or show resources.
    Get(GetArgs),
    /// IP address management: show, assign, release, check, configure, gc.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// The node agent: run it, or ask it how it is.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Install the CNI plugin (`margay`, `margay-ipam`) and write 10-margay.conflist.
    InstallCni(InstallCniArgs),
    /// Network policy, as the engine computes it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A whole cluster in network namespaces on this machine: up, probe, status, exec, down.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Follow one packet through policy and routes, from the datastore: the rule or default
    /// that decides, with its nftables and iptables location. Exits 0 whatever the verdict.
    Trace(TraceArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// The reachability every endpoint pair would have, computed offline from the datastore or
    /// from files (Namespaces, Pods with labels/named ports/IPs, policies of every kind).
    Matrix {
        /// Read these files or directories instead of the datastore (`-` is standard input).
        #[arg(long, num_args = 1..)]
        from_files: Vec<String>,
        /// Only this port [default: every named port the endpoints declare, else 80].
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, ignore_case = true)]
        protocol: Option<margay_policy::Protocol>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: StatusOutput,
    },
}

#[derive(clap::Args)]
struct TraceArgs {
    /// The source: NS/POD, or an IP address (an endpoint's address means that endpoint).
    #[arg(long)]
    from: String,
    /// The destination: NS/POD, or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port (TCP, UDP and SCTP).
    #[arg(long)]
    port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP or ICMPv6.
    #[arg(long, default_value = "TCP")]
    protocol: margay_ctl::trace::TraceProtocol,
    /// Source port [default: an ephemeral one, which no source port rule matches].
    #[arg(long)]
    source_port: Option<u16>,
    /// ICMP or ICMPv6 type (required with those protocols).
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code [default: one no rule names].
    #[arg(long)]
    icmp_code: Option<u8>,
    #[arg(short, long, value_enum, default_value = "table")]
    output: StatusOutput,
}

#[derive(Subcommand)]
enum IpamCommand {
    /// Pool and block usage, who holds an address, or the IPAM configuration.
    Show {
        #[arg(long)]
        show_blocks: bool,
        #[arg(long)]
        show_borrowed: bool,
        #[arg(long)]
        show_configuration: bool,
        #[arg(long)]
        ip: Option<IpAddr>,
    },
    /// Assign addresses to a handle on a node; prints them, one a line.
    Assign {
        #[arg(long)]
        node: String,
        #[arg(long)]
        handle: String,
        /// Number of IPv4 addresses.
        #[arg(long, default_value_t = 1)]
        num: usize,
        /// Number of IPv6 addresses.
        #[arg(long, default_value_t = 0)]
        ipv6: usize,
        /// Only from this pool (CIDR; repeatable).
        #[arg(long)]
        pool: Vec<IpNet>,
        /// This exact address instead of auto-assignment.
        #[arg(long, conflicts_with_all = ["num", "ipv6", "pool"])]
        ip: Option<IpAddr>,
        /// Attribute key=value (repeatable), e.g. namespace=default pod=web-1.
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// Release addresses, a handle, or the leaks listed in an `ipam check` report.
    Release {
        #[arg(long, num_args = 1.., required_unless_present_any = ["handle", "from_report"])]
        ip: Vec<IpAddr>,
        #[arg(long, conflicts_with_all = ["ip", "from_report"])]
        handle: Option<String>,
        #[arg(long, conflicts_with = "ip")]
        from_report: Option<String>,
    },
    /// Find leaked and inconsistent allocations; exits 1 when there are any.
    Check {
        /// Write the JSON report here.
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Change the IPAM configuration.
    Configure {
        #[arg(long)]
        strict_affinity: Option<bool>,
        #[arg(long)]
        max_blocks_per_host: Option<u32>,
        #[arg(long)]
        auto_allocate_blocks: Option<bool>,
    },
    /// Release leaked addresses after the leak grace period (Calico's IPAM GC).
    Gc {
        /// How long a leak must be seen before release [default: the
        /// ControllersConfiguration's leakGracePeriod, else 15m].
        #[arg(long, value_parser = humantime::parse_duration)]
        grace_period: Option<Duration>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        interval: Duration,
        /// Stop once no leak is left waiting.
        #[arg(long)]
        until_clean: bool,
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

#[derive(clap::Args)]
struct WriteArgs {
    /// File, directory or `-` for standard input (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Namespace for namespaced documents that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(clap::Args)]
struct DeleteArgs {
    /// File, directory or `-` naming what to delete (repeatable).
    #[arg(short = 'f', long = "filename", conflicts_with = "kind")]
    files: Vec<String>,
    /// Kind to delete (e.g. ippool, gnp, wep).
    #[arg(required_unless_present = "files")]
    kind: Option<String>,
    /// Names to delete.
    #[arg(requires = "kind")]
    names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
}

#[derive(clap::Args)]
struct GetArgs {
    /// Kind (singular, plural or short name: ippools, nodes, wep, gnp, np, bgppeers, …).
    kind: String,
    /// Show only this resource.
    name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only resources whose labels match this selector, e.g. "app == 'web' && has(tier)".
    #[arg(short = 'l', long)]
    selector: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl From<Output> for OutputFormat {
    fn from(o: Output) -> Self {
        match o {
            Output::Table => OutputFormat::Table,
            Output::Wide => OutputFormat::Wide,
            Output::Yaml => OutputFormat::Yaml,
            Output::Json => OutputFormat::Json,
            Output::Name => OutputFormat::Name,
        }
    }
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run the node agent: register the node, program routes, overlays, NAT and network
    /// policy; serve health and metrics. Runs until stopped.
    Run(NodeRunArgs),
    /// This node's view, from the running agent's health endpoint.
    Status {
        /// Where the agent serves /status.
        #[arg(long, env = "MARGAY_HEALTH_ADDR", default_value = "127.0.0.1:9099")]
        health_addr: std::net::SocketAddr,
        #[arg(short, long, value_enum, default_value = "table")]
        output: NodeStatusOutput,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusOutput {
    Table,
    Json,
}

/// `margay node status -o …`: the table (with the BGP peers), or `/status` as it is.
#[derive(Clone, Copy, ValueEnum)]
enum NodeStatusOutput {
    Table,
    Json,
    Yaml,
}

#[derive(clap::Args)]
struct NodeRunArgs {
    /// This node's name.
    #[arg(long, env = "MARGAY_NODENAME")]
    name: String,
    /// The node's address with its prefix (10.0.0.5/24), or `auto` to detect it.
    #[arg(long, env = "MARGAY_IP", default_value = "auto")]
    ip: String,
    /// How `--ip auto` finds the address: first-found, interface=REGEX, skip-interface=REGEX,
    /// can-reach=ADDR.
    #[arg(
        long,
        env = "MARGAY_IP_AUTODETECTION_METHOD",
        default_value = "first-found"
    )]
    ip_autodetection: String,
    /// Files shared with the CNI plugin (nodename, mtu).
    #[arg(long, env = "MARGAY_STATE_DIR", default_value = "/var/lib/margay")]
    state_dir: PathBuf,
    /// Health endpoint (/liveness, /readiness, /status); default from AgentConfiguration,
    /// 127.0.0.1:9099.
    #[arg(long, env = "MARGAY_HEALTH_ADDR")]
    health_addr: Option<std::net::SocketAddr>,
    /// Prometheus endpoint (/metrics); default from AgentConfiguration, 0.0.0.0:9091.
    #[arg(long, env = "MARGAY_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Full resync period even without changes; default AgentConfiguration
    /// routeRefreshInterval (90s).
    #[arg(long, env = "MARGAY_RESYNC_INTERVAL", value_parser = humantime::parse_duration)]
    resync_interval: Option<Duration>,
    /// Run the BGP speaker (full mesh by default), as Calico's
    /// CALICO_NETWORKING_BACKEND=bird; it also runs whenever a BGPConfiguration `default`
    /// or a BGPPeer exists.
    #[arg(long, env = "MARGAY_BGP")]
    bgp: bool,
}

#[derive(clap::Args)]
struct InstallCniArgs {
    /// Where the runtime looks for plugin binaries.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the runtime looks for network configs.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Pod MTU; 0 or absent means the agent's `<state-dir>/mtu`, else 1500.
    #[arg(long)]
    mtu: Option<u32>,
    /// Node name for the plugin (default: `<state-dir>/nodename`, else the host name).
    #[arg(long)]
    nodename: Option<String>,
    /// State directory shared with the agent (default /var/lib/margay).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Also log to this file.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

/// Which program this process is: the CLI, or a CNI plugin run by a container runtime.
fn plugin_mode() -> Option<margay_cni::Mode> {
    let argv0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&argv0).file_name()?.to_owned();
    if name == margay_cni::config::IPAM_TYPE {
        Some(margay_cni::Mode::Ipam)
    } else if std::env::var_os("CNI_COMMAND").is_some() {
        Some(margay_cni::Mode::Main)
    } else {
        None
    }
}

fn main() -> ExitCode {
    if let Some(mode) = plugin_mode() {
        return ExitCode::from(u8::try_from(margay_cni::main(mode)).unwrap_or(1));
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MARGAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Version => {
            println!(
                "margay {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("MARGAY_GIT_COMMIT")
            );
            return Ok(());
        }
        Command::InstallCni(args) => {
            let source = std::env::current_exe().context("finding the running binary")?;
            let installed = margay_cni::install::install(&margay_cni::install::InstallOptions {
                bin_dir: args.bin_dir.clone(),
                conf_dir: args.conf_dir.clone(),
                source,
                // The plugin's own default is the same URL; write it only when it differs.
                datastore: (cli.datastore != DEFAULT_URL).then(|| cli.datastore.clone()),
                mtu: args.mtu,
                nodename: args.nodename.clone(),
                state_dir: args.state_dir.clone(),
                log_file: args.log_file.clone(),
            })?;
            for path in installed.binaries.iter().chain([&installed.conflist]) {
                println!("installed {}", path.display());
            }
            return Ok(());
        }
        Command::Node(cmd) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            return runtime.block_on(node(&cli, cmd));
        }
        Command::Policy(PolicyCommand::Matrix {
            from_files,
            port,
            protocol,
            output,
        }) if !from_files.is_empty() => {
            let (cluster, warnings) = margay_ctl::policy::cluster_from_files(from_files)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            return print_matrices(&cluster, *port, *protocol, *output);
        }
        Command::Lab(_) => {
            let Command::Lab(cmd) = cli.command else {
                unreachable!("matched above")
            };
            return lab::run(cmd, &cli.datastore);
        }
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "margay",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_with_datastore(cli))
}

async fn node(cli: &Cli, cmd: &NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Run(args) => {
            let ip = if args.ip == "auto" {
                margay_agent::config::IpChoice::Detect(
                    args.ip_autodetection
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--ip-autodetection: {e}"))?,
                )
            } else {
                margay_agent::config::IpChoice::Fixed(args.ip.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--ip {:?} is not `auto` or an IPv4 address/prefix like 10.0.0.5/24",
                        args.ip
                    )
                })?)
            };
            let opts = margay_agent::config::AgentOptions {
                node: args.name.clone(),
                datastore: cli.datastore.clone(),
                connect: ConnectOptions {
                    etcd_ca: cli.etcd_ca.clone(),
                    etcd_cert: cli.etcd_cert.clone(),
                    etcd_key: cli.etcd_key.clone(),
                    short_lived: false,
                },
                ip,
                state_dir: args.state_dir.clone(),
                health_addr: args.health_addr,
                metrics_addr: args.metrics_addr,
                resync_interval: args.resync_interval,
                bgp: args.bgp,
            };
            margay_agent::agent::run(opts).await?;
            Ok(())
        }
        NodeCommand::Status {
            health_addr,
            output,
        } => {
            let status = margay_agent::http::fetch_status(*health_addr).await?;
            match output {
                NodeStatusOutput::Json => {
                    println!("{}", serde_json::to_string_pretty(&status)?)
                }
                NodeStatusOutput::Yaml => {
                    print!("{}", margay_agent::status::render_yaml(&status))
                }
                NodeStatusOutput::Table => print!("{}", margay_agent::status::render(&status)),
            }
            Ok(())
        }
    }
}

async fn run_with_datastore(cli: Cli) -> anyhow::Result<()> {
    let opts = ConnectOptions {
        etcd_ca: cli.etcd_ca,
        etcd_cert: cli.etcd_cert,
        etcd_key: cli.etcd_key,
        // Every command is one job in its own process (see `ConnectOptions::short_lived`).
        short_lived: true,
    };
    let ds = margay_datastore::connect(&cli.datastore, &opts).await?;
    let client = Client::new(ds);
    match cli.command {
        Command::Apply(a) => write(&client, a, ApplyMode::Apply).await,
        Command::Create(a) => write(&client, a, ApplyMode::Create).await,
        Command::Replace(a) => write(&client, a, ApplyMode::Replace).await,
        Command::Delete(d) => {
            let scope = NamespaceScope::One(d.namespace);
            let report = match d.kind {
                Some(kind) => margay_ctl::delete_named(&client, &kind, &d.names, &scope).await?,
                None => margay_ctl::delete_files(&client, &d.files, &scope).await?,
            };
            print_report(&report)
        }
        Command::Get(g) => {
            let scope = if g.all_namespaces {
                NamespaceScope::All
            } else {
                NamespaceScope::One(g.namespace)
            };
            let out = margay_ctl::get(
                &client,
                &g.kind,
                g.name.as_deref(),
                &scope,
                g.selector.as_deref(),
                g.output.into(),
            )
            .await?;
            std::io::stdout().write_all(out.as_bytes())?;
            Ok(())
        }
        Command::Ipam(cmd) => ipam(&client, cmd).await,
        Command::Policy(PolicyCommand::Matrix {
            port,
            protocol,
            output,
            ..
        }) => {
            let (cluster, warnings) = margay_ctl::policy::cluster_from_datastore(&client).await?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            print_matrices(&cluster, port, protocol, output)
        }
        Command::Trace(t) => {
            let request = margay_ctl::trace::TraceRequest {
                from: t.from,
                to: t.to,
                protocol: t.protocol,
                port: t.port,
                source_port: t.source_port,
                icmp_type: t.icmp_type,
                icmp_code: t.icmp_code,
            };
            let trace = margay_ctl::trace::trace(&client, &request).await?;
            match t.output {
                StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&trace)?),
                StatusOutput::Table => print!("{}", margay_ctl::trace::render(&trace)),
            }
            Ok(())
        }
        Command::Version
        | Command::InstallCni(_)
        | Command::Node(_)
        | Command::Lab(_)
        | Command::Completion { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

async fn ipam(client: &Client, cmd: IpamCommand) -> anyhow::Result<()> {
    use margay_ctl::ipam;
    let engine = margay_ipam::Ipam::new(client.clone());
    let out = match cmd {
        IpamCommand::Show {
            show_blocks,
            show_borrowed,
            show_configuration,
            ip,
        } => {
            let opts = ipam::ShowOptions {
                blocks: show_blocks,
                borrowed: show_borrowed,
                configuration: show_configuration,
                ip,
            };
            ipam::show(&engine, &opts).await?
        }
        IpamCommand::Assign {
            node,
            handle,
            num,
            ipv6,
            pool,
            ip,
            attrs,
        } => {
            let opts = ipam::AssignOptions {
                node,
                handle,
                num_v4: num,
                num_v6: ipv6,
                pools: pool,
                ip,
                attrs,
            };
            ipam::assign(&engine, &opts, &mut |w| eprintln!("warning: {w}")).await?
        }
        IpamCommand::Release {
            ip,
            handle,
            from_report,
        } => {
            let target = match (handle, from_report) {
                (Some(h), _) => ipam::ReleaseTarget::Handle(h),
                (None, Some(r)) => ipam::ReleaseTarget::Report(r),
                (None, None) => ipam::ReleaseTarget::Ips(ip),
            };
            ipam::release(&engine, &target).await?
        }
        IpamCommand::Check { output } => {
            let (text, clean) = ipam::check(&engine, output.as_deref()).await?;
            print!("{text}");
            if !clean {
                anyhow::bail!("IPAM check found problems");
            }
            return Ok(());
        }
        IpamCommand::Configure {
            strict_affinity,
            max_blocks_per_host,
            auto_allocate_blocks,
        } => {
            ipam::configure(
                &engine,
                strict_affinity,
                max_blocks_per_host,
                auto_allocate_blocks,
            )
            .await?
        }
        IpamCommand::Gc {
            grace_period,
            interval,
            until_clean,
            timeout,
        } => {
            let grace = match grace_period {
                Some(g) => g,
                None => ipam::configured_grace_period(client).await?,
            };
            ipam::gc(
                &engine,
                grace,
                interval,
                until_clean,
                timeout,
                &mut |line| eprintln!("{line}"),
            )
            .await?;
            return Ok(());
        }
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

async fn write(client: &Client, args: WriteArgs, mode: ApplyMode) -> anyhow::Result<()> {
    let scope = NamespaceScope::One(args.namespace);
    let report = margay_ctl::apply_files(client, &args.files, mode, &scope).await?;
    print_report(&report)
}

fn print_matrices(
    cluster: &margay_policy::Cluster,
    port: Option<u16>,
    protocol: Option<margay_policy::Protocol>,
    output: StatusOutput,
) -> anyhow::Result<()> {
    let report = margay_ctl::policy::matrices(cluster, port, protocol);
    match output {
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        StatusOutput::Table => print!("{}", margay_ctl::policy::render(cluster, &report)),
    }
    Ok(())
}

fn print_report(report: &Report) -> anyhow::Result<()> {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    for line in &report.lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
