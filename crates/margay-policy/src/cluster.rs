//! The resolved model: endpoints with the labels selectors see, tiers, compiled policies and
//! profiles, and per endpoint the policies that apply to it in each direction.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{
    AgentConfiguration, EndpointToHostAction, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint as HostEndpointResource, Kind, KubernetesNetworkPolicy, Namespace, NetworkPolicy,
    NetworkSet, Node, Pod, PolicyType, PortProtocol, Profile, ProtoPort, Resource, Tier,
    TierDefaultAction, WorkloadEndpoint, DEFAULT_CONFIG_NAME, DEFAULT_TIER, DEFAULT_TIER_ORDER,
    KUBE_ADMIN_TIER, KUBE_ADMIN_TIER_ORDER, KUBE_BASELINE_TIER, KUBE_BASELINE_TIER_ORDER,
};
use margay_selector::Expr;
use serde::Serialize;

use crate::compile::{self, CompiledPolicy, CompiledProfile, Entity};
use crate::eval::PolicyKind;
use crate::{PolicyError, Protocol, ResourceKey};

/// Labels Calico puts on every workload endpoint (and the namespace one on network sets).
pub(crate) const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
pub(crate) const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
pub(crate) const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// The label Calico's generated profiles add for the namespace's (or service account's) name.
const NAME_LABEL: &str = "projectcalico.org/name";
/// Kubernetes labels every namespace with its name; namespace selectors rely on it.
const K8S_NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Prefixes of the labels endpoints inherit from their namespace and service account profiles.
pub(crate) const NAMESPACE_PREFIX: &str = "pcns.";
pub(crate) const SERVICE_ACCOUNT_PREFIX: &str = "pcsa.";
pub(crate) const NAMESPACE_PROFILE_PREFIX: &str = "kns.";
const SERVICE_ACCOUNT_PROFILE_PREFIX: &str = "ksa.";
const ORCHESTRATOR_K8S: &str = "k8s";

/// A pod or other workload, as policy sees it.
///
/// Built from a Pod, from the WorkloadEndpoint the CNI plugin stored for it, or both (then
/// the Pod gives the labels and service account, and the endpoint the addresses, named ports
/// and profiles, which are what the dataplane was actually given). Host-network pods are not
/// endpoints: they share the node's network namespace and no workload policy applies to
/// them. Unscheduled pods are kept, so that manifests can be checked before they are run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// The workload's own labels.
    pub labels: BTreeMap<String, String>,
    /// What selectors see: [`Endpoint::labels`] plus `projectcalico.org/namespace`,
    /// `projectcalico.org/orchestrator` and `projectcalico.org/serviceaccount`, plus the
    /// labels inherited from its profiles: `pcns.<key>` for each label of its namespace and
    /// `pcns.projectcalico.org/name`, and `pcsa.projectcalico.org/name`. Calico also adds
    /// `pcsa.<key>` for each label of the ServiceAccount; ServiceAccount objects are not
    /// among the resources read, so `serviceAccounts.selector` can only match on the name.
    pub selector_labels: BTreeMap<String, String>,
    /// `None` for a workload endpoint of an orchestrator without service accounts.
    pub service_account: Option<String>,
    /// Empty when unknown (a manifest without status): nets and ipBlocks then never match it.
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// Applied in order after policy: `kns.<namespace>`, `ksa.<namespace>.<serviceaccount>`
    /// for a pod.
    pub profiles: Vec<String>,
    /// The node it runs on: the WorkloadEndpoint's `node`, else the Pod's `spec.nodeName`;
    /// `None` while unscheduled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The host side of its interface (`interfaceName` of its first WorkloadEndpoint), which
    /// is where that node's dataplane enforces its policy; `None` without a WorkloadEndpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// A host endpoint: one named interface of one node, and the policy its traffic to and from
/// the node meets (Calico's HostEndpoint).
///
/// Only host endpoints naming their interface are used: `interfaceName: "*"` (every
/// interface) and an endpoint found by its `expectedIPs` alone are not supported yet, and are
/// left out as bad policies are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpoint {
    pub name: String,
    pub node: String,
    pub interface: String,
    /// `expectedIPs`: rule selectors that select the endpoint match these addresses, and a
    /// packet to or from one of them is taken to cross its interface.
    pub ips: Vec<IpAddr>,
    /// What selectors see: its labels, and the labels its profiles apply (their own labels
    /// win).
    pub selector_labels: BTreeMap<String, String>,
    /// Applied in order after policy, as a workload's.
    pub profiles: Vec<String>,
}

/// A container port with a name, which rules can match by that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What a node's effective AgentConfiguration (`node.<name>` over `default` over Calico's
/// defaults) says about traffic to and from the node itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSettings {
    /// `defaultEndpointToHostAction`: what happens to traffic from a local workload to the
    /// node, after the workload's egress policy.
    pub endpoint_to_host: EndpointToHostAction,
    /// `failsafeInboundHostPorts`: allowed to the node through a host endpoint before any
    /// host endpoint policy.
    pub failsafe_inbound: Vec<ProtoPort>,
    /// `failsafeOutboundHostPorts`: allowed from the node through a host endpoint before any
    /// host endpoint policy.
    pub failsafe_outbound: Vec<ProtoPort>,
    /// `vxlanPort`: VXLAN between nodes is exempt from host endpoint policy.
    pub vxlan_port: u16,
}

