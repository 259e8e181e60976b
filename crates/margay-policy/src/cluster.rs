//! The resolved model: endpoints with the labels selectors see, tiers, compiled policies and
//! profiles, and per endpoint the policies that apply to it in each direction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{
    GlobalNetworkPolicy, GlobalNetworkSet, Kind, KubernetesNetworkPolicy, Namespace, NetworkPolicy,
    NetworkSet, Pod, PolicyType, PortProtocol, Profile, Resource, Tier, TierDefaultAction,
    WorkloadEndpoint, DEFAULT_TIER, DEFAULT_TIER_ORDER, KUBE_ADMIN_TIER, KUBE_ADMIN_TIER_ORDER,
    KUBE_BASELINE_TIER, KUBE_BASELINE_TIER_ORDER,
};
use margay_selector::Expr;
use serde::Serialize;

use crate::compile::{self, CompiledPolicy, CompiledProfile};
use crate::eval::PolicyKind;
use crate::{PolicyError, Protocol};

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

/// A container port with a name, which rules can match by that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What a rule selector stands for, as Felix programs it into an IP set: the endpoints it
/// selects, and the CIDRs of the network sets it selects.
#[derive(Debug, Clone)]
pub(crate) struct PeerSet {
    /// The selector, with namespace, service account and namespace-selector scoping folded
    /// in, in canonical form: the set's definition.
    pub selector: String,
    pub endpoints: Vec<bool>,
    pub nets: Vec<IpNet>,
}

/// A tier in evaluation order.
#[derive(Debug, Clone)]
pub(crate) struct CompiledTier {
    pub name: String,
    pub default_pass: bool,
}

/// The policies of one tier that apply to an endpoint in one direction, in order.
#[derive(Debug, Clone)]
pub(crate) struct TierChain {
    pub tier: usize,
    pub policies: Vec<usize>,
}

/// A named set of networks with the labels rule selectors see on it.
#[derive(Debug, Clone)]
pub(crate) struct LabelledNets {
    pub labels: BTreeMap<String, String>,
    pub nets: Vec<IpNet>,
}

/// The resolved model every evaluation works on.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub(crate) endpoints: Vec<Endpoint>,
    by_id: HashMap<String, usize>,
    by_ip: HashMap<IpAddr, usize>,
    /// In evaluation order.
    pub(crate) tiers: Vec<CompiledTier>,
    /// Sorted by tier, then as within a tier.
    pub(crate) policies: Vec<CompiledPolicy>,
    pub(crate) profiles: Vec<CompiledProfile>,
    pub(crate) sets: Vec<PeerSet>,
    /// Per endpoint: `[ingress, egress]` chains, tiers in order.
    pub(crate) chains: Vec<[Vec<TierChain>; 2]>,
    /// Per endpoint: indices into `profiles`, in the endpoint's order.
    pub(crate) endpoint_profiles: Vec<Vec<usize>>,
}

/// Index of a direction in [`Cluster::chains`].
pub(crate) fn direction_index(direction: PolicyType) -> usize {
    match direction {
        PolicyType::Ingress => 0,
        PolicyType::Egress => 1,
    }
}

/// The resources sorted by kind, before anything is resolved.
#[derive(Default)]
struct Inputs {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    workload_endpoints: Vec<WorkloadEndpoint>,
    kubernetes_policies: Vec<KubernetesNetworkPolicy>,
    policies: Vec<NetworkPolicy>,
    global_policies: Vec<GlobalNetworkPolicy>,
    tiers: Vec<Tier>,
    profiles: Vec<Profile>,
    network_sets: Vec<NetworkSet>,
    global_network_sets: Vec<GlobalNetworkSet>,
}

/// `Kind ns/name` or `Kind name`, how errors name a resource.
pub(crate) fn describe(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.name()),
        None => format!("{} {name}", kind.name()),
    }
}

