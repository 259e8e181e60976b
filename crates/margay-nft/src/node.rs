//! The node agent's rules: NAT for pools with `natOutgoing`, and dropping overlay traffic
//! from hosts outside the cluster (Calico's `cali-nat-outgoing` and "Drop IPIP/VXLAN packets
//! from non-Calico hosts").

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::policy::POLICY_TABLE;
use crate::ruleset::{
    BaseChain, Chain, ChainType, Family, Hook, NamedPriority, Policy, Priority, Rule, Ruleset, Set,
    Table,
};
use crate::{Error, NftRunner};

/// Margay's table name, one table per family: `table ip margay` and `table ip6 margay`.
pub const TABLE: &str = "margay";

/// The families Margay owns a table in.
const FAMILIES: [Family; 2] = [Family::Ip, Family::Ip6];

const NAT_OUTGOING: &str = "nat-outgoing";
const ALL_POOLS: &str = "all-pools";
const CLUSTER_NODES: &str = "cluster-nodes";

/// What the node agent wants in the dataplane. Order and duplicates do not matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRules {
    /// Pools with `natOutgoing`.
    pub nat_outgoing_v4: Vec<Ipv4Net>,
    /// Every pool: destinations inside any pool are never masqueraded.
    pub all_pools_v4: Vec<Ipv4Net>,
    pub nat_outgoing_v6: Vec<Ipv6Net>,
    pub all_pools_v6: Vec<Ipv6Net>,
    /// Node addresses allowed to send overlay (VXLAN, IPIP) traffic.
    pub cluster_nodes_v4: Vec<Ipv4Addr>,
    /// `Some(port)` when VXLAN is in use: UDP to that port from non-cluster sources is dropped.
    pub vxlan_port: Option<u16>,
    /// IPIP in use: IP protocol 4 from non-cluster sources is dropped.
    pub ipip: bool,
}

/// Margay's tables for `rules`. Both tables always exist while the agent runs, even empty,
/// so `nft list tables` shows who owns what; chains and sets appear only when needed (an
/// unused nat hook chain would still cost every packet a hook call).
pub fn ruleset(rules: &NodeRules) -> Ruleset {
    let mut v4 = Table::new(Family::Ip, TABLE);
    if !rules.nat_outgoing_v4.is_empty() {
        v4.sets.push(Set::ipv4(
            NAT_OUTGOING,
            rules.nat_outgoing_v4.iter().copied(),
        ));
        v4.sets
            .push(Set::ipv4(ALL_POOLS, rules.all_pools_v4.iter().copied()));
        v4.chains.push(nat_chain("ip"));
    }
    let mut input = Vec::new();
    if let Some(port) = rules.vxlan_port {
        input.push(Rule::new(
            format!("udp dport {port} ip saddr != @{CLUSTER_NODES} drop"),
            "margay: drop vxlan from non-cluster hosts",
        ));
    }
    if rules.ipip {
        input.push(Rule::new(
            format!("ip protocol 4 ip saddr != @{CLUSTER_NODES} drop"),
            "margay: drop ipip from non-cluster hosts",
        ));
    }
    if !input.is_empty() {
        v4.sets.push(Set::ipv4(
            CLUSTER_NODES,
            rules.cluster_nodes_v4.iter().map(|&a| Ipv4Net::from(a)),
        ));
        v4.chains.push(Chain {
            name: "input".into(),
            base: Some(BaseChain {
                kind: ChainType::Filter,
                hook: Hook::Input,
                // Ahead of other filter chains, so forged overlay packets are gone before
                // any other table spends work on them.
                priority: Priority::new(NamedPriority::Filter, -1),
                policy: Policy::Accept,
            }),
            rules: input,
        });
    }

    let mut v6 = Table::new(Family::Ip6, TABLE);
    if !rules.nat_outgoing_v6.is_empty() {
        v6.sets.push(Set::ipv6(
            NAT_OUTGOING,
            rules.nat_outgoing_v6.iter().copied(),
        ));
        v6.sets
            .push(Set::ipv6(ALL_POOLS, rules.all_pools_v6.iter().copied()));
        v6.chains.push(nat_chain("ip6"));
    }

    Ruleset {
        tables: vec![v4, v6],
    }
}

/// Masquerades traffic from NAT-outgoing pools to anything outside every pool; `proto` is
/// the address match keyword of the table's family (`ip` or `ip6`).
fn nat_chain(proto: &str) -> Chain {
    Chain {
        name: "postrouting".into(),
        base: Some(BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: Priority::new(NamedPriority::SrcNat, 0),
            policy: Policy::Accept,
        }),
        rules: vec![Rule::new(
            format!("{proto} saddr @{NAT_OUTGOING} {proto} daddr != @{ALL_POOLS} masquerade"),
            "margay: nat outgoing",
        )],
    }
}

/// The full `nft -f` script: atomically replaces Margay's tables and touches no other table.
/// Deterministic, so equal scripts mean equal rules.
pub fn render(rules: &NodeRules) -> String {
    ruleset(rules).render()
}