impl HostSettings {
    pub fn of(config: &margay_api::AgentConfigurationSpec) -> HostSettings {
        HostSettings {
            endpoint_to_host: config.default_endpoint_to_host_action(),
            failsafe_inbound: config.failsafe_inbound_host_ports(),
            failsafe_outbound: config.failsafe_outbound_host_ports(),
            vxlan_port: config.vxlan_port(),
        }
    }
}

/// A node's addresses, from its Node resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeAddresses {
    /// `spec.bgp.ipv4Address` and `ipv6Address`: where its overlay packets come from.
    pub underlay: Vec<IpAddr>,
    /// Every address the node answers on: the above, `spec.addresses`, and its VXLAN and
    /// IPIP tunnel addresses.
    pub all: Vec<IpAddr>,
}

impl NodeAddresses {
    fn of(node: &Node) -> NodeAddresses {
        let bgp = node.spec.bgp.as_ref();
        let underlay: Vec<IpAddr> = [node.ipv4_address(), node.ipv6_address()]
            .into_iter()
            .flatten()
            .map(|a| a.addr())
            .collect();
        let mut all = underlay.clone();
        let others = node
            .spec
            .addresses
            .iter()
            .map(|a| a.address.addr())
            .chain(node.spec.ipv4_vxlan_tunnel_addr.map(IpAddr::from))
            .chain(node.spec.ipv6_vxlan_tunnel_addr.map(IpAddr::from))
            .chain(bgp.and_then(|b| b.ipv4_ipip_tunnel_addr).map(IpAddr::from));
        for ip in others {
            if !all.contains(&ip) {
                all.push(ip);
            }
        }
        NodeAddresses { underlay, all }
    }
}

/// What a rule selector stands for, as Felix programs it into an IP set: the endpoints it
/// selects, and the CIDRs of the network sets it selects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerSet {
    /// The expression's structure as text (`{expr:?}`): what identifies the set, and what
    /// sets are sorted by.
    pub key: String,
    /// The expression, kept to place endpoints and network sets that come later.
    pub expr: Expr,
    /// The selector, with namespace, service account and namespace-selector scoping folded
    /// in, in canonical form: the set's definition.
    pub selector: String,
    pub endpoints: Vec<bool>,
    pub nets: Vec<IpNet>,
}

/// A tier in evaluation order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledTier {
    pub name: String,
    pub default_pass: bool,
}

/// The policies of one tier that apply to an endpoint in one direction, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TierChain {
    pub tier: usize,
    pub policies: Vec<usize>,
}

/// A named set of networks with the labels rule selectors see on it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LabelledNets {
    pub labels: BTreeMap<String, String>,
    pub nets: Vec<IpNet>,
}

/// The resolved model every evaluation works on.
///
/// Clusters are equal when they resolve to the same endpoints, tiers, policies, profiles
/// and sets. Sets are kept sorted by their definition and profiles by name, so the order
/// policies happened to be compiled in does not show: the cluster a
/// [`Model`](crate::Model) keeps change by change equals the one built at once from
/// [`Model::resources`](crate::Model::resources).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) by_id: HashMap<String, usize>,
    pub(crate) by_ip: HashMap<IpAddr, usize>,
    /// In evaluation order.
    pub(crate) tiers: Vec<CompiledTier>,
    /// Sorted by tier, then as within a tier.
    pub(crate) policies: Vec<CompiledPolicy>,
    /// Sorted by name (stable: profiles given twice keep their order).
    pub(crate) profiles: Vec<CompiledProfile>,
    /// Only those rules use, sorted by [`PeerSet::key`].
    pub(crate) sets: Vec<PeerSet>,
    /// The network sets, namespaced ones first, which sets' nets come from.
    pub(crate) network_sets: Vec<LabelledNets>,
    /// Per endpoint: `[ingress, egress]` chains, tiers in order.
    pub(crate) chains: Vec<[Vec<TierChain>; 2]>,
    /// Per endpoint: indices into `profiles`, in the endpoint's order.
    pub(crate) endpoint_profiles: Vec<Vec<usize>>,
    /// The host endpoints used, sorted by name.
    pub(crate) host_endpoints: Vec<HostEndpoint>,
    /// Per host endpoint: `[ingress, egress]` chains of every policy selecting it, tiers in
    /// order (what traffic to and from the node through it meets).
    pub(crate) host_chains: Vec<[Vec<TierChain>; 2]>,
    /// Per host endpoint: the same of the `applyOnForward` policies only (what traffic the
    /// node forwards through it meets).
    pub(crate) host_forward_chains: Vec<[Vec<TierChain>; 2]>,
    /// Per host endpoint: indices into `profiles`, in its order.
    pub(crate) host_profiles: Vec<Vec<usize>>,
    /// The nodes' addresses, by node name.
    pub(crate) nodes: BTreeMap<String, NodeAddresses>,
    /// The AgentConfigurations, by name (`default`, `node.<name>`), with their defaults.
    pub(crate) configs: BTreeMap<String, AgentConfiguration>,
}

/// Index of a direction in [`Cluster::chains`].
pub(crate) fn direction_index(direction: PolicyType) -> usize {
    match direction {
        PolicyType::Ingress => 0,
        PolicyType::Egress => 1,
    }
}

