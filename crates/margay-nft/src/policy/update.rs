//! From one program to the next in place: only the sets, chains and map elements that
//! differ, found by comparing the programs as data and rendering only what differs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use margay_policy::program::{Pipeline, Program};

use super::{
    from_endpoint_chain, group_chain, host_maps, ip_set, policy_chain, port_set, profile_chain,
    render, static_chains, to_endpoint_chain, AddressFamily, FROM_WORKLOAD_MAP, POLICY_TABLE,
    TO_WORKLOAD_MAP,
};
use crate::ruleset::{quoted_text, Chain, InterfaceMap, SetElements, Table};

/// nft's limit on rule comments, as [`render`] cuts them.
const MAX_COMMENT: usize = 128;

/// The `nft -f` script that brings a table loaded from `old` (by [`render`], then any
/// updates) to `new`, in one transaction, touching only what differs:
///
/// 1. sets only `new` has are created with their members; the members of the sets both
///    have are updated in place ([`set_updates`](super::set_updates));
/// 2. chains only `new` has are created, chains whose rules differ are flushed, and both
///    are filled with their rules;
/// 3. the interfaces of endpoints gone are deleted from the dispatch maps, those of new
///    endpoints added; likewise the host endpoint maps, which are created (before the chains
///    that use them) with the first host endpoint and deleted with the last;
/// 4. chains only `old` has are flushed and deleted, then sets only `old` has.
///
/// Unchanged chains keep their rules, handles and counters. When only set members changed
/// ([`same_rules`](super::same_rules)), this is exactly [`set_updates`](super::set_updates);
/// when nothing changed, it is empty. A set whose type would change (not possible with the
/// programs [`margay_policy::program::program`] makes) gives [`render`] `new` instead. As
/// with set updates, a table that no longer holds `old` may refuse the script (as a whole),
/// and should then be replaced with [`render`].
pub fn update(old: &Program, new: &Program, family: AddressFamily) -> String {
    let (old, new) = (
        old.for_family(family.version()),
        new.for_family(family.version()),
    );
    let (old, new) = (&*old, &*new);
    let table = format!("{} {POLICY_TABLE}", family.table_family());
    let old_sets = set_kinds(old);
    let new_sets = set_kinds(new);
    let retyped = new_sets
        .iter()
        .any(|(id, kind)| old_sets.get(id).is_some_and(|was| was != kind));
    if retyped
        || old_sets.len() != old.ip_sets.len() + old.port_sets.len()
        || new_sets.len() != new.ip_sets.len() + new.port_sets.len()
    {
        return render(new, family);
    }

    let mut out = String::new();
    let created = new
        .ip_sets
        .iter()
        .filter(|(id, _)| !old_sets.contains_key(id.as_str()))
        .map(|(id, set)| ip_set(id, set, family))
        .chain(
            new.port_sets
                .iter()
                .filter(|(id, _)| !old_sets.contains_key(id.as_str()))
                .map(|(id, set)| port_set(id, set, family)),
        );
    for set in created {
        let (kind, interval) = match &set.elements {
            SetElements::V4(_) => ("ipv4_addr", true),
            SetElements::V6(_) => ("ipv6_addr", true),
            SetElements::V4Ports(_) => ("ipv4_addr . inet_proto . inet_service", false),
            SetElements::V6Ports(_) => ("ipv6_addr . inet_proto . inet_service", false),
        };
        let flags = if interval { " flags interval;" } else { "" };
        let _ = writeln!(
            out,
            "add set {table} {} {{ type {kind};{flags} }}",
            set.name
        );
        let elements = set.element_texts();
        if !elements.is_empty() {
            let _ = writeln!(
                out,
                "add element {table} {} {{ {} }}",
                set.name,
                elements.join(", ")
            );
        }
    }
    let (old_members, new_members) = changed_sets(old, new, family);
    out.push_str(&new_members.render_element_updates(&old_members));

    let old_maps = host_maps(old);
    let new_maps = host_maps(new);
    let has = |maps: &[InterfaceMap], name: &str| maps.iter().any(|m| m.name == name);
    // Before the chains whose rules use them.
    for map in new_maps.iter().filter(|m| !has(&old_maps, &m.name)) {
        let _ = writeln!(
            out,
            "add map {table} {} {{ type ifname : verdict; }}",
            map.name
        );
    }

    let chains = chain_changes(old, new, family);
    for chain in &chains.added {
        let _ = writeln!(out, "add chain {table} {}", chain.name);
    }
    for chain in &chains.changed {
        let _ = writeln!(out, "flush chain {table} {}", chain.name);
    }
    for chain in chains.added.iter().chain(&chains.changed) {
        for rule in &chain.rules {
            let _ = writeln!(
                out,
                "add rule {table} {} {} comment \"{}\"",
                chain.name,
                rule.statement,
                quoted_text(&rule.comment, MAX_COMMENT)
            );
        }
    }

    let gone: Vec<&String> = old
        .endpoints
        .keys()
        .filter(|iface| !new.endpoints.contains_key(*iface))
        .collect();
    let came: Vec<&String> = new
        .endpoints
        .keys()
        .filter(|iface| !old.endpoints.contains_key(*iface))
        .collect();
    for (map, prefix) in [(FROM_WORKLOAD_MAP, "fw-"), (TO_WORKLOAD_MAP, "tw-")] {
        let elements: Vec<(&str, String)> = came
            .iter()
            .map(|i| (i.as_str(), format!("goto {prefix}{i}")))
            .collect();
        write_map_changes(
            &mut out,
            &table,
            map,
            gone.iter().map(|i| i.as_str()),
            &elements,
        );
    }

    // Host endpoint map elements name chains: added once those exist, deleted (with their
    // maps, which no rule uses any more) before those that go.
    for map in &new_maps {
        let before: BTreeSet<&(String, String)> = old_maps
            .iter()
            .find(|m| m.name == map.name)
            .map(|m| m.elements.iter().collect())
            .unwrap_or_default();
        let after: BTreeSet<&(String, String)> = map.elements.iter().collect();
        let came: Vec<(&str, String)> = after
            .difference(&before)
            .map(|(i, verdict)| (i.as_str(), verdict.clone()))
            .collect();
        let gone = before.difference(&after).map(|(i, _)| i.as_str());
        write_map_changes(&mut out, &table, &map.name, gone, &came);
    }
    for map in old_maps.iter().filter(|m| !has(&new_maps, &m.name)) {
        let _ = writeln!(out, "delete map {table} {}", map.name);
    }

    for name in &chains.removed {
        let _ = writeln!(out, "flush chain {table} {name}");
    }
    for name in &chains.removed {
        let _ = writeln!(out, "delete chain {table} {name}");
    }
    for id in old_sets.keys().filter(|id| !new_sets.contains_key(*id)) {
        let _ = writeln!(out, "delete set {table} {id}");
    }
    out
}

