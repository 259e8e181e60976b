//! What `margay node run` was asked to do, after flags and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use margay_datastore::ConnectOptions;

use crate::autodetect::Method;

/// How the node's address is chosen.
#[derive(Debug, Clone)]
pub enum IpChoice {
    Fixed(Ipv4Net),
    Detect(Method),
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node: String,
    pub datastore: String,
    pub connect: ConnectOptions,
    pub ip: IpChoice,
    pub state_dir: PathBuf,
    /// `None`: from AgentConfiguration (`healthHost`/`healthPort`, default 127.0.0.1:9099).
    pub health_addr: Option<SocketAddr>,
    /// `None`: from AgentConfiguration (`prometheusMetricsPort`, default 0.0.0.0:9091).
    pub metrics_addr: Option<SocketAddr>,
    /// `None`: from AgentConfiguration (`routeRefreshInterval`, default 90 s).
    pub resync_interval: Option<Duration>,
    /// Run the BGP speaker even without a `BGPConfiguration default` or any `BGPPeer`
    /// (`--bgp`, Calico's `CALICO_NETWORKING_BACKEND=bird`).
    pub bgp: bool,
}