/// The resources sorted by kind, before anything is resolved, each list in the order given.
#[derive(Default)]
pub(crate) struct Inputs<'r> {
    pub namespaces: Vec<&'r Namespace>,
    pub pods: Vec<&'r Pod>,
    pub workload_endpoints: Vec<&'r WorkloadEndpoint>,
    pub kubernetes_policies: Vec<&'r KubernetesNetworkPolicy>,
    pub policies: Vec<&'r NetworkPolicy>,
    pub global_policies: Vec<&'r GlobalNetworkPolicy>,
    pub tiers: Vec<&'r Tier>,
    pub profiles: Vec<&'r Profile>,
    pub network_sets: Vec<&'r NetworkSet>,
    pub global_network_sets: Vec<&'r GlobalNetworkSet>,
    pub nodes: Vec<&'r Node>,
    pub configs: Vec<&'r AgentConfiguration>,
    pub host_endpoints: Vec<&'r HostEndpointResource>,
}

impl<'r> Inputs<'r> {
    /// `resources` (with their defaults applied) by kind; other kinds are left out.
    pub fn of(resources: impl IntoIterator<Item = &'r Resource>) -> Inputs<'r> {
        let mut inputs = Inputs::default();
        for resource in resources {
            match resource {
                Resource::Namespace(o) => inputs.namespaces.push(o),
                Resource::Pod(o) => inputs.pods.push(o),
                Resource::WorkloadEndpoint(o) => inputs.workload_endpoints.push(o),
                Resource::KubernetesNetworkPolicy(o) => inputs.kubernetes_policies.push(o),
                Resource::NetworkPolicy(o) => inputs.policies.push(o),
                Resource::GlobalNetworkPolicy(o) => inputs.global_policies.push(o),
                Resource::Tier(o) => inputs.tiers.push(o),
                Resource::Profile(o) => inputs.profiles.push(o),
                Resource::NetworkSet(o) => inputs.network_sets.push(o),
                Resource::GlobalNetworkSet(o) => inputs.global_network_sets.push(o),
                Resource::Node(o) => inputs.nodes.push(o),
                Resource::AgentConfiguration(o) => inputs.configs.push(o),
                Resource::HostEndpoint(o) => inputs.host_endpoints.push(o),
                _ => {}
            }
        }
        inputs
    }
}

/// `Kind ns/name` or `Kind name`, how errors name a resource.
pub(crate) fn describe(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.name()),
        None => format!("{} {name}", kind.name()),
    }
}

/// When a policy was found unusable: compiling it, or placing it in its tier. A build
/// reports every compile error before every tier error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    Compile,
    Tier,
}

/// A policy a build left out.
#[derive(Debug, Clone)]
pub(crate) struct LeftOut {
    pub key: ResourceKey,
    pub stage: Stage,
    pub error: PolicyError,
}

/// A cluster, and the policies left out of it in the order they were found.
pub(crate) struct Built {
    pub cluster: Cluster,
    pub left_out: Vec<LeftOut>,
}

impl Cluster {
    /// Resolves Namespaces, Pods (labels, namespace, `spec.serviceAccountName`, container
    /// ports including named ones, addresses from `status.podIPs[].ip` / `status.podIP`),
    /// WorkloadEndpoints (as stored by the CNI plugin: labels, `ipNetworks`, ports,
    /// profiles), Kubernetes NetworkPolicies, NetworkPolicies, GlobalNetworkPolicies, Tiers,
    /// Profiles, NetworkSets, GlobalNetworkSets, HostEndpoints, Nodes (their addresses) and
    /// AgentConfigurations (each node's `defaultEndpointToHostAction`, failsafe ports and
    /// VXLAN port). Other kinds are ignored. Each resource gets its kind's defaults first, so
    /// resources built in code behave like decoded ones.
    ///
    /// A namespace that endpoints use but no Namespace resource describes is taken to have
    /// only its `kubernetes.io/metadata.name` label. The `default` tier exists implicitly
    /// (order 1,000,000, default action Deny), and so do Calico's built-in `kube-admin` and
    /// `kube-baseline` tiers (default action Pass) once a policy names them; any other tier a
    /// policy names must be given.
    ///
    /// # Errors
    ///
    /// Naming the resource: a resource given twice, a selector that does not parse, a
    /// policy in a tier that does not exist, and what the engine does not implement yet:
    /// `doNotTrack` and `preDNAT` policies, rules matching Kubernetes `services` (the
    /// Service and EndpointSlice objects they need are not read), and host endpoints for
    /// every interface (`interfaceName: "*"`) or without `interfaceName`.
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Cluster, PolicyError> {
        Cluster::build(resources, false).map(|(cluster, _)| cluster)
    }

