//! Turning policy resources into what evaluation needs: selectors combined the way Calico's
//! backend combines them, rule selectors resolved into peer sets, and Kubernetes
//! NetworkPolicies converted into Calico policies exactly as Calico's converter does.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use margay_api::{
    Action, EntityRule, GlobalNetworkPolicy, IcmpFields, IntOrString, Kind,
    KubernetesNetworkPolicy, LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    PolicyType, Port, Profile, Protocol as RuleProtocol, Rule, ServiceAccountMatch,
    KUBERNETES_POLICY_ORDER,
};
use margay_selector::{Expr, Selector};

use crate::cluster::{
    and_all, describe, Endpoint, HostEndpoint, LabelledNets, PeerSet, LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT, NAMESPACE_PREFIX, NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_PREFIX,
};
use crate::eval::{PolicyKind, PolicyRef};
use crate::{PolicyError, ResourceKey};

/// The prefix Calico's converter gives the policies it makes from Kubernetes ones.
const KUBERNETES_POLICY_PREFIX: &str = "knp.default.";
/// The profile Calico provides for host endpoints that should allow what no policy decides.
pub(crate) const DEFAULT_ALLOW_PROFILE: &str = "projectcalico-default-allow";

/// One end of a rule, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entity {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    /// Index into the cluster's peer sets.
    pub selector: Option<usize>,
    pub not_selector: Option<usize>,
    pub ports: Vec<Port>,
    pub not_ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledRule {
    pub action: Action,
    /// Where the rule came from in its resource, e.g. `spec.ingress[0].from[1]`.
    pub origin: String,
    /// 4 or 6: from `ipVersion`, or implied by the rule's CIDRs (Felix renders such a rule
    /// only into that family's chains).
    pub family: Option<u8>,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    /// `icmp`/`notICMP` matches, which need protocol ICMP (or ICMPv6) and so never match a
    /// TCP, UDP or SCTP packet.
    pub icmp: Option<IcmpFields>,
    pub not_icmp: Option<IcmpFields>,
    pub source: Entity,
    pub destination: Entity,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledPolicy {
    /// The resource it was compiled from.
    pub key: ResourceKey,
    pub kind: PolicyKind,
    /// How errors name the resource: its kind and name as written (`NetworkPolicy x/allow`).
    pub resource: String,
    pub namespace: Option<String>,
    /// Calico's name: `knp.default.<name>`, `<tier>.<name>`.
    pub name: String,
    pub tier_name: String,
    /// Index into the cluster's tiers, set once tiers are known.
    pub tier: usize,
    pub order: Option<f64>,
    /// The endpoints it applies to, with namespace and service account scoping folded in.
    pub selector: Expr,
    /// `None` when the policy does not apply in that direction (not in its `types`).
    pub ingress: Option<Vec<CompiledRule>>,
    pub egress: Option<Vec<CompiledRule>>,
    /// A GlobalNetworkPolicy's `applyOnForward`: it also applies to traffic the node forwards
    /// through the host endpoints it selects.
    pub apply_on_forward: bool,
}

impl CompiledPolicy {
    pub fn applies(&self, direction: PolicyType) -> bool {
        self.rules(direction).is_some()
    }

    pub fn rules(&self, direction: PolicyType) -> Option<&[CompiledRule]> {
        match direction {
            PolicyType::Ingress => self.ingress.as_deref(),
            PolicyType::Egress => self.egress.as_deref(),
        }
    }

    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CompiledProfile {
    pub name: String,
    pub ingress: Vec<CompiledRule>,
    pub egress: Vec<CompiledRule>,
}

impl CompiledProfile {
    /// What Calico generates when no Profile resource of that name is given: `kns.<ns>`
    /// and `projectcalico-default-allow` (for host endpoints) allow everything both ways;
    /// `ksa.<ns>.<sa>` only carries labels and has no rules; any other name has no rules
    /// either.
    pub fn calico_default(name: &str) -> CompiledProfile {
        let rules = if name.starts_with(NAMESPACE_PROFILE_PREFIX) || name == DEFAULT_ALLOW_PROFILE {
            vec![CompiledRule {
                action: Action::Allow,
                origin: "Calico's default: allow everything".to_owned(),
                family: None,
                protocol: None,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source: Entity::any(),
                destination: Entity::any(),
            }]
        } else {
            Vec::new()
        };
        CompiledProfile {
            name: name.to_owned(),
            ingress: rules.clone(),
            egress: rules,
        }
    }

    pub fn rules(&self, direction: PolicyType) -> &[CompiledRule] {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

impl Entity {
    fn any() -> Entity {
        Entity {
            nets: Vec::new(),
            not_nets: Vec::new(),
            selector: None,
            not_selector: None,
            ports: Vec::new(),
            not_ports: Vec::new(),
        }
    }
}

/// Compiles policies and profiles against the cluster's endpoints and network sets,
/// collecting the peer sets their rules refer to.
pub(crate) struct Builder<'a> {
    endpoints: &'a [Endpoint],
    network_sets: &'a [LabelledNets],
    host_endpoints: &'a [HostEndpoint],
    sets: Vec<PeerSet>,
    /// Identical selectors share one set (`PeerSet` is the costly part to build).
    set_index: HashMap<String, usize>,
}

/// Which resource is being compiled, for error messages.
struct Context<'r> {
    resource: &'r str,
    /// `Some(ns)` for namespaced policies, whose rule selectors are scoped to `ns`.
    namespace: Option<&'r str>,
}

impl<'a> Builder<'a> {
    pub fn new(
        endpoints: &'a [Endpoint],
        network_sets: &'a [LabelledNets],
        host_endpoints: &'a [HostEndpoint],
    ) -> Builder<'a> {
        Builder::with_sets(endpoints, network_sets, host_endpoints, Vec::new())
    }

    /// A builder that adds to `sets` (computed for these endpoints, network sets and host
    /// endpoints).
    pub fn with_sets(
        endpoints: &'a [Endpoint],
        network_sets: &'a [LabelledNets],
        host_endpoints: &'a [HostEndpoint],
        sets: Vec<PeerSet>,
    ) -> Builder<'a> {
        let set_index = sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        Builder {
            endpoints,
            network_sets,
            host_endpoints,
            sets,
            set_index,
        }
    }

    pub fn into_sets(self) -> Vec<PeerSet> {
        self.sets
    }

    /// Calico's converter: a policy `knp.default.<name>` in the `default` tier at order 1000,
    /// selecting Kubernetes pods of its namespace; each rule becomes one Allow rule per
    /// protocol and peer.
    pub fn kubernetes_policy(
        &mut self,
        knp: &KubernetesNetworkPolicy,
    ) -> Result<CompiledPolicy, PolicyError> {
        let namespace = knp.metadata.namespace.as_deref().unwrap_or("default");
        let name = format!("{KUBERNETES_POLICY_PREFIX}{}", knp.metadata.name);
        let resource = describe(
            Kind::KubernetesNetworkPolicy,
            Some(namespace),
            &knp.metadata.name,
        );
        let cx = Context {
            resource: &resource,
            namespace: Some(namespace),
        };
        let spec = &knp.spec;
        let pod_selector = kubernetes_selector(Some(&spec.pod_selector), SelectorKind::Pod);
        let selector = and_all([
            namespace_equals(namespace),
            parse(&cx, "spec.podSelector", &pod_selector)?,
        ])
        .unwrap_or(Expr::All);
        let mut ingress = Vec::new();
        for (i, rule) in spec.ingress.iter().enumerate() {
            let path = format!("spec.ingress[{i}]");
            let converted = kubernetes_rule(&cx, &path, &rule.from, &rule.ports, true)?;
            for (rule, origin) in converted {
                ingress.push(self.rule(&cx, &rule, origin)?);
            }
        }
        let mut egress = Vec::new();
        for (i, rule) in spec.egress.iter().enumerate() {
            let path = format!("spec.egress[{i}]");
            let converted = kubernetes_rule(&cx, &path, &rule.to, &rule.ports, false)?;
            for (rule, origin) in converted {
                egress.push(self.rule(&cx, &rule, origin)?);
            }
        }
        let types = &spec.policy_types;
        Ok(CompiledPolicy {
            key: ResourceKey::of(Kind::KubernetesNetworkPolicy, &knp.metadata),
            kind: PolicyKind::KubernetesNetworkPolicy,
            resource: resource.clone(),
            namespace: Some(namespace.to_owned()),
            name,
            tier_name: margay_api::DEFAULT_TIER.to_owned(),
            tier: 0,
            order: Some(KUBERNETES_POLICY_ORDER),
            selector,
            ingress: types.contains(&PolicyType::Ingress).then_some(ingress),
            egress: types.contains(&PolicyType::Egress).then_some(egress),
            apply_on_forward: false,
        })
    }

    pub fn network_policy(&mut self, np: &NetworkPolicy) -> Result<CompiledPolicy, PolicyError> {
        let namespace = np.metadata.namespace.as_deref().unwrap_or("default");
        let resource = describe(Kind::NetworkPolicy, Some(namespace), &np.metadata.name);
        let cx = Context {
            resource: &resource,
            namespace: Some(namespace),
        };
        let s = &np.spec;
        let selector = and_all([
            namespace_equals(namespace),
            parse(&cx, "spec.selector", &s.selector)?,
            service_account_selector(&cx, s.service_account_selector.as_deref())?,
        ])
        .unwrap_or(Expr::All);
        Ok(CompiledPolicy {
            key: ResourceKey::of(Kind::NetworkPolicy, &np.metadata),
            kind: PolicyKind::NetworkPolicy,
            resource: resource.clone(),
            namespace: Some(namespace.to_owned()),
            name: tiered_name(&s.tier, &np.metadata.name),
            tier_name: s.tier.clone(),
            tier: 0,
            order: s.order,
            selector,
            ingress: self.typed_rules(&cx, &s.types, PolicyType::Ingress, &s.ingress)?,
            egress: self.typed_rules(&cx, &s.types, PolicyType::Egress, &s.egress)?,
            apply_on_forward: false,
        })
    }

    pub fn global_network_policy(
        &mut self,
        gnp: &GlobalNetworkPolicy,
    ) -> Result<CompiledPolicy, PolicyError> {
        let resource = describe(Kind::GlobalNetworkPolicy, None, &gnp.metadata.name);
        let cx = Context {
            resource: &resource,
            namespace: None,
        };
        let s = &gnp.spec;
        for (set, feature) in [(s.do_not_track, "doNotTrack"), (s.pre_dnat, "preDNAT")] {
            if set {
                return Err(PolicyError::Unsupported {
                    resource: resource.clone(),
                    feature: feature.to_owned(),
                });
            }
        }
        let namespace_selector = match &s.namespace_selector {
            Some(text) => {
                let parsed = parse(&cx, "spec.namespaceSelector", text)?;
                parsed.map(|e| namespace_selector_expr(&e))
            }
            None => None,
        };
        let selector = and_all([
            parse(&cx, "spec.selector", &s.selector)?,
            namespace_selector,
            service_account_selector(&cx, s.service_account_selector.as_deref())?,
        ])
        .unwrap_or(Expr::All);
        Ok(CompiledPolicy {
            key: ResourceKey::of(Kind::GlobalNetworkPolicy, &gnp.metadata),
            kind: PolicyKind::GlobalNetworkPolicy,
            resource: resource.clone(),
            namespace: None,
            name: tiered_name(&s.tier, &gnp.metadata.name),
            tier_name: s.tier.clone(),
            tier: 0,
            order: s.order,
            selector,
            ingress: self.typed_rules(&cx, &s.types, PolicyType::Ingress, &s.ingress)?,
            egress: self.typed_rules(&cx, &s.types, PolicyType::Egress, &s.egress)?,
            apply_on_forward: s.apply_on_forward,
        })
    }

    pub fn profile(&mut self, profile: &Profile) -> Result<CompiledProfile, PolicyError> {
        let resource = describe(Kind::Profile, None, &profile.metadata.name);
        let cx = Context {
            resource: &resource,
            namespace: None,
        };
        Ok(CompiledProfile {
            name: profile.metadata.name.clone(),
            ingress: self.rules(&cx, "spec.ingress", &profile.spec.ingress)?,
            egress: self.rules(&cx, "spec.egress", &profile.spec.egress)?,
        })
    }

    fn typed_rules(
        &mut self,
        cx: &Context<'_>,
        types: &[PolicyType],
        direction: PolicyType,
        rules: &[Rule],
    ) -> Result<Option<Vec<CompiledRule>>, PolicyError> {
        if !types.contains(&direction) {
            return Ok(None);
        }
        let path = match direction {
            PolicyType::Ingress => "spec.ingress",
            PolicyType::Egress => "spec.egress",
        };
        self.rules(cx, path, rules).map(Some)
    }

    fn rules(
        &mut self,
        cx: &Context<'_>,
        path: &str,
        rules: &[Rule],
    ) -> Result<Vec<CompiledRule>, PolicyError> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| self.rule(cx, r, format!("{path}[{i}]")))
            .collect()
    }

    fn rule(
        &mut self,
        cx: &Context<'_>,
        rule: &Rule,
        origin: String,
    ) -> Result<CompiledRule, PolicyError> {
        let source = self.entity(cx, &format!("{origin}.source"), &rule.source)?;
        let destination = self.entity(cx, &format!("{origin}.destination"), &rule.destination)?;
        let implied = [
            &rule.source.nets,
            &rule.source.not_nets,
            &rule.destination.nets,
            &rule.destination.not_nets,
        ]
        .into_iter()
        .flatten()
        .map(|net| match net {
            IpNet::V4(_) => 4,
            IpNet::V6(_) => 6,
        })
        .next();
        Ok(CompiledRule {
            action: rule.action,
            family: rule.ip_version.or(implied),
            protocol: rule.protocol.map(RuleProtocol::number),
            not_protocol: rule.not_protocol.map(RuleProtocol::number),
            icmp: rule.icmp,
            not_icmp: rule.not_icmp,
            source,
            destination,
            origin,
        })
    }

    fn entity(
        &mut self,
        cx: &Context<'_>,
        path: &str,
        er: &EntityRule,
    ) -> Result<Entity, PolicyError> {
        if er.services.is_some() {
            return Err(PolicyError::Unsupported {
                resource: cx.resource.to_owned(),
                feature: format!(
                    "{path}.services (matching the endpoints of a Kubernetes Service)"
                ),
            });
        }
        let selector = entity_selector(cx, path, er)?.map(|expr| self.peer_set(expr));
        let not_selector = match &er.not_selector {
            Some(text) => {
                parse(cx, &format!("{path}.notSelector"), text)?.map(|e| self.peer_set(e))
            }
            None => None,
        };
        Ok(Entity {
            nets: er.nets.iter().map(IpNet::trunc).collect(),
            not_nets: er.not_nets.iter().map(IpNet::trunc).collect(),
            selector,
            not_selector,
            ports: er.ports.clone(),
            not_ports: er.not_ports.clone(),
        })
    }

    /// The set a selector stands for: the endpoints it selects and the CIDRs of the network
    /// sets it selects.
    fn peer_set(&mut self, expr: Expr) -> usize {
        let key = format!("{expr:?}");
        if let Some(i) = self.set_index.get(&key) {
            return *i;
        }
        let set = PeerSet {
            key: key.clone(),
            selector: canonical(&expr),
            endpoints: self
                .endpoints
                .iter()
                .map(|ep| expr.matches(&ep.selector_labels))
                .collect(),
            nets: set_nets(&expr, self.network_sets, self.host_endpoints),
            expr,
        };
        self.sets.push(set);
        self.set_index.insert(key, self.sets.len() - 1);
        self.sets.len() - 1
    }
}