impl Cluster {
    /// Resolves Namespaces, Pods (labels, namespace, `spec.serviceAccountName`, container
    /// ports including named ones, addresses from `status.podIPs[].ip` / `status.podIP`),
    /// WorkloadEndpoints (as stored by the CNI plugin: labels, `ipNetworks`, ports,
    /// profiles), Kubernetes NetworkPolicies, NetworkPolicies, GlobalNetworkPolicies, Tiers,
    /// Profiles, NetworkSets and GlobalNetworkSets. Other kinds are ignored. Each resource
    /// gets its kind's defaults first, so resources built in code behave like decoded ones.
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
    /// `doNotTrack` and `preDNAT` policies, and rules matching Kubernetes `services` (the
    /// Service and EndpointSlice objects they need are not read). `applyOnForward` is
    /// accepted: it only changes how policy applies to host endpoints, which are not modelled
    /// yet.
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Cluster, PolicyError> {
        Cluster::build(resources, false).map(|(cluster, _)| cluster)
    }

    /// Like [`Cluster::from_resources`], except that a policy the engine cannot use (a
    /// selector that does not parse, a tier that does not exist, a feature not supported
    /// yet, an invalid port) is left out, as if it were not stored, instead of failing the
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
        let inputs = sort_inputs(resources)?;
        let namespaces = namespace_labels(&inputs.namespaces);
        let explicit_profiles: HashMap<&str, &Profile> = inputs
            .profiles
            .iter()
            .map(|p| (p.metadata.name.as_str(), p))
            .collect();
        let endpoints = build_endpoints(&inputs, &namespaces, &explicit_profiles);
        let network_sets = build_network_sets(&inputs, &namespaces, &explicit_profiles);

        let mut builder = compile::Builder::new(&endpoints, &network_sets);
        let mut skipped = Vec::new();
        let mut keep = |compiled: Result<CompiledPolicy, PolicyError>| match compiled {
            Ok(policy) => Ok(Some(policy)),
            Err(e) if skip_bad_policies => {
                skipped.push(e);
                Ok(None)
            }
            Err(e) => Err(e),
        };
        let mut policies = Vec::new();
        for knp in &inputs.kubernetes_policies {
            policies.extend(keep(builder.kubernetes_policy(knp))?);
        }
        for np in &inputs.policies {
            policies.extend(keep(builder.network_policy(np))?);
        }
        for gnp in &inputs.global_policies {
            policies.extend(keep(builder.global_network_policy(gnp))?);
        }
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
                    skipped.push(error);
                }
            }
        }
        let mut policies = placed;
        policies.sort_by(|a, b| {
            a.tier.cmp(&b.tier).then_with(|| {
                let order = |p: &CompiledPolicy| p.order.unwrap_or(f64::INFINITY);
                order(a)
                    .total_cmp(&order(b))
                    .then_with(|| a.name.cmp(&b.name))
                    .then_with(|| a.namespace.cmp(&b.namespace))
                    .then_with(|| kind_rank(a.kind).cmp(&kind_rank(b.kind)))
            })
        });

        // Every given profile is compiled, used or not, so that its errors surface.
        let mut profiles = Vec::new();
        let mut profile_index: HashMap<String, usize> = HashMap::new();
        for p in &inputs.profiles {
            profiles.push(builder.profile(p)?);
            profile_index.insert(p.metadata.name.clone(), profiles.len() - 1);
        }
        let mut endpoint_profiles = Vec::with_capacity(endpoints.len());
        for ep in &endpoints {
            let mut indices = Vec::with_capacity(ep.profiles.len());
            for name in &ep.profiles {
                let index = match profile_index.get(name) {
                    Some(i) => *i,
                    None => {
                        profiles.push(CompiledProfile::calico_default(name));
                        profile_index.insert(name.clone(), profiles.len() - 1);
                        profiles.len() - 1
                    }
                };
                indices.push(index);
            }
            endpoint_profiles.push(indices);
        }

        let chains = endpoints
            .iter()
            .map(|ep| {
                [PolicyType::Ingress, PolicyType::Egress].map(|direction| {
                    let mut chain: Vec<TierChain> = Vec::new();
                    for (i, p) in policies.iter().enumerate() {
                        if !p.applies(direction) || !p.selector.matches(&ep.selector_labels) {
                            continue;
                        }
                        match chain.last_mut() {
                            Some(last) if last.tier == p.tier => last.policies.push(i),
                            _ => chain.push(TierChain {
                                tier: p.tier,
                                policies: vec![i],
                            }),
                        }
                    }
                    chain
                })
            })
            .collect();

        let sets = builder.into_sets();
        let by_id = endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| (ep.id.clone(), i))
            .collect();
        let mut by_ip = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(i);
            }
        }
        let cluster = Cluster {
            endpoints,
            by_id,
            by_ip,
            tiers,
            policies,
            profiles,
            sets,
            chains,
            endpoint_profiles,
        };
        Ok((cluster, skipped))
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
}