    /// Like [`Cluster::from_resources`], except that a policy the engine cannot use (a
    /// selector that does not parse, a tier that does not exist, a feature not supported
    /// yet, an invalid port), or a host endpoint of a kind not supported yet, is left out, as if it were not stored, instead of failing the
    /// whole cluster; each one left out is returned with its error. This is what a dataplane
    /// enforces: one bad policy is skipped, not fatal, and the rest stay enforced.
    ///
    /// # Errors
    ///
    /// Errors that are not about one policy still fail: a resource given twice, and a
    /// Profile that cannot be compiled (leaving it out would put Calico's default profile,
    /// which may allow everything, in its place).
    pub fn from_resources_skipping_bad_policies(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<(Cluster, Vec<PolicyError>), PolicyError> {
        Cluster::build(resources, true)
    }

    fn build(
        resources: impl IntoIterator<Item = Resource>,
        skip_bad_policies: bool,
    ) -> Result<(Cluster, Vec<PolicyError>), PolicyError> {
        let resources = sort_inputs(resources)?;
        let built = Cluster::build_from(&Inputs::of(&resources), skip_bad_policies)?;
        let skipped = built.left_out.into_iter().map(|l| l.error).collect();
        Ok((built.cluster, skipped))
    }

    /// The cluster of `inputs` (defaults applied, no duplicates).
    pub(crate) fn build_from(
        inputs: &Inputs<'_>,
        skip_bad_policies: bool,
    ) -> Result<Built, PolicyError> {
        let namespaces = namespace_labels(&inputs.namespaces);
        let explicit_profiles = explicit_profiles(&inputs.profiles);
        let endpoints = build_endpoints(
            &inputs.pods,
            &inputs.workload_endpoints,
            &namespaces,
            &explicit_profiles,
        );
        let network_sets = build_network_sets(
            &inputs.network_sets,
            &inputs.global_network_sets,
            &namespaces,
            &explicit_profiles,
        );
        // Reported after the policies' compile errors, as a Model orders them.
        let mut hosts_left_out = Vec::new();
        let mut host_endpoints = Vec::new();
        for hep in &inputs.host_endpoints {
            match build_host_endpoint(hep, &namespaces, &explicit_profiles) {
                Ok(h) => host_endpoints.push(h),
                Err(error) if skip_bad_policies => hosts_left_out.push(LeftOut {
                    key: ResourceKey::of(Kind::HostEndpoint, &hep.metadata),
                    stage: Stage::Compile,
                    error,
                }),
                Err(e) => return Err(e),
            }
        }
        host_endpoints.sort_by(|a, b| a.name.cmp(&b.name));

        let mut builder = compile::Builder::new(&endpoints, &network_sets, &host_endpoints);
        let mut left_out = Vec::new();
        let mut keep = |key: ResourceKey,
                        compiled: Result<CompiledPolicy, PolicyError>|
         -> Result<Option<CompiledPolicy>, PolicyError> {
            match compiled {
                Ok(policy) => Ok(Some(policy)),
                Err(error) if skip_bad_policies => {
                    left_out.push(LeftOut {
                        key,
                        stage: Stage::Compile,
                        error,
                    });
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
        let mut policies = Vec::new();
        for knp in &inputs.kubernetes_policies {
            let key = ResourceKey::of(Kind::KubernetesNetworkPolicy, &knp.metadata);
            policies.extend(keep(key, builder.kubernetes_policy(knp))?);
        }
        for np in &inputs.policies {
            let key = ResourceKey::of(Kind::NetworkPolicy, &np.metadata);
            policies.extend(keep(key, builder.network_policy(np))?);
        }
        for gnp in &inputs.global_policies {
            let key = ResourceKey::of(Kind::GlobalNetworkPolicy, &gnp.metadata);
            policies.extend(keep(key, builder.global_network_policy(gnp))?);
        }
        left_out.append(&mut hosts_left_out);
        let referenced: HashSet<&str> = policies.iter().map(|p| p.tier_name.as_str()).collect();
        let tiers = build_tiers(&inputs.tiers, &referenced);
        let tier_index: HashMap<&str, usize> = tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut placed = Vec::with_capacity(policies.len());
        for mut p in policies {
            match tier_index.get(p.tier_name.as_str()) {
                Some(&tier) => {
                    p.tier = tier;
                    placed.push(p);
                }
                None => {
                    let error = PolicyError::UnknownTier {
                        resource: p.resource.clone(),
                        tier: p.tier_name.clone(),
                    };
                    if !skip_bad_policies {
                        return Err(error);
                    }
                    left_out.push(LeftOut {
                        key: p.key.clone(),
                        stage: Stage::Tier,
                        error,
                    });
                }
            }
        }
        let mut policies = placed;
        policies.sort_by(policy_order);

        // Every given profile is compiled, used or not, so that its errors surface.
        let mut profiles = Vec::new();
        for p in &inputs.profiles {
            profiles.push(builder.profile(p)?);
        }
        let mut given: HashSet<&str> = HashSet::new();
        given.extend(inputs.profiles.iter().map(|p| p.metadata.name.as_str()));
        let used = endpoints
            .iter()
            .flat_map(|ep| &ep.profiles)
            .chain(host_endpoints.iter().flat_map(|h| &h.profiles));
        for name in used {
            if given.insert(name) {
                profiles.push(CompiledProfile::calico_default(name));
            }
        }
        // The profiles sorted by name; each endpoint uses the last of a name (one given
        // twice).
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        let endpoint_profiles = endpoints
            .iter()
            .map(|ep| profile_indices(&profiles, &ep.profiles))
            .collect();
        let host_profiles = host_endpoints
            .iter()
            .map(|h| profile_indices(&profiles, &h.profiles))
            .collect();

        let chains = endpoints
            .iter()
            .map(|ep| endpoint_chains(&policies, &ep.selector_labels))
            .collect();

        let sets = builder.into_sets();
        let mut cluster = Cluster {
            by_id: index_by_id(&endpoints),
            by_ip: index_by_ip(&endpoints),
            endpoints,
            tiers,
            policies,
            profiles,
            sets,
            network_sets,
            chains,
            endpoint_profiles,
            host_chains: Vec::new(),
            host_forward_chains: Vec::new(),
            host_profiles,
            host_endpoints,
            nodes: node_addresses(&inputs.nodes),
            configs: agent_configs(&inputs.configs),
        };
        cluster.host_endpoint_chains();
        cluster.canonicalize_sets();
        Ok(Built { cluster, left_out })
    }

    /// Every endpoint, sorted by id (`namespace/name`).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint with this id (`namespace/name`).
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.by_id.get(id).map(|i| &self.endpoints[*i])
    }

    pub(crate) fn endpoint_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The endpoint owning this address, which is where a packet from or to it comes from
    /// or goes (addresses are not spoofed past Calico's RPF checks).
    pub(crate) fn endpoint_with_ip(&self, ip: IpAddr) -> Option<usize> {
        self.by_ip.get(&ip).copied()
    }

    /// What node `node`'s AgentConfiguration says about its own traffic: `node.<node>` over
    /// `default` over Calico's defaults, as the node's agent reads it.
    pub fn host_settings(&self, node: &str) -> HostSettings {
        let global = self.configs.get(DEFAULT_CONFIG_NAME);
        let mine = self.configs.get(&margay_api::node_config_name(node));
        HostSettings::of(&AgentConfiguration::effective(global, mine))
    }

    /// The host endpoints used (those naming an interface), sorted by name.
    pub fn host_endpoints(&self) -> &[HostEndpoint] {
        &self.host_endpoints
    }

    /// The host endpoint whose `expectedIPs` hold `ip` (the first by name).
    pub(crate) fn host_endpoint_with_ip(&self, ip: IpAddr) -> Option<usize> {
        self.host_endpoints.iter().position(|h| h.ips.contains(&ip))
    }

    /// Which policies each host endpoint meets, from the policies and its labels: after the
    /// policies changed.
    pub(crate) fn host_endpoint_chains(&mut self) {
        let (chains, forward) = self
            .host_endpoints
            .iter()
            .map(|h| {
                (
                    endpoint_chains(&self.policies, &h.selector_labels),
                    forward_chains(&self.policies, &h.selector_labels),
                )
            })
            .unzip();
        self.host_chains = chains;
        self.host_forward_chains = forward;
    }

    /// The node one of whose addresses `ip` is.
    pub(crate) fn node_with_ip(&self, ip: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, addresses)| addresses.all.contains(&ip))
            .map(|(name, _)| name.as_str())
    }

    /// Keeps only the sets some rule uses, sorted by key, so that a cluster does not depend
    /// on the order its policies were compiled in, nor keep the sets of policies left out.
    pub(crate) fn canonicalize_sets(&mut self) {
        let n = self.sets.len();
        let mut used = vec![false; n];
        self.for_each_entity(|e| {
            for set in [e.selector, e.not_selector].into_iter().flatten() {
                used[set] = true;
            }
        });
        let mut order: Vec<usize> = (0..n).filter(|&i| used[i]).collect();
        order.sort_by(|&a, &b| self.sets[a].key.cmp(&self.sets[b].key));
        if order.len() == n && order.iter().enumerate().all(|(i, &o)| i == o) {
            return;
        }
        let mut remap = vec![usize::MAX; n];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = new;
        }
        let mut old: Vec<Option<PeerSet>> = std::mem::take(&mut self.sets)
            .into_iter()
            .map(Some)
            .collect();
        self.sets = order.iter().filter_map(|&o| old[o].take()).collect();
        self.for_each_entity(|e| {
            for set in [&mut e.selector, &mut e.not_selector].into_iter().flatten() {
                *set = remap[*set];
            }
        });
    }

