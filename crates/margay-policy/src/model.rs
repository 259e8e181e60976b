//! The cluster kept up to date change by change, for a dataplane that follows the datastore.
//!
//! [`Model`] holds the resources the engine reads and the [`Cluster`] they resolve to. Each
//! [`Change`] (a resource stored or deleted) updates only what it touches:
//!
//! - a Pod or WorkloadEndpoint: its endpoint (the labels selectors see, its membership of
//!   every set, the policies that apply to it), and the profiles endpoints use;
//! - a Kubernetes NetworkPolicy, NetworkPolicy or GlobalNetworkPolicy: that policy (compiled
//!   alone; new rule selectors get their sets), its place among the policies, and the
//!   endpoints it selects;
//! - a NetworkSet or GlobalNetworkSet: the nets of every set;
//! - a Namespace: the endpoints of the namespace and the network sets;
//! - a Node or an AgentConfiguration: the nodes' addresses, or the configurations (neither
//!   changes anything compiled).
//!
//! Tiers, Profiles and HostEndpoints, which rarely change and reorder or relabel everything
//! (a host endpoint's addresses are members of sets), rebuild the cluster from the stored
//! resources, as does any change while the model is in error and a
//! policy change that adds or drops one of Calico's built-in tiers.
//!
//! Whatever the changes, the model is what [`Cluster::from_resources_skipping_bad_policies`]
//! (or [`Cluster::from_resources`]) would build from [`Model::resources`]: the same cluster,
//! the same policies left out in the same order, the same error. The property test in this
//! module's tests checks exactly that after every change of random sequences.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use margay_api::{Kind, ObjectMeta, PolicyType, Resource};

use crate::cluster::{
    agent_configs, build_endpoints, build_network_sets, build_tiers, describe, endpoint_chains,
    explicit_profiles, index_by_id, index_by_ip, namespace_labels, node_addresses, pod_endpoint_id,
    policy_order, profile_indices, relevant, workload_endpoint_id, Cluster, Inputs, LeftOut,
    NamespaceLabels, Stage, TierChain, NAMESPACE_PROFILE_PREFIX,
};
use crate::compile::{set_nets, Builder, CompiledPolicy, CompiledProfile};
use crate::{Endpoint, PolicyError};

/// Which resource: its kind, its namespace as stored (`None` for cluster-wide kinds), its
/// name. Ordered by kind, then namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> ResourceKey {
        ResourceKey {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    pub fn of(kind: Kind, metadata: &ObjectMeta) -> ResourceKey {
        ResourceKey::new(kind, metadata.namespace.as_deref(), &metadata.name)
    }

    pub fn of_resource(resource: &Resource) -> ResourceKey {
        ResourceKey::of(resource.kind(), resource.metadata())
    }

    /// The first key of a kind, for ranges over it.
    fn first(kind: Kind) -> ResourceKey {
        ResourceKey {
            kind,
            namespace: None,
            name: String::new(),
        }
    }
}

/// `Kind ns/name` or `Kind name`, as errors name resources.
impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(self.kind, self.namespace.as_deref(), &self.name))
    }
}

/// One change of the resources a [`Model`] holds.
// A change is made once and applied once: boxing the resource would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The resource is stored, new or replacing the one with its key.
    Upsert(Resource),
    /// The resource with this key is gone (nothing happens if there was none).
    Delete(ResourceKey),
}

/// The engine's cluster, kept up to date change by change (see the [module](self)).
#[derive(Debug, Clone)]
pub struct Model {
    skip_bad_policies: bool,
    /// With their defaults applied; only the kinds the engine reads.
    resources: BTreeMap<ResourceKey, Resource>,
    /// The cluster of `resources` when `error` is `None`; stale otherwise.
    cluster: Cluster,
    /// Why `resources` give no cluster.
    error: Option<PolicyError>,
    /// The policies left out, in the order a build reports them.
    left_out: BTreeMap<(Stage, u8, ResourceKey), PolicyError>,
    /// Endpoint id → the Pods and WorkloadEndpoints it is made from.
    endpoint_sources: HashMap<String, BTreeSet<ResourceKey>>,
    namespaces: NamespaceLabels,
    /// Tier name → how many policies that compiled name it (placed or not).
    tier_references: HashMap<String, usize>,
}