/// Which map a set id is in: `false` for address sets, `true` for named-port sets. An id in
/// both counts once.
fn set_kinds(program: &Program) -> BTreeMap<&str, bool> {
    let ports = program.port_sets.keys().map(|id| (id.as_str(), true));
    let addresses = program.ip_sets.keys().map(|id| (id.as_str(), false));
    ports.chain(addresses).collect()
}

/// The sets of `old` and `new` whose members may differ in `family` (as tables, for
/// [`Table::render_element_updates`]): every set of `new` except those `old` has with the
/// same members, and the sets of `old` with their names. The updates between these are
/// those between the whole tables.
pub(super) fn changed_sets(old: &Program, new: &Program, family: AddressFamily) -> (Table, Table) {
    let mut before = Table::new(family.table_family(), POLICY_TABLE);
    let mut after = Table::new(family.table_family(), POLICY_TABLE);
    let mut names: HashSet<&str> = HashSet::new();
    for (id, set) in &new.ip_sets {
        if old
            .ip_sets
            .get(id)
            .is_some_and(|s| s.members == set.members)
        {
            continue;
        }
        names.insert(id);
        after.sets.push(ip_set(id, set, family));
    }
    for (id, set) in &new.port_sets {
        // A table's first set of a name is the one compared, and address sets come first.
        let unchanged = !old.ip_sets.contains_key(id)
            && old
                .port_sets
                .get(id)
                .is_some_and(|s| s.members == set.members);
        if unchanged {
            continue;
        }
        names.insert(id);
        after.sets.push(port_set(id, set, family));
    }
    if names.is_empty() {
        return (before, after);
    }
    for (id, set) in &old.ip_sets {
        if names.contains(id.as_str()) {
            before.sets.push(ip_set(id, set, family));
        }
    }
    for (id, set) in &old.port_sets {
        if names.contains(id.as_str()) {
            before.sets.push(port_set(id, set, family));
        }
    }
    (before, after)
}