    /// Calls `f` on both ends of every rule of every policy and profile.
    fn for_each_entity(&mut self, mut f: impl FnMut(&mut Entity)) {
        let policy_rules = self
            .policies
            .iter_mut()
            .flat_map(|p| [p.ingress.as_mut(), p.egress.as_mut()])
            .flatten();
        let profile_rules = self
            .profiles
            .iter_mut()
            .flat_map(|p| [&mut p.ingress, &mut p.egress]);
        for rules in policy_rules.chain(profile_rules) {
            for rule in rules {
                f(&mut rule.source);
                f(&mut rule.destination);
            }
        }
    }
}

/// The order of policies: by tier, then order (missing: last), name, namespace and kind.
/// Policies equal in all of these (possible only with names that Calico's tier prefixing
/// makes equal) keep the order they were given in.
pub(crate) fn policy_order(a: &CompiledPolicy, b: &CompiledPolicy) -> Ordering {
    a.tier.cmp(&b.tier).then_with(|| {
        let order = |p: &CompiledPolicy| p.order.unwrap_or(f64::INFINITY);
        order(a)
            .total_cmp(&order(b))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| kind_rank(a.kind).cmp(&kind_rank(b.kind)))
    })
}

/// The policies that apply to an endpoint with these labels, per direction (`[ingress,
/// egress]`), grouped by tier, in order.
pub(crate) fn endpoint_chains(
    policies: &[CompiledPolicy],
    labels: &BTreeMap<String, String>,
) -> [Vec<TierChain>; 2] {
    chains_of(policies, labels, |_| true)
}

/// The same of the `applyOnForward` policies only: what traffic a node forwards through a
/// host endpoint with these labels meets.
pub(crate) fn forward_chains(
    policies: &[CompiledPolicy],
    labels: &BTreeMap<String, String>,
) -> [Vec<TierChain>; 2] {
    chains_of(policies, labels, |p| p.apply_on_forward)
}