/// The nets of the network sets `expr` selects, in order, then the `expectedIPs` of the host
/// endpoints it selects (as Felix puts them in the selector's IP set).
pub(crate) fn set_nets(
    expr: &Expr,
    network_sets: &[LabelledNets],
    host_endpoints: &[HostEndpoint],
) -> Vec<IpNet> {
    let sets = network_sets
        .iter()
        .filter(|set| expr.matches(&set.labels))
        .flat_map(|set| set.nets.iter().copied());
    let hosts = host_endpoints
        .iter()
        .filter(|h| expr.matches(&h.selector_labels))
        .flat_map(|h| h.ips.iter().map(|ip| IpNet::from(*ip)));
    sets.chain(hosts).collect()
}

/// A selector's canonical text (Calico's `Selector.String()`). An expression the engine
/// combined beyond what selector text can express (nested past the parser's depth limit)
/// keeps its structural form, which is just as unique.
fn canonical(expr: &Expr) -> String {
    match Selector::from_expr(expr.clone()) {
        Ok(selector) => selector.to_string(),
        Err(_) => format!("{expr:?}"),
    }
}

/// Calico's name for a policy in a tier: `<tier>.<name>` (a name already prefixed with its
/// tier, as Calico requires outside the default tier, is kept).
fn tiered_name(tier: &str, name: &str) -> String {
    if name
        .strip_prefix(tier)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        name.to_owned()
    } else {
        format!("{tier}.{name}")
    }
}