/// The chains that differ between the renderings of two programs in one family.
#[derive(Debug, Default)]
pub(super) struct ChainChanges {
    /// Chains only the new program has, rendered.
    pub added: Vec<Chain>,
    /// Chains both have whose rules render differently, as the new program renders them.
    pub changed: Vec<Chain>,
    /// The names of the chains only the old program has.
    pub removed: Vec<String>,
}

impl ChainChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Both maps' entries by key: `(key, in old, in new)`.
fn merged<'p, V>(
    old: &'p BTreeMap<String, V>,
    new: &'p BTreeMap<String, V>,
) -> impl Iterator<Item = (&'p str, Option<&'p V>, Option<&'p V>)> {
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (None, None) => None,
        (Some(_), None) => a.next().map(|(k, v)| (k.as_str(), Some(v), None)),
        (None, Some(_)) => b.next().map(|(k, v)| (k.as_str(), None, Some(v))),
        (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
            std::cmp::Ordering::Less => a.next().map(|(k, v)| (k.as_str(), Some(v), None)),
            std::cmp::Ordering::Greater => b.next().map(|(k, v)| (k.as_str(), None, Some(v))),
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                Some((k.as_str(), Some(va), Some(vb)))
            }
        },
    })
}

/// Whether two chains render the same text (comments as nft keeps them).
fn same_text(a: &Chain, b: &Chain) -> bool {
    a.name == b.name
        && a.base == b.base
        && a.rules.len() == b.rules.len()
        && a.rules.iter().zip(&b.rules).all(|(x, y)| {
            x.statement == y.statement
                && (x.comment == y.comment
                    || quoted_text(&x.comment, MAX_COMMENT) == quoted_text(&y.comment, MAX_COMMENT))
        })
}

/// The lines that take the interfaces `gone` out of the verdict map `map` and put the
/// `(interface, verdict)` elements `came` in; nothing for an empty side.
fn write_map_changes<'a>(
    out: &mut String,
    table: &str,
    map: &str,
    gone: impl Iterator<Item = &'a str>,
    came: &[(&str, String)],
) {
    let keys: Vec<String> = gone.map(|i| format!("\"{i}\"")).collect();
    if !keys.is_empty() {
        let _ = writeln!(
            out,
            "delete element {table} {map} {{ {} }}",
            keys.join(", ")
        );
    }
    if !came.is_empty() {
        let elements: Vec<String> = came
            .iter()
            .map(|(i, verdict)| format!("\"{i}\" : {verdict}"))
            .collect();
        let _ = writeln!(
            out,
            "add element {table} {map} {{ {} }}",
            elements.join(", ")
        );
    }
}