fn chains_of(
    policies: &[CompiledPolicy],
    labels: &BTreeMap<String, String>,
    wanted: impl Fn(&CompiledPolicy) -> bool,
) -> [Vec<TierChain>; 2] {
    let mut chains: [Vec<TierChain>; 2] = [Vec::new(), Vec::new()];
    for (i, p) in policies.iter().enumerate().filter(|(_, p)| wanted(p)) {
        let applies = [PolicyType::Ingress, PolicyType::Egress].map(|d| p.applies(d));
        if applies == [false, false] || !p.selector.matches(labels) {
            continue;
        }
        for (chain, _) in chains.iter_mut().zip(applies).filter(|(_, a)| *a) {
            match chain.last_mut() {
                Some(last) if last.tier == p.tier => last.policies.push(i),
                _ => chain.push(TierChain {
                    tier: p.tier,
                    policies: vec![i],
                }),
            }
        }
    }
    chains
}

/// The indices (into `profiles`, sorted by name) of an endpoint's profiles (`names`): the
/// last profile of each name.
pub(crate) fn profile_indices(profiles: &[CompiledProfile], names: &[String]) -> Vec<usize> {
    names
        .iter()
        .map(|name| {
            let end = profiles.partition_point(|p| p.name.as_str() <= name.as_str());
            debug_assert!(end > 0 && profiles[end - 1].name == *name);
            end - 1
        })
        .collect()
}

pub(crate) fn index_by_id(endpoints: &[Endpoint]) -> HashMap<String, usize> {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| (ep.id.clone(), i))
        .collect()
}

/// Each address to the first endpoint (by id) that has it.
pub(crate) fn index_by_ip(endpoints: &[Endpoint]) -> HashMap<IpAddr, usize> {
    let mut by_ip = HashMap::new();
    for (i, ep) in endpoints.iter().enumerate() {
        for ip in &ep.ips {
            by_ip.entry(*ip).or_insert(i);
        }
    }
    by_ip
}

/// The final tie-break between equally ordered, equally named policies.
fn kind_rank(kind: PolicyKind) -> u8 {
    match kind {
        PolicyKind::GlobalNetworkPolicy => 0,
        PolicyKind::NetworkPolicy => 1,
        PolicyKind::KubernetesNetworkPolicy => 2,
    }
}

/// The kinds [`Cluster::from_resources`] reads.
pub(crate) fn relevant(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Namespace
            | Kind::Pod
            | Kind::WorkloadEndpoint
            | Kind::KubernetesNetworkPolicy
            | Kind::NetworkPolicy
            | Kind::GlobalNetworkPolicy
            | Kind::Tier
            | Kind::Profile
            | Kind::NetworkSet
            | Kind::GlobalNetworkSet
            | Kind::Node
            | Kind::AgentConfiguration
            | Kind::HostEndpoint
    )
}

/// The resources of the kinds read, in the order given, with their defaults applied.
fn sort_inputs(
    resources: impl IntoIterator<Item = Resource>,
) -> Result<Vec<Resource>, PolicyError> {
    let mut kept = Vec::new();
    let mut seen = HashSet::new();
    for mut resource in resources {
        let kind = resource.kind();
        if !relevant(kind) {
            continue;
        }
        let meta = resource.metadata();
        let key = (kind, meta.namespace.clone(), meta.name.clone());
        if !seen.insert(key) {
            return Err(PolicyError::Duplicate {
                resource: describe(kind, meta.namespace.as_deref(), &meta.name),
            });
        }
        resource.apply_defaults();
        kept.push(resource);
    }
    Ok(kept)
}

/// A HostEndpoint as policy sees it, or why it cannot be used yet.
pub(crate) fn build_host_endpoint(
    hep: &HostEndpointResource,
    namespaces: &NamespaceLabels,
    explicit_profiles: &HashMap<&str, &Profile>,
) -> Result<HostEndpoint, PolicyError> {
    let resource = describe(Kind::HostEndpoint, None, &hep.metadata.name);
    let unsupported = |feature: &str| PolicyError::Unsupported {
        resource: resource.clone(),
        feature: feature.to_owned(),
    };
    let interface = match hep.spec.interface_name.as_deref() {
        Some("*") => {
            return Err(unsupported(
                "spec.interfaceName \"*\" (a host endpoint for every interface)",
            ))
        }
        Some(iface) => iface.to_owned(),
        None => {
            return Err(unsupported(
                "a host endpoint without spec.interfaceName (found by its expectedIPs)",
            ))
        }
    };
    let mut selector_labels = hep.metadata.labels.clone();
    for profile in &hep.spec.profiles {
        for (k, v) in profile_labels(profile, namespaces, explicit_profiles) {
            selector_labels.entry(k).or_insert(v);
        }
    }
    Ok(HostEndpoint {
        name: hep.metadata.name.clone(),
        node: hep.spec.node.clone(),
        interface,
        ips: hep.spec.expected_ips.clone(),
        selector_labels,
        profiles: hep.spec.profiles.clone(),
    })
}

/// Each node's addresses, by name (the last of a name given twice).
pub(crate) fn node_addresses(nodes: &[&Node]) -> BTreeMap<String, NodeAddresses> {
    nodes
        .iter()
        .map(|n| (n.metadata.name.clone(), NodeAddresses::of(n)))
        .collect()
}

/// The AgentConfigurations by name (the last of a name given twice).
pub(crate) fn agent_configs(
    configs: &[&AgentConfiguration],
) -> BTreeMap<String, AgentConfiguration> {
    configs
        .iter()
        .map(|c| (c.metadata.name.clone(), (*c).clone()))
        .collect()
}