/// Parses a selector; `None` for the blank selector, which means "no constraint".
fn parse(cx: &Context<'_>, field: &str, text: &str) -> Result<Option<Expr>, PolicyError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Selector::parse(text)
        .map(|s| Some(s.into_expr()))
        .map_err(|error| PolicyError::Selector {
            resource: cx.resource.to_owned(),
            field: format!("{field} {text:?}"),
            error,
        })
}

fn namespace_equals(namespace: &str) -> Option<Expr> {
    Some(Expr::Equals {
        key: LABEL_NAMESPACE.to_owned(),
        value: namespace.to_owned(),
    })
}

/// Calico's `getEndpointSelector`: the selector of one end of a rule, combining its
/// `selector`, `serviceAccounts` and `namespaceSelector`, and scoping a namespaced policy's
/// rule to its own namespace as soon as any selector field is used (`notSelector`
/// included, though the `notSelector` itself stays unscoped).
fn entity_selector(
    cx: &Context<'_>,
    path: &str,
    er: &EntityRule,
) -> Result<Option<Expr>, PolicyError> {
    let namespace_selector = match &er.namespace_selector {
        Some(text) => parse(cx, &format!("{path}.namespaceSelector"), text)?
            .map(|e| namespace_selector_expr(&e)),
        None => None,
    };
    let namespace_scope = namespace_selector
        .clone()
        .or_else(|| cx.namespace.and_then(namespace_equals));
    let service_accounts = match &er.service_accounts {
        Some(sam) => service_accounts_expr(cx, &format!("{path}.serviceAccounts"), sam)?,
        None => None,
    };
    let selector = match &er.selector {
        Some(text) => parse(cx, &format!("{path}.selector"), text)?,
        None => None,
    };
    let selector = and_all([service_accounts, selector]);
    let scoped = selector.is_some() || er.not_selector.is_some() || namespace_selector.is_some();
    Ok(match namespace_scope {
        Some(scope) if scoped => and_all([Some(scope), selector]),
        _ => selector,
    })
}