/// The final tie-break between equally ordered, equally named policies.
fn kind_rank(kind: PolicyKind) -> u8 {
    match kind {
        PolicyKind::GlobalNetworkPolicy => 0,
        PolicyKind::NetworkPolicy => 1,
        PolicyKind::KubernetesNetworkPolicy => 2,
    }
}

fn sort_inputs(resources: impl IntoIterator<Item = Resource>) -> Result<Inputs, PolicyError> {
    let mut inputs = Inputs::default();
    let mut seen = HashSet::new();
    for mut resource in resources {
        let kind = resource.kind();
        let meta = resource.metadata();
        let key = (kind, meta.namespace.clone(), meta.name.clone());
        let relevant = matches!(
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
        );
        if !relevant {
            continue;
        }
        if !seen.insert(key) {
            return Err(PolicyError::Duplicate {
                resource: describe(kind, meta.namespace.as_deref(), &meta.name),
            });
        }
        resource.apply_defaults();
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
            _ => {}
        }
    }
    Ok(inputs)
}

/// Each namespace's labels, with the name label Kubernetes always sets.
fn namespace_labels(namespaces: &[Namespace]) -> HashMap<String, BTreeMap<String, String>> {
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

/// The labels a profile gives the endpoints (and network sets) using it: Calico's generated
/// ones for `kns.*` and `ksa.*`, overlaid with an explicit Profile's `labelsToApply`.
fn profile_labels(
    profile: &str,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
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

fn build_endpoints(
    inputs: &Inputs,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    explicit_profiles: &HashMap<&str, &Profile>,
) -> Vec<Endpoint> {
    let mut drafts: BTreeMap<String, Draft> = BTreeMap::new();
    for pod in inputs.pods.iter().filter(|p| !p.host_network()) {
        let namespace = pod.namespace().to_owned();
        let name = pod.metadata.name.clone();
        let sa = pod.service_account().to_owned();
        let id = format!("{namespace}/{name}");
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
    for wep in &inputs.workload_endpoints {
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
fn build_network_sets(
    inputs: &Inputs,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
    explicit_profiles: &HashMap<&str, &Profile>,
) -> Vec<LabelledNets> {
    let namespaced = inputs.network_sets.iter().map(|set| {
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
    let global = inputs.global_network_sets.iter().map(|set| LabelledNets {
        labels: set.metadata.labels.clone(),
        nets: set.spec.nets.iter().map(IpNet::trunc).collect(),
    });
    namespaced.chain(global).collect()
}

/// The given tiers plus Calico's built-in ones (`default` always, `kube-admin` and
/// `kube-baseline` when a policy uses them, so traces do not list empty tiers), in evaluation
/// order: by order (missing: last), then name.
fn build_tiers(given: &[Tier], referenced: &HashSet<&str>) -> Vec<CompiledTier> {
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