/// The incremental way does not apply: the cluster is built again from the resources.
struct Rebuild;

/// How a build orders the policies it leaves out, within a stage.
fn kind_order(kind: Kind) -> u8 {
    match kind {
        Kind::KubernetesNetworkPolicy => 0,
        Kind::NetworkPolicy => 1,
        Kind::HostEndpoint => 3,
        _ => 2,
    }
}

impl Model {
    /// A model with no resources. With `skip_bad_policies`, a policy the engine cannot use is
    /// left out and reported ([`Model::skipped`]), as
    /// [`Cluster::from_resources_skipping_bad_policies`] does; without, it is an error, as in
    /// [`Cluster::from_resources`].
    pub fn new(skip_bad_policies: bool) -> Model {
        let built = Cluster::build_from(&Inputs::default(), skip_bad_policies)
            .expect("an empty cluster builds");
        Model {
            skip_bad_policies,
            resources: BTreeMap::new(),
            cluster: built.cluster,
            error: None,
            left_out: BTreeMap::new(),
            endpoint_sources: HashMap::new(),
            namespaces: HashMap::new(),
            tier_references: HashMap::new(),
        }
    }

    /// A model of `resources`, built at once.
    ///
    /// # Errors
    ///
    /// As [`Model::sync`].
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
        skip_bad_policies: bool,
    ) -> Result<Model, PolicyError> {
        let mut model = Model::new(skip_bad_policies);
        model.resources = keyed(resources)?;
        // The model is built; a build error is the model's state, not a failure to make it.
        let _ = model.rebuild();
        Ok(model)
    }

    /// The cluster the resources resolve to, or why they resolve to none.
    pub fn cluster(&self) -> Result<&Cluster, &PolicyError> {
        match &self.error {
            Some(e) => Err(e),
            None => Ok(&self.cluster),
        }
    }

    /// The policies left out of the cluster (with `skip_bad_policies`), each with its error,
    /// in the order [`Cluster::from_resources_skipping_bad_policies`] gives them. Empty when
    /// the model is in error.
    pub fn skipped(&self) -> Vec<PolicyError> {
        if self.error.is_some() {
            return Vec::new();
        }
        self.left_out.values().cloned().collect()
    }

    /// The resources held, with their defaults applied, sorted by [`ResourceKey`].
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    /// Applies one change and returns what [`Model::cluster`] then gives: `Ok` when the
    /// resources resolve to a cluster, else the error [`Cluster::from_resources`] (or its
    /// skipping variant) would give. The change is kept either way: a later change that
    /// removes the cause brings the cluster back. Kinds the engine does not read are
    /// ignored, as is a resource stored again unchanged.
    ///
    /// # Errors
    ///
    /// The error of the resources as they are after the change.
    pub fn apply(&mut self, change: Change) -> Result<(), PolicyError> {
        let (key, old) = match change {
            Change::Upsert(mut resource) => {
                if !relevant(resource.kind()) {
                    return self.status();
                }
                resource.apply_defaults();
                let key = ResourceKey::of_resource(&resource);
                if self.resources.get(&key) == Some(&resource) {
                    return self.status();
                }
                let old = self.resources.insert(key.clone(), resource);
                (key, old)
            }
            Change::Delete(key) => match self.resources.remove(&key) {
                Some(old) => (key, Some(old)),
                None => return self.status(),
            },
        };
        if self.error.is_some() {
            return self.rebuild();
        }
        let done = match key.kind {
            Kind::Pod | Kind::WorkloadEndpoint => {
                let ids = self.move_sources(&key, old.as_ref());
                self.endpoints_changed(ids);
                Ok(())
            }
            Kind::KubernetesNetworkPolicy | Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => {
                self.policy_changed(&key, old.as_ref())
            }
            Kind::NetworkSet | Kind::GlobalNetworkSet => {
                self.network_sets_changed();
                Ok(())
            }
            Kind::Namespace if self.hosts_use_profile_of(&key.name) => Err(Rebuild),
            Kind::Namespace => {
                self.namespace_changed(&key.name);
                Ok(())
            }
            Kind::Node => {
                let inputs = self.inputs_of(&[Kind::Node]);
                self.cluster.nodes = node_addresses(&inputs.nodes);
                Ok(())
            }
            Kind::AgentConfiguration => {
                let inputs = self.inputs_of(&[Kind::AgentConfiguration]);
                self.cluster.configs = agent_configs(&inputs.configs);
                Ok(())
            }
            _ => Err(Rebuild),
        };
        match done {
            Ok(()) => Ok(()),
            Err(Rebuild) => self.rebuild(),
        }
    }

    /// Brings the model to exactly `resources` (a fresh list of every resource the engine
    /// reads, as a resync gives), applying only the differences: resources gone, new or
    /// changed. Many differences rebuild the cluster at once.
    ///
    /// # Errors
    ///
    /// A resource given twice (and nothing is changed); otherwise as [`Model::apply`].
    pub fn sync(
        &mut self,
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<(), PolicyError> {
        let mut wanted = keyed(resources)?;
        let mut changes = Vec::new();
        for key in self.resources.keys() {
            if !wanted.contains_key(key) {
                changes.push(Change::Delete(key.clone()));
            }
        }
        let held = &self.resources;
        let changed: Vec<ResourceKey> = wanted
            .iter()
            .filter(|(key, r)| held.get(*key) != Some(*r))
            .map(|(key, _)| key.clone())
            .collect();
        if changes.len() + changed.len() > (self.resources.len() / 8).max(64) {
            self.resources = wanted;
            return self.rebuild();
        }
        for key in changed {
            if let Some(resource) = wanted.remove(&key) {
                changes.push(Change::Upsert(resource));
            }
        }
        for change in changes {
            // Errors are the model's state; the last one is returned below.
            let _ = self.apply(change);
        }
        self.status()
    }

    fn status(&self) -> Result<(), PolicyError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Builds the cluster from the resources, and everything kept beside it.
    fn rebuild(&mut self) -> Result<(), PolicyError> {
        let inputs = Inputs::of(self.resources.values());
        match Cluster::build_from(&inputs, self.skip_bad_policies) {
            Ok(built) => {
                self.namespaces = namespace_labels(&inputs.namespaces);
                self.cluster = built.cluster;
                self.error = None;
                self.left_out = built
                    .left_out
                    .into_iter()
                    .map(|LeftOut { key, stage, error }| {
                        ((stage, kind_order(key.kind), key), error)
                    })
                    .collect();
                let mut references: HashMap<String, usize> = HashMap::new();
                let placed = self.cluster.policies.iter().map(|p| p.tier_name.as_str());
                let unplaced = self.left_out.values().filter_map(|e| match e {
                    PolicyError::UnknownTier { tier, .. } => Some(tier.as_str()),
                    _ => None,
                });
                for tier in placed.chain(unplaced) {
                    *references.entry(tier.to_owned()).or_default() += 1;
                }
                self.tier_references = references;
                let mut sources: HashMap<String, BTreeSet<ResourceKey>> = HashMap::new();
                for pod in &inputs.pods {
                    sources
                        .entry(pod_endpoint_id(pod))
                        .or_default()
                        .insert(ResourceKey::of(Kind::Pod, &pod.metadata));
                }
                for wep in &inputs.workload_endpoints {
                    sources
                        .entry(workload_endpoint_id(wep))
                        .or_default()
                        .insert(ResourceKey::of(Kind::WorkloadEndpoint, &wep.metadata));
                }
                self.endpoint_sources = sources;
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn inputs_of(&self, kinds: &[Kind]) -> Inputs<'_> {
        Inputs::of(kinds.iter().flat_map(|&k| of_kind(&self.resources, k)))
    }

    /// Moves a Pod's or WorkloadEndpoint's key to the endpoint it now makes; returns the ids
    /// of the endpoints it made before and makes now.
    fn move_sources(&mut self, key: &ResourceKey, old: Option<&Resource>) -> Vec<String> {
        let id_of = |r: &Resource| match r {
            Resource::Pod(pod) => Some(pod_endpoint_id(pod)),
            Resource::WorkloadEndpoint(wep) => Some(workload_endpoint_id(wep)),
            _ => None,
        };
        let mut ids = Vec::new();
        if let Some(id) = old.and_then(id_of) {
            if let Some(sources) = self.endpoint_sources.get_mut(&id) {
                sources.remove(key);
                if sources.is_empty() {
                    self.endpoint_sources.remove(&id);
                }
            }
            ids.push(id);
        }
        if let Some(id) = self.resources.get(key).and_then(id_of) {
            self.endpoint_sources
                .entry(id.clone())
                .or_default()
                .insert(key.clone());
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Resolves the endpoints with these ids again from their Pods and WorkloadEndpoints.
    fn endpoints_changed(&mut self, ids: Vec<String>) {
        let profiles = Inputs::of(of_kind(&self.resources, Kind::Profile)).profiles;
        let explicit = explicit_profiles(&profiles);
        let mut resolved = Vec::with_capacity(ids.len());
        for id in ids {
            let sources = self.endpoint_sources.get(&id);
            let inputs = Inputs::of(
                sources
                    .into_iter()
                    .flatten()
                    .filter_map(|key| self.resources.get(key)),
            );
            let mut endpoints = build_endpoints(
                &inputs.pods,
                &inputs.workload_endpoints,
                &self.namespaces,
                &explicit,
            );
            debug_assert!(endpoints.len() <= 1 && endpoints.iter().all(|ep| ep.id == id));
            resolved.push((id, endpoints.pop()));
        }
        let explicit: HashSet<&str> = explicit.keys().copied().collect();
        let cluster = &mut self.cluster;
        for (id, endpoint) in resolved {
            cluster.put_endpoint(&id, endpoint);
        }
        cluster.endpoints_moved(&explicit);
    }

    /// Compiles the policy with `key` again (or removes it) and puts it in its place.
    fn policy_changed(&mut self, key: &ResourceKey, old: Option<&Resource>) -> Result<(), Rebuild> {
        let rank = kind_order(key.kind);
        let unplaced = self.left_out.remove(&(Stage::Tier, rank, key.clone()));
        let uncompiled = self.left_out.remove(&(Stage::Compile, rank, key.clone()));
        if let Some(PolicyError::UnknownTier { tier, .. }) = &unplaced {
            self.unreference(tier);
        } else if old.is_some() && uncompiled.is_none() {
            if let Some(i) = self.cluster.policies.iter().position(|p| p.key == *key) {
                let removed = self.cluster.remove_policy(i);
                self.unreference(&removed.tier_name);
            }
        }

        if let Some(resource) = self.resources.get(key) {
            let cluster = &mut self.cluster;
            let sets = std::mem::take(&mut cluster.sets);
            let mut builder = Builder::with_sets(
                &cluster.endpoints,
                &cluster.network_sets,
                &cluster.host_endpoints,
                sets,
            );
            let compiled = match resource {
                Resource::KubernetesNetworkPolicy(knp) => builder.kubernetes_policy(knp),
                Resource::NetworkPolicy(np) => builder.network_policy(np),
                Resource::GlobalNetworkPolicy(gnp) => builder.global_network_policy(gnp),
                _ => unreachable!("policy kinds only"),
            };
            cluster.sets = builder.into_sets();
            match compiled {
                Err(_) if !self.skip_bad_policies => return Err(Rebuild),
                Err(error) => {
                    self.left_out
                        .insert((Stage::Compile, rank, key.clone()), error);
                }
                Ok(policy) => {
                    *self
                        .tier_references
                        .entry(policy.tier_name.clone())
                        .or_default() += 1;
                    self.place(policy, rank)?;
                }
            }
        }
        self.cluster.host_endpoint_chains();
        self.cluster.canonicalize_sets();
        self.check_tiers()
    }

    fn unreference(&mut self, tier: &str) {
        if let Some(n) = self.tier_references.get_mut(tier) {
            *n -= 1;
            if *n == 0 {
                self.tier_references.remove(tier);
            }
        }
    }

    /// Puts a compiled policy in its tier, or leaves it out when the tier does not exist.
    fn place(&mut self, mut policy: CompiledPolicy, rank: u8) -> Result<(), Rebuild> {
        match self
            .cluster
            .tiers
            .iter()
            .position(|t| t.name == policy.tier_name)
        {
            Some(tier) => {
                policy.tier = tier;
                self.cluster.insert_policy(policy);
            }
            None if !self.skip_bad_policies => return Err(Rebuild),
            None => {
                let error = PolicyError::UnknownTier {
                    resource: policy.resource.clone(),
                    tier: policy.tier_name.clone(),
                };
                self.left_out.insert((Stage::Tier, rank, policy.key), error);
            }
        }
        Ok(())
    }

    /// Whether the tiers are still those the resources give (Calico's built-in tiers come
    /// and go with the policies naming them).
    fn check_tiers(&self) -> Result<(), Rebuild> {
        let inputs = self.inputs_of(&[Kind::Tier]);
        let referenced: HashSet<&str> = self.tier_references.keys().map(String::as_str).collect();
        if build_tiers(&inputs.tiers, &referenced) == self.cluster.tiers {
            Ok(())
        } else {
            Err(Rebuild)
        }
    }

    /// Resolves the network sets again, and the nets of every set.
    fn network_sets_changed(&mut self) {
        let inputs = self.inputs_of(&[Kind::NetworkSet, Kind::GlobalNetworkSet, Kind::Profile]);
        let network_sets = build_network_sets(
            &inputs.network_sets,
            &inputs.global_network_sets,
            &self.namespaces,
            &explicit_profiles(&inputs.profiles),
        );
        for set in &mut self.cluster.sets {
            set.nets = set_nets(&set.expr, &network_sets, &self.cluster.host_endpoints);
        }
        self.cluster.network_sets = network_sets;
    }

    /// Whether a host endpoint has namespace `name`'s profile (and so its labels).
    fn hosts_use_profile_of(&self, name: &str) -> bool {
        let profile = format!("{NAMESPACE_PROFILE_PREFIX}{name}");
        self.cluster
            .host_endpoints
            .iter()
            .any(|h| h.profiles.contains(&profile))
    }

    /// A namespace's labels changed: the endpoints with its profile and the network sets
    /// inherit them.
    fn namespace_changed(&mut self, name: &str) {
        let inputs = self.inputs_of(&[Kind::Namespace]);
        self.namespaces = namespace_labels(&inputs.namespaces);
        let profile = format!("{NAMESPACE_PROFILE_PREFIX}{name}");
        let ids: Vec<String> = self
            .cluster
            .endpoints
            .iter()
            .filter(|ep| ep.profiles.contains(&profile))
            .map(|ep| ep.id.clone())
            .collect();
        self.endpoints_changed(ids);
        self.network_sets_changed();
    }
}

/// The resources of one kind, in key order.
fn of_kind(
    resources: &BTreeMap<ResourceKey, Resource>,
    kind: Kind,
) -> impl Iterator<Item = &Resource> {
    resources
        .range(ResourceKey::first(kind)..)
        .take_while(move |(k, _)| k.kind == kind)
        .map(|(_, r)| r)
}

/// The resources of the kinds the engine reads, with their defaults applied, by key.
fn keyed(
    resources: impl IntoIterator<Item = Resource>,
) -> Result<BTreeMap<ResourceKey, Resource>, PolicyError> {
    let mut keyed = BTreeMap::new();
    for mut resource in resources {
        if !relevant(resource.kind()) {
            continue;
        }
        resource.apply_defaults();
        let key = ResourceKey::of_resource(&resource);
        if keyed.contains_key(&key) {
            return Err(PolicyError::Duplicate {
                resource: key.to_string(),
            });
        }
        keyed.insert(key, resource);
    }
    Ok(keyed)
}

/// The changes of a cluster that a [`Model`] makes in place.
impl Cluster {
    /// Replaces, adds or removes the endpoint with this id, with its set memberships and
    /// chains. [`Cluster::endpoints_moved`] must follow.
    fn put_endpoint(&mut self, id: &str, endpoint: Option<Endpoint>) {
        let position = self.endpoints.binary_search_by(|ep| ep.id.as_str().cmp(id));
        match (position, endpoint) {
            (Ok(i), Some(ep)) => {
                if self.endpoints[i] == ep {
                    return;
                }
                if self.endpoints[i].selector_labels != ep.selector_labels {
                    for set in &mut self.sets {
                        set.endpoints[i] = set.expr.matches(&ep.selector_labels);
                    }
                    self.chains[i] = endpoint_chains(&self.policies, &ep.selector_labels);
                }
                self.endpoints[i] = ep;
            }
            (Ok(i), None) => {
                self.endpoints.remove(i);
                for set in &mut self.sets {
                    set.endpoints.remove(i);
                }
                self.chains.remove(i);
                self.endpoint_profiles.remove(i);
            }
            (Err(i), Some(ep)) => {
                for set in &mut self.sets {
                    set.endpoints
                        .insert(i, set.expr.matches(&ep.selector_labels));
                }
                self.chains
                    .insert(i, endpoint_chains(&self.policies, &ep.selector_labels));
                self.endpoint_profiles.insert(i, Vec::new());
                self.endpoints.insert(i, ep);
            }
            (Err(_), None) => {}
        }
    }

    /// After endpoints changed: Calico's default profiles for the profile names endpoints
    /// use and no Profile gives (`explicit` are those given), each endpoint's profiles, and
    /// the indices by id and address.
    fn endpoints_moved(&mut self, explicit: &HashSet<&str>) {
        let used: HashSet<&str> = self
            .endpoints
            .iter()
            .flat_map(|ep| &ep.profiles)
            .chain(self.host_endpoints.iter().flat_map(|h| &h.profiles))
            .map(String::as_str)
            .collect();
        let mut missing: Vec<&str> = used
            .iter()
            .copied()
            .filter(|name| !explicit.contains(name))
            .filter(|name| {
                self.profiles
                    .binary_search_by(|p| p.name.as_str().cmp(name))
                    .is_err()
            })
            .collect();
        missing.sort_unstable();
        let defaults: Vec<CompiledProfile> = missing
            .into_iter()
            .map(CompiledProfile::calico_default)
            .collect();
        self.profiles
            .retain(|p| explicit.contains(p.name.as_str()) || used.contains(p.name.as_str()));
        for profile in defaults {
            let at = self.profiles.partition_point(|p| p.name < profile.name);
            self.profiles.insert(at, profile);
        }
        self.endpoint_profiles = self
            .endpoints
            .iter()
            .map(|ep| profile_indices(&self.profiles, &ep.profiles))
            .collect();
        self.host_profiles = self
            .host_endpoints
            .iter()
            .map(|h| profile_indices(&self.profiles, &h.profiles))
            .collect();
        self.by_id = index_by_id(&self.endpoints);
        self.by_ip = index_by_ip(&self.endpoints);
    }

    /// Removes the policy at index `i` from the policies and every chain.
    fn remove_policy(&mut self, i: usize) -> CompiledPolicy {
        for chains in &mut self.chains {
            for chain in chains.iter_mut() {
                for stage in chain.iter_mut() {
                    stage.policies.retain(|&p| p != i);
                    for p in &mut stage.policies {
                        if *p > i {
                            *p -= 1;
                        }
                    }
                }
                chain.retain(|stage| !stage.policies.is_empty());
            }
        }
        self.policies.remove(i)
    }

    /// Inserts a placed policy in order, and in the chains of the endpoints it selects.
    fn insert_policy(&mut self, policy: CompiledPolicy) {
        let at = self.policies.partition_point(|q| {
            policy_order(q, &policy)
                .then_with(|| q.key.cmp(&policy.key))
                .is_lt()
        });
        for chains in &mut self.chains {
            for stage in chains.iter_mut().flatten() {
                for p in &mut stage.policies {
                    if *p >= at {
                        *p += 1;
                    }
                }
            }
        }
        let applies = [PolicyType::Ingress, PolicyType::Egress].map(|d| policy.applies(d));
        let tier = policy.tier;
        if applies != [false, false] {
            for (ep, chains) in self.endpoints.iter().zip(&mut self.chains) {
                if !policy.selector.matches(&ep.selector_labels) {
                    continue;
                }
                for (chain, _) in chains.iter_mut().zip(applies).filter(|(_, a)| *a) {
                    let stage = chain.partition_point(|s| s.tier < tier);
                    match chain.get_mut(stage) {
                        Some(s) if s.tier == tier => {
                            let pos = s.policies.partition_point(|&p| p < at);
                            s.policies.insert(pos, at);
                        }
                        _ => chain.insert(
                            stage,
                            TierChain {
                                tier,
                                policies: vec![at],
                            },
                        ),
                    }
                }
            }
        }
        self.policies.insert(at, policy);
    }
}

#[cfg(test)]
mod tests;