/// A namespace selector as Calico applies it to endpoints: its keys prefixed `pcns.`,
/// `all()` meaning "any namespaced endpoint" and `global()` "anything not namespaced"
/// (global network sets and host endpoints).
fn namespace_selector_expr(expr: &Expr) -> Expr {
    let has_namespace = || Expr::Has {
        key: LABEL_NAMESPACE.to_owned(),
    };
    prefix_keys(expr, NAMESPACE_PREFIX, &|e| match e {
        Expr::All => Some(has_namespace()),
        Expr::Global => Some(Expr::Not(Box::new(has_namespace()))),
        _ => None,
    })
}

/// Calico's `parseServiceAccounts`: the selector over `pcsa.`-prefixed labels, and the names
/// as `projectcalico.org/serviceaccount in {…}`, ANDed.
fn service_accounts_expr(
    cx: &Context<'_>,
    path: &str,
    sam: &ServiceAccountMatch,
) -> Result<Option<Expr>, PolicyError> {
    let selector =
        service_account_selector_at(cx, &format!("{path}.selector"), sam.selector.as_deref())?;
    let names = (!sam.names.is_empty()).then(|| Expr::In {
        key: LABEL_SERVICE_ACCOUNT.to_owned(),
        values: sam.names.iter().cloned().collect(),
    });
    Ok(and_all([selector, names]))
}