/// Namespace name → its labels.
pub(crate) type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// Each namespace's labels, with the name label Kubernetes always sets.
pub(crate) fn namespace_labels(namespaces: &[&Namespace]) -> NamespaceLabels {
    namespaces
        .iter()
        .map(|ns| {
            let name = ns.metadata.name.clone();
            let mut labels = ns.labels().clone();
            labels
                .entry(K8S_NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| name.clone());
            (name, labels)
        })
        .collect()
}

/// The given profiles by name (the last of a name given twice).
pub(crate) fn explicit_profiles<'r>(profiles: &[&'r Profile]) -> HashMap<&'r str, &'r Profile> {
    profiles
        .iter()
        .map(|p| (p.metadata.name.as_str(), *p))
        .collect()
}

/// The labels a profile gives the endpoints (and network sets) using it: Calico's generated
/// ones for `kns.*` and `ksa.*`, overlaid with an explicit Profile's `labelsToApply`.
fn profile_labels(
    profile: &str,
    namespaces: &NamespaceLabels,
    explicit: &HashMap<&str, &Profile>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(ns) = profile.strip_prefix(NAMESPACE_PROFILE_PREFIX) {
        let implicit = BTreeMap::from([(K8S_NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]);
        let ns_labels = namespaces.get(ns).unwrap_or(&implicit);
        for (k, v) in ns_labels {
            labels.insert(format!("{NAMESPACE_PREFIX}{k}"), v.clone());
        }
        labels.insert(format!("{NAMESPACE_PREFIX}{NAME_LABEL}"), ns.to_owned());
    } else if let Some((_, sa)) = profile
        .strip_prefix(SERVICE_ACCOUNT_PROFILE_PREFIX)
        .and_then(|rest| rest.split_once('.'))
    {
        labels.insert(
            format!("{SERVICE_ACCOUNT_PREFIX}{NAME_LABEL}"),
            sa.to_owned(),
        );
    }
    if let Some(p) = explicit.get(profile) {
        labels.extend(p.spec.labels_to_apply.clone());
    }
    labels
}

/// An endpoint being assembled from a Pod and/or WorkloadEndpoints.
struct Draft {
    endpoint: Endpoint,
    orchestrator: String,
    /// Whether `ips` already come from a WorkloadEndpoint (which then replaces the Pod's).
    ips_from_endpoint: bool,
}

/// The id of the endpoint a Pod makes (when it is not on the host network).
pub(crate) fn pod_endpoint_id(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace(), pod.metadata.name)
}

/// The id of the endpoint a WorkloadEndpoint belongs to.
pub(crate) fn workload_endpoint_id(wep: &WorkloadEndpoint) -> String {
    let spec = &wep.spec;
    let namespace = wep.metadata.namespace.as_deref().unwrap_or("default");
    let name = [&spec.pod, &spec.workload, &spec.container_id]
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(&wep.metadata.name);
    format!("{namespace}/{name}")
}

/// The endpoints of these pods and workload endpoints, sorted by id. Later pods of one id
/// replace earlier ones; the workload endpoints of one id combine in order.
pub(crate) fn build_endpoints(
    pods: &[&Pod],
    workload_endpoints: &[&WorkloadEndpoint],
    namespaces: &NamespaceLabels,
    explicit_profiles: &HashMap<&str, &Profile>,
) -> Vec<Endpoint> {
    let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !p.host_network()) {
        let namespace = pod.namespace().to_owned();
        let name = pod.metadata.name.clone();
        let sa = pod.service_account().to_owned();
        let id = pod_endpoint_id(pod);
        let endpoint = Endpoint {
            id: id.clone(),
            labels: pod.labels().clone(),
            selector_labels: BTreeMap::new(),
            ips: pod.ips(),
            named_ports: pod
                .named_ports()
                .into_iter()
                .map(|np| NamedPort {
                    name: np.name,
                    protocol: match np.protocol {
                        PortProtocol::Tcp => Protocol::Tcp,
                        PortProtocol::Udp => Protocol::Udp,
                        PortProtocol::Sctp => Protocol::Sctp,
                    },
                    port: np.port,
                })
                .collect(),
            profiles: vec![
                format!("{NAMESPACE_PROFILE_PREFIX}{namespace}"),
                format!("{SERVICE_ACCOUNT_PROFILE_PREFIX}{namespace}.{sa}"),
            ],
            node: pod.node_name().map(str::to_owned),
            interface: None,
            service_account: Some(sa),
            namespace,
            name,
        };
        drafts.insert(
            id,
            Draft {
                endpoint,
                orchestrator: ORCHESTRATOR_K8S.to_owned(),
                ips_from_endpoint: false,
            },
        );
    }
    for wep in workload_endpoints {
        let spec = &wep.spec;
        let namespace = wep.metadata.namespace.as_deref().unwrap_or("default");
        let name = [&spec.pod, &spec.workload, &spec.container_id]
            .into_iter()
            .flatten()
            .next()
            .unwrap_or(&wep.metadata.name)
            .clone();
        let id = format!("{namespace}/{name}");
        let ips: Vec<IpAddr> = spec.ip_networks.iter().map(IpNet::addr).collect();
        let named_ports: Vec<NamedPort> = spec
            .ports
            .iter()
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone(),
                    protocol: Protocol::from_number(p.protocol.number())?,
                    port: p.port,
                })
            })
            .collect();
        let draft = drafts.entry(id.clone()).or_insert_with(|| {
            let mut labels = wep.metadata.labels.clone();
            for generated in [LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT] {
                labels.remove(generated);
            }
            Draft {
                endpoint: Endpoint {
                    id,
                    namespace: namespace.to_owned(),
                    name,
                    labels,
                    selector_labels: BTreeMap::new(),
                    service_account: spec
                        .service_account_name
                        .clone()
                        .or_else(|| wep.metadata.labels.get(LABEL_SERVICE_ACCOUNT).cloned()),
                    ips: Vec::new(),
                    named_ports: Vec::new(),
                    profiles: Vec::new(),
                    node: None,
                    interface: None,
                },
                orchestrator: spec.orchestrator.clone(),
                ips_from_endpoint: false,
            }
        });
        let ep = &mut draft.endpoint;
        if !ips.is_empty() {
            if !draft.ips_from_endpoint {
                ep.ips.clear();
                draft.ips_from_endpoint = true;
            }
            for ip in ips {
                if !ep.ips.contains(&ip) {
                    ep.ips.push(ip);
                }
            }
        }
        if !named_ports.is_empty() {
            ep.named_ports = named_ports;
        }
        if !spec.profiles.is_empty() {
            ep.profiles = spec.profiles.clone();
        }
        if !spec.node.is_empty() {
            ep.node = Some(spec.node.clone());
        }
        if ep.interface.is_none() && !spec.interface_name.is_empty() {
            ep.interface = Some(spec.interface_name.clone());
        }
    }
    drafts
        .into_values()
        .map(|draft| {
            let mut ep = draft.endpoint;
            let mut labels = ep.labels.clone();
            labels.insert(LABEL_NAMESPACE.to_owned(), ep.namespace.clone());
            labels.insert(LABEL_ORCHESTRATOR.to_owned(), draft.orchestrator);
            if let Some(sa) = &ep.service_account {
                labels.insert(LABEL_SERVICE_ACCOUNT.to_owned(), sa.clone());
            }
            // The endpoint's own labels win over inherited ones.
            for profile in &ep.profiles {
                for (k, v) in profile_labels(profile, namespaces, explicit_profiles) {
                    labels.entry(k).or_insert(v);
                }
            }
            ep.selector_labels = labels;
            ep
        })
        .collect()
}