/// The chains that differ between `old` and `new` in `family`. The chains every table has
/// (base and dispatch chains, a handful of rules) are rendered and compared each time; the
/// others are rendered only where the programs' data differ.
pub(super) fn chain_changes(old: &Program, new: &Program, family: AddressFamily) -> ChainChanges {
    let mut changes = ChainChanges::default();
    let by_name = |program: &Program| -> BTreeMap<String, Chain> {
        static_chains(program, family)
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect()
    };
    let (was, is) = (by_name(old), by_name(new));
    for (name, a, b) in merged(&was, &is) {
        match (a, b) {
            (Some(a), Some(b)) if !same_text(a, b) => changes.changed.push(b.clone()),
            (None, Some(b)) => changes.added.push(b.clone()),
            (Some(_), None) => changes.removed.push(name.to_owned()),
            _ => {}
        }
    }
    // Chains whose name an endpoint chain's comments may show differently.
    let mut renamed: HashSet<&str> = HashSet::new();
    for (id, a, b) in merged(&old.policies, &new.policies) {
        if a.map(|c| &c.policy) != b.map(|c| &c.policy) {
            renamed.insert(id);
        }
    }
    for (id, a, b) in merged(&old.profiles, &new.profiles) {
        if a.map(|c| &c.profile) != b.map(|c| &c.profile) {
            renamed.insert(id);
        }
    }
    // Grouped tiers name only their group; the group chain names the policies.
    let mentions_renamed = |pipeline: &Pipeline, program: &Program| {
        !renamed.is_empty()
            && (pipeline
                .tiers
                .iter()
                .filter(|t| {
                    t.group
                        .as_ref()
                        .is_none_or(|g| !program.groups.contains_key(g))
                })
                .flat_map(|t| &t.policies)
                .chain(&pipeline.profiles)
                .any(|id| renamed.contains(id.as_str())))
    };
    // An endpoint chain inlines a tier whose group the program lacks: a group coming or
    // going changes the endpoint chains listing it.
    let regrouped: HashSet<&str> = merged(&old.groups, &new.groups)
        .filter(|(_, a, b)| a.is_some() != b.is_some())
        .map(|(id, _, _)| id)
        .collect();
    let mentions_regrouped = |pipeline: &Pipeline| {
        !regrouped.is_empty()
            && pipeline
                .tiers
                .iter()
                .filter_map(|t| t.group.as_deref())
                .any(|g| regrouped.contains(g))
    };

    for (iface, a, b) in merged(&old.endpoints, &new.endpoints) {
        match (a, b) {
            (Some(a), Some(b)) => {
                if a.id != b.id
                    || a.egress != b.egress
                    || mentions_renamed(&b.egress, new)
                    || mentions_regrouped(&b.egress)
                {
                    let (was, is) = (
                        from_endpoint_chain(iface, a, old),
                        from_endpoint_chain(iface, b, new),
                    );
                    if !same_text(&was, &is) {
                        changes.changed.push(is);
                    }
                }
                if a.id != b.id
                    || a.ingress != b.ingress
                    || mentions_renamed(&b.ingress, new)
                    || mentions_regrouped(&b.ingress)
                {
                    let (was, is) = (
                        to_endpoint_chain(iface, a, old),
                        to_endpoint_chain(iface, b, new),
                    );
                    if !same_text(&was, &is) {
                        changes.changed.push(is);
                    }
                }
            }
            (None, Some(b)) => {
                changes.added.push(from_endpoint_chain(iface, b, new));
                changes.added.push(to_endpoint_chain(iface, b, new));
            }
            (Some(_), None) => {
                changes.removed.push(format!("fw-{iface}"));
                changes.removed.push(format!("tw-{iface}"));
            }
            (None, None) => {}
        }
    }
    for (id, a, b) in merged(&old.groups, &new.groups) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let named = |g: &margay_policy::program::PolicyGroup| {
                    g.policies.iter().any(|p| renamed.contains(p.as_str()))
                };
                if a != b || named(b) {
                    let is = group_chain(id, b, new);
                    if !same_text(&group_chain(id, a, old), &is) {
                        changes.changed.push(is);
                    }
                }
            }
            (None, Some(b)) => changes.added.push(group_chain(id, b, new)),
            (Some(_), None) => changes.removed.push(id.to_owned()),
            (None, None) => {}
        }
    }
    for (id, a, b) in merged(&old.policies, &new.policies) {
        match (a, b) {
            (Some(a), Some(b)) if a != b => {
                let is = policy_chain(id, b, family);
                if !same_text(&policy_chain(id, a, family), &is) {
                    changes.changed.push(is);
                }
            }
            (None, Some(b)) => changes.added.push(policy_chain(id, b, family)),
            (Some(_), None) => changes.removed.push(id.to_owned()),
            _ => {}
        }
    }
    for (id, a, b) in merged(&old.profiles, &new.profiles) {
        match (a, b) {
            (Some(a), Some(b)) if a != b => {
                let is = profile_chain(id, b, family);
                if !same_text(&profile_chain(id, a, family), &is) {
                    changes.changed.push(is);
                }
            }
            (None, Some(b)) => changes.added.push(profile_chain(id, b, family)),
            (Some(_), None) => changes.removed.push(id.to_owned()),
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests;