/// A policy's `serviceAccountSelector`, over the labels inherited from service accounts.
fn service_account_selector(
    cx: &Context<'_>,
    text: Option<&str>,
) -> Result<Option<Expr>, PolicyError> {
    service_account_selector_at(cx, "spec.serviceAccountSelector", text)
}

fn service_account_selector_at(
    cx: &Context<'_>,
    field: &str,
    text: Option<&str>,
) -> Result<Option<Expr>, PolicyError> {
    let Some(text) = text else {
        return Ok(None);
    };
    Ok(parse(cx, field, text)?.map(|e| prefix_keys(&e, SERVICE_ACCOUNT_PREFIX, &|_| None)))
}

/// Rewrites every label key to `prefix + key` (Calico's `PrefixVisitor`); `replace` may
/// substitute whole nodes first.
fn prefix_keys(expr: &Expr, prefix: &str, replace: &dyn Fn(&Expr) -> Option<Expr>) -> Expr {
    if let Some(replaced) = replace(expr) {
        return replaced;
    }
    let key = |k: &str| format!("{prefix}{k}");
    match expr {
        Expr::All => Expr::All,
        Expr::Global => Expr::Global,
        Expr::Has { key: k } => Expr::Has { key: key(k) },
        Expr::Equals { key: k, value } => Expr::Equals {
            key: key(k),
            value: value.clone(),
        },
        Expr::NotEquals { key: k, value } => Expr::NotEquals {
            key: key(k),
            value: value.clone(),
        },
        Expr::In { key: k, values } => Expr::In {
            key: key(k),
            values: values.clone(),
        },
        Expr::NotIn { key: k, values } => Expr::NotIn {
            key: key(k),
            values: values.clone(),
        },
        Expr::Contains { key: k, value } => Expr::Contains {
            key: key(k),
            value: value.clone(),
        },
        Expr::StartsWith { key: k, value } => Expr::StartsWith {
            key: key(k),
            value: value.clone(),
        },
        Expr::EndsWith { key: k, value } => Expr::EndsWith {
            key: key(k),
            value: value.clone(),
        },
        Expr::Not(inner) => Expr::Not(Box::new(prefix_keys(inner, prefix, replace))),
        Expr::And(operands) => Expr::And(
            operands
                .iter()
                .map(|e| prefix_keys(e, prefix, replace))
                .collect(),
        ),
        Expr::Or(operands) => Expr::Or(
            operands
                .iter()
                .map(|e| prefix_keys(e, prefix, replace))
                .collect(),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SelectorKind {
    Pod,
    Namespace,
}

/// Calico's `k8sSelectorToCalico`: a pod selector also requires
/// `projectcalico.org/orchestrator == 'k8s'` (so it never selects network sets); an empty
/// namespace selector means every namespace (`all()`); an absent one gives nothing.
fn kubernetes_selector(selector: Option<&LabelSelector>, kind: SelectorKind) -> String {
    let orchestrator = format!("{LABEL_ORCHESTRATOR} == 'k8s'");
    match (selector, kind) {
        (None, SelectorKind::Pod) => orchestrator,
        (None, SelectorKind::Namespace) => String::new(),
        (Some(s), SelectorKind::Namespace) if s.is_empty() => "all()".to_owned(),
        (Some(s), SelectorKind::Namespace) => s.to_selector_string(),
        (Some(s), SelectorKind::Pod) if s.is_empty() => orchestrator,
        (Some(s), SelectorKind::Pod) => format!("{orchestrator} && {}", s.to_selector_string()),
    }
}

/// Calico's `k8sRuleToCalico`: ports grouped by protocol (a port entry without a number
/// opens every port of its protocol; no ports at all opens everything), then one Allow rule
/// per protocol and peer. Each rule comes with its origin in the Kubernetes policy.
fn kubernetes_rule(
    cx: &Context<'_>,
    path: &str,
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    ingress: bool,
) -> Result<Vec<(Rule, String)>, PolicyError> {
    // Protocol name (sorted, like Calico's output) → ports, `None` meaning all ports.
    let mut by_protocol: BTreeMap<String, (RuleProtocol, Option<Vec<Port>>)> = BTreeMap::new();
    for (j, port) in ports.iter().enumerate() {
        let protocol: RuleProtocol = port
            .protocol
            .unwrap_or(margay_api::KubernetesProtocol::Tcp)
            .into();
        let entry = by_protocol
            .entry(protocol.to_string())
            .or_insert((protocol, Some(Vec::new())));
        match kubernetes_port(cx, &format!("{path}.ports[{j}]"), port)? {
            None => entry.1 = None,
            Some(p) => {
                if let Some(list) = &mut entry.1 {
                    list.push(p);
                }
            }
        }
    }
    let groups: Vec<(Option<RuleProtocol>, Vec<Port>)> = if by_protocol.is_empty() {
        vec![(None, Vec::new())]
    } else {
        by_protocol
            .into_values()
            .map(|(protocol, ports)| (Some(protocol), ports.unwrap_or_default()))
            .collect()
    };
    let direction = if ingress { "from" } else { "to" };
    let mut rules = Vec::new();
    for (protocol, ports) in &groups {
        let mut push = |peer: EntityRule, origin: String| {
            let mut rule = Rule::new(Action::Allow);
            rule.protocol = *protocol;
            let mut peer = peer;
            if ingress {
                rule.source = peer;
                rule.destination.ports = ports.clone();
            } else {
                peer.ports = ports.clone();
                rule.destination = peer;
            }
            rules.push((rule, origin));
        };
        if peers.is_empty() {
            push(EntityRule::default(), path.to_owned());
        }
        for (j, peer) in peers.iter().enumerate() {
            push(kubernetes_peer(peer), format!("{path}.{direction}[{j}]"));
        }
    }
    Ok(rules)
}

/// Calico's `k8sPeerToCalicoFields`: an ipBlock becomes nets minus notNets; otherwise a pod
/// selector (always, so only pods match) and the namespace selector if given.
fn kubernetes_peer(peer: &NetworkPolicyPeer) -> EntityRule {
    if let Some(block) = &peer.ip_block {
        return EntityRule {
            nets: vec![block.cidr.trunc()],
            not_nets: block.except.iter().map(IpNet::trunc).collect(),
            ..EntityRule::default()
        };
    }
    let namespace_selector =
        kubernetes_selector(peer.namespace_selector.as_ref(), SelectorKind::Namespace);
    EntityRule {
        selector: Some(kubernetes_selector(
            peer.pod_selector.as_ref(),
            SelectorKind::Pod,
        )),
        namespace_selector: (!namespace_selector.is_empty()).then_some(namespace_selector),
        ..EntityRule::default()
    }
}

/// A port entry as a Calico port match; `None` when it names no port (all ports).
fn kubernetes_port(
    cx: &Context<'_>,
    field: &str,
    port: &NetworkPolicyPort,
) -> Result<Option<Port>, PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        resource: cx.resource.to_owned(),
        field: field.to_owned(),
        message,
    };
    let number = |n: i32| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| invalid(format!("port {n} is out of range 1-65535")))
    };
    Ok(match &port.port {
        None => None,
        Some(IntOrString::String(name)) => Some(Port::Named(name.clone())),
        Some(IntOrString::Int(p)) => {
            let start = number(*p)?;
            match port.end_port {
                Some(end) => {
                    let end = number(end)?;
                    if end < start {
                        return Err(invalid(format!("endPort {end} is below port {start}")));
                    }
                    Some(if end == start {
                        Port::Number(start)
                    } else {
                        Port::Range(start, end)
                    })
                }
                None => Some(Port::Number(start)),
            }
        }
    })
}