/// Network sets with the labels rule selectors see: a namespaced set also carries
/// `projectcalico.org/namespace` and inherits its namespace's profile labels, so that a
/// rule's `namespaceSelector` reaches it.
pub(crate) fn build_network_sets(
    network_sets: &[&NetworkSet],
    global_network_sets: &[&GlobalNetworkSet],
    namespaces: &NamespaceLabels,
    explicit_profiles: &HashMap<&str, &Profile>,
) -> Vec<LabelledNets> {
    let namespaced = network_sets.iter().map(|set| {
        let ns = set.metadata.namespace.as_deref().unwrap_or("default");
        let mut labels = set.metadata.labels.clone();
        labels.insert(LABEL_NAMESPACE.to_owned(), ns.to_owned());
        let profile = format!("{NAMESPACE_PROFILE_PREFIX}{ns}");
        for (k, v) in profile_labels(&profile, namespaces, explicit_profiles) {
            labels.entry(k).or_insert(v);
        }
        LabelledNets {
            labels,
            nets: set.spec.nets.iter().map(IpNet::trunc).collect(),
        }
    });
    let global = global_network_sets.iter().map(|set| LabelledNets {
        labels: set.metadata.labels.clone(),
        nets: set.spec.nets.iter().map(IpNet::trunc).collect(),
    });
    namespaced.chain(global).collect()
}

/// The given tiers plus Calico's built-in ones (`default` always, `kube-admin` and
/// `kube-baseline` when a policy uses them, so traces do not list empty tiers), in evaluation
/// order: by order (missing: last), then name.
pub(crate) fn build_tiers(given: &[&Tier], referenced: &HashSet<&str>) -> Vec<CompiledTier> {
    let mut tiers: Vec<(Option<f64>, CompiledTier)> = given
        .iter()
        .map(|t| {
            (
                t.spec.order,
                CompiledTier {
                    name: t.metadata.name.clone(),
                    default_pass: t.default_action() == TierDefaultAction::Pass,
                },
            )
        })
        .collect();
    let built_in = [
        (DEFAULT_TIER, DEFAULT_TIER_ORDER, false),
        (KUBE_ADMIN_TIER, KUBE_ADMIN_TIER_ORDER, true),
        (KUBE_BASELINE_TIER, KUBE_BASELINE_TIER_ORDER, true),
    ];
    for (name, order, default_pass) in built_in {
        let wanted = name == DEFAULT_TIER || referenced.contains(name);
        if wanted && !tiers.iter().any(|(_, t)| t.name == name) {
            tiers.push((
                Some(order),
                CompiledTier {
                    name: name.to_owned(),
                    default_pass,
                },
            ));
        }
    }
    tiers.sort_by(|(oa, a), (ob, b)| {
        oa.unwrap_or(f64::INFINITY)
            .total_cmp(&ob.unwrap_or(f64::INFINITY))
            .then_with(|| a.name.cmp(&b.name))
    });
    tiers.into_iter().map(|(_, t)| t).collect()
}

/// `a && b && …` of whichever parts are present; `None` when none is.
pub(crate) fn and_all(parts: impl IntoIterator<Item = Option<Expr>>) -> Option<Expr> {
    let mut parts: Vec<Expr> = parts.into_iter().flatten().collect();
    match parts.len() {
        0 => None,
        1 => parts.pop(),
        _ => Some(Expr::And(parts)),
    }
}