/// Deletes every table Margay owns, if present, in one transaction: the agent's `margay`
/// tables and the policy tables ([`POLICY_TABLE`]), in both families. Nothing else is
/// touched. The agent never calls it (it keeps its tables across restarts, so a restart
/// neither drops traffic nor reloads rules); it is for taking a node out of Margay, and
/// for tests.
pub fn remove_all<R: NftRunner>(runner: &mut R) -> Result<(), Error> {
    let tables = [TABLE, POLICY_TABLE]
        .into_iter()
        .flat_map(|name| FAMILIES.map(|f| Table::new(f, name)))
        .collect();
    runner.run(&Ruleset { tables }.render_removal())
}

/// Applies [`NodeRules`], running nft only when the rendering changed since the last
/// successful apply.
#[derive(Debug)]
pub struct Applier<R: NftRunner> {
    runner: R,
    /// The script nft last accepted. A failed run keeps it: `nft -f` is one transaction, so
    /// the kernel still holds exactly this.
    applied: Option<String>,
}

impl<R: NftRunner> Applier<R> {
    pub fn new(runner: R) -> Applier<R> {
        Applier {
            runner,
            applied: None,
        }
    }

    /// Brings Margay's tables to `rules`; returns whether nft ran.
    pub fn apply(&mut self, rules: &NodeRules) -> Result<bool, Error> {
        let script = render(rules);
        if self.applied.as_deref() == Some(script.as_str()) {
            return Ok(false);
        }
        self.runner.run(&script)?;
        self.applied = Some(script);
        Ok(true)
    }

    /// Makes the next [`apply`](Self::apply) run nft even if nothing changed: a periodic
    /// resync (as Felix does) repairs tables that someone else modified or flushed.
    pub fn forget(&mut self) {
        self.applied = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records scripts; fails the runs it is told to.
    #[derive(Default)]
    struct Recorder {
        scripts: Vec<String>,
        fail: bool,
    }

    impl NftRunner for Recorder {
        fn run(&mut self, script: &str) -> Result<(), Error> {
            if self.fail {
                return Err(Error::Failed {
                    command: "nft -f -".into(),
                    stderr: "refused".into(),
                });
            }
            self.scripts.push(script.to_owned());
            Ok(())
        }

        fn list_table(&mut self, _: &str, _: &str) -> Result<Option<String>, Error> {
            unreachable!("the applier never lists")
        }
    }

    fn nat(cidr: &str) -> NodeRules {
        NodeRules {
            nat_outgoing_v4: vec![cidr.parse().unwrap()],
            all_pools_v4: vec![cidr.parse().unwrap()],
            ..NodeRules::default()
        }
    }

    #[test]
    fn applier_runs_only_on_change() {
        let mut a = Applier::new(Recorder::default());
        assert!(a.apply(&nat("10.0.0.0/16")).unwrap());
        assert!(!a.apply(&nat("10.0.0.0/16")).unwrap());
        assert!(a.apply(&nat("10.1.0.0/16")).unwrap());
        a.forget();
        assert!(a.apply(&nat("10.1.0.0/16")).unwrap());
        assert_eq!(a.runner.scripts.len(), 3);
    }

    #[test]
    fn applier_compares_renderings_not_inputs() {
        let mut a = Applier::new(Recorder::default());
        let mut rules = nat("10.0.0.0/16");
        rules.cluster_nodes_v4 = vec![[192, 0, 2, 2].into(), [192, 0, 2, 1].into()];
        assert!(a.apply(&rules).unwrap());
        rules.cluster_nodes_v4.reverse();
        rules.all_pools_v4.push("10.0.0.0/16".parse().unwrap());
        assert!(!a.apply(&rules).unwrap());
    }

    #[test]
    fn failed_apply_is_retried() {
        let mut a = Applier::new(Recorder::default());
        assert!(a.apply(&nat("10.0.0.0/16")).unwrap());
        a.runner.fail = true;
        let err = a.apply(&nat("10.1.0.0/16")).unwrap_err();
        assert_eq!(err.to_string(), "nft -f -: refused");
        a.runner.fail = false;
        // The kernel still has the first rules, so going back to them needs no run…
        assert!(!a.apply(&nat("10.0.0.0/16")).unwrap());
        // …and the failed change is tried again.
        assert!(a.apply(&nat("10.1.0.0/16")).unwrap());
    }

    #[test]
    fn sets_appear_only_with_their_rules() {
        let script = render(&nat("10.0.0.0/16"));
        assert!(!script.contains(CLUSTER_NODES));
        assert!(!script.contains("chain input"));
        let script = render(&NodeRules {
            ipip: true,
            ..NodeRules::default()
        });
        assert!(!script.contains(NAT_OUTGOING));
        assert!(script.contains("set cluster-nodes"));
    }

    #[test]
    fn remove_all_deletes_only_margay_tables() {
        let mut r = Recorder::default();
        remove_all(&mut r).unwrap();
        assert_eq!(
            r.scripts,
            ["table ip margay {}\ndelete table ip margay\n\
              table ip6 margay {}\ndelete table ip6 margay\n\
              table ip margay-policy {}\ndelete table ip margay-policy\n\
              table ip6 margay-policy {}\ndelete table ip6 margay-policy\n"]
        );
    }
}
