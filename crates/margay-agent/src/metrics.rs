//! The agent's Prometheus metrics, exposed on `/metrics` by [`crate::http::bind_metrics`].

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use margay_api::Dataplane;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds, in seconds, for both histograms: a no-op sync takes ~100 µs, a full resync
/// of a large cluster a few seconds, and anything past 10 s is simply "too slow".
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The `kind` values of `margay_agent_apply_errors_total`, exported at 0 from the start so
/// that `rate()` and alerts see the series before the first error.
const ERROR_KINDS: [&str; 8] = [
    "route",
    "fdb",
    "neighbour",
    "link",
    "nft",
    "iptables",
    "datastore",
    "state",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
}

/// `peer="172.30.0.12", type="node-to-node mesh"` (see [`crate::bgp::PeerType`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    r#type: String,
}

/// The speaker's per-peer metrics and its totals.
#[derive(Debug)]
struct BgpMetrics {
    peer_up: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    prefixes_received: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    prefixes_accepted: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    prefixes_advertised: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    messages_received: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    messages_sent: Family<PeerLabels, Gauge<u64, AtomicU64>>,
    /// The speaker's totals, in [`BGP_COUNTERS`] order.
    totals: Vec<Counter>,
    /// The last totals seen (the speaker's restart starts them again at 0) and the peers
    /// exported, whose series go when they do.
    last: Mutex<(Vec<u64>, BTreeSet<PeerLabels>)>,
}

/// `margay_bgp_<name>_total` and its help, for each of the speaker's counters.
const BGP_COUNTERS: [(&str, &str); 12] = [
    ("messages_received", "BGP messages received"),
    ("messages_sent", "BGP messages sent"),
    ("updates_received", "BGP UPDATE messages received"),
    ("updates_sent", "BGP UPDATE messages sent"),
    (
        "notifications_received",
        "BGP NOTIFICATION messages received",
    ),
    ("notifications_sent", "BGP NOTIFICATION messages sent"),
    (
        "sessions_established",
        "BGP sessions that reached Established",
    ),
    ("sessions_dropped", "BGP sessions that left Established"),
    ("connect_failures", "Outgoing BGP connections that failed"),
    ("routes_installed", "Learned routes written to the kernel"),
    ("routes_removed", "Learned routes removed from the kernel"),
    (
        "sink_errors",
        "Batches of route changes the kernel refused, wholly or in part",
    ),
];

fn counter_values(c: &margay_bgp::speaker::Counters) -> Vec<u64> {
    vec![
        c.messages_received,
        c.messages_sent,
        c.updates_received,
        c.updates_sent,
        c.notifications_received,
        c.notifications_sent,
        c.sessions_established,
        c.sessions_dropped,
        c.connect_failures,
        c.routes_installed,
        c.routes_removed,
        c.sink_errors,
    ]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataplaneLabels {
    dataplane: String,
}

/// The agent's metrics. Every update is a few atomic operations, so the sync loop calls them
/// inline.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    watch_lag: Histogram,
    routes: Gauge<u64, AtomicU64>,
    fdb: Gauge<u64, AtomicU64>,
    neighbours: Gauge<u64, AtomicU64>,
    apply_errors: Family<ErrorLabels, Counter>,
    policy_duration: Histogram,
    policy_endpoints: Gauge<u64, AtomicU64>,
    policy_rules: Gauge<u64, AtomicU64>,
    policy_sets: Gauge<u64, AtomicU64>,
    policy_errors: Gauge<u64, AtomicU64>,
    policy_dataplane: Family<DataplaneLabels, Gauge<u64, AtomicU64>>,
    bgp: BgpMetrics,
}

/// What the policy tables hold, for [`Metrics::set_policy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyGauges {
    pub endpoints: u64,
    pub rules: u64,
    pub sets: u64,
    /// Policy resources refused (left out) at the last sync.
    pub errors: u64,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "margay_agent_sync_duration_seconds",
            "Time taken by one sync: reading the model, planning and applying the difference",
            sync_duration.clone(),
        );
        let watch_lag = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "margay_agent_watch_lag_seconds",
            "Time from a datastore event arriving to its change being applied to the kernel",
            watch_lag.clone(),
        );
        let routes = Gauge::default();
        registry.register(
            "margay_agent_routes_programmed",
            "Routes the agent has programmed in the kernel",
            routes.clone(),
        );
        let fdb = Gauge::default();
        registry.register(
            "margay_agent_fdb_entries_programmed",
            "VXLAN forwarding database entries the agent has programmed",
            fdb.clone(),
        );
        let neighbours = Gauge::default();
        registry.register(
            "margay_agent_neighbours_programmed",
            "Neighbour (ARP/NDP) entries the agent has programmed",
            neighbours.clone(),
        );
        let apply_errors = Family::<ErrorLabels, Counter>::default();
        // Registered without the suffix: the OpenMetrics encoder appends `_total` to counters.
        registry.register(
            "margay_agent_apply_errors",
            "Failures applying a change, by kind of object",
            apply_errors.clone(),
        );
        for kind in ERROR_KINDS {
            let _ = apply_errors.get_or_create(&ErrorLabels { kind: kind.into() });
        }
        let policy_duration = Histogram::new(SECONDS_BUCKETS);
        registry.register(
            "margay_agent_policy_programming_seconds",
            "Time taken to compute this node's policy program and bring the policy tables to it",
            policy_duration.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<u64, AtomicU64>::default();
            registry.register(name, help, g.clone());
            g
        };
        let policy_endpoints = gauge(
            &mut registry,
            "margay_agent_policy_endpoints_programmed",
            "Local workload endpoints whose policy is programmed",
        );
        let policy_rules = gauge(
            &mut registry,
            "margay_agent_policy_rules_programmed",
            "Rules of the policy and profile chains programmed",
        );
        let policy_sets = gauge(
            &mut registry,
            "margay_agent_policy_sets_programmed",
            "Address and named-port sets programmed for policy",
        );
        let policy_errors = gauge(
            &mut registry,
            "margay_agent_policy_errors",
            "Policy resources the agent could not use at its last sync (left out, or keeping \
             what is programmed)",
        );
        let policy_dataplane = Family::<DataplaneLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "margay_agent_policy_dataplane",
            "1 for the dataplane that holds this node's policy program (nftables or iptables), \
             0 for the other; both 0 before the first program",
            policy_dataplane.clone(),
        );
        for dataplane in Dataplane::ALL {
            let _ = policy_dataplane.get_or_create(&DataplaneLabels {
                dataplane: dataplane.as_str().into(),
            });
        }
        let mut peer_family = |name: &str, help: &str| {
            let f = Family::<PeerLabels, Gauge<u64, AtomicU64>>::default();
            registry.register(name, help, f.clone());
            f
        };
        let peer_up = peer_family(
            "margay_bgp_peer_up",
            "1 while the BGP session with the peer is Established",
        );
        let prefixes_received = peer_family(
            "margay_bgp_peer_prefixes_received",
            "Prefixes the peer announced during the current session",
        );
        let prefixes_accepted = peer_family(
            "margay_bgp_peer_prefixes_accepted",
            "Prefixes from the peer in the RIB now",
        );
        let prefixes_advertised = peer_family(
            "margay_bgp_peer_prefixes_advertised",
            "Prefixes advertised to the peer now",
        );
        let messages_received = peer_family(
            "margay_bgp_peer_messages_received",
            "BGP messages received from the peer",
        );
        let messages_sent = peer_family(
            "margay_bgp_peer_messages_sent",
            "BGP messages sent to the peer",
        );
        let totals = BGP_COUNTERS
            .iter()
            .map(|(name, help)| {
                let c = Counter::default();
                registry.register(format!("margay_bgp_{name}"), *help, c.clone());
                c
            })
            .collect();
        let bgp = BgpMetrics {
            peer_up,
            prefixes_received,
            prefixes_accepted,
            prefixes_advertised,
            messages_received,
            messages_sent,
            totals,
            last: Mutex::new((vec![0; BGP_COUNTERS.len()], BTreeSet::new())),
        };
        Arc::new(Metrics {
            bgp,
            registry,
            sync_duration,
            watch_lag,
            routes,
            fdb,
            neighbours,
            apply_errors,
            policy_duration,
            policy_endpoints,
            policy_rules,
            policy_sets,
            policy_errors,
            policy_dataplane,
        })
    }

    pub fn observe_sync(&self, seconds: f64) {
        self.sync_duration.observe(seconds);
    }

    pub fn set_programmed(&self, routes: u64, fdb: u64, neighbours: u64) {
        self.routes.set(routes);
        self.fdb.set(fdb);
        self.neighbours.set(neighbours);
    }

    pub fn observe_policy(&self, seconds: f64) {
        self.policy_duration.observe(seconds);
    }

    pub fn set_policy(&self, gauges: PolicyGauges) {
        self.policy_endpoints.set(gauges.endpoints);
        self.policy_rules.set(gauges.rules);
        self.policy_sets.set(gauges.sets);
        self.policy_errors.set(gauges.errors);
    }

    /// Which dataplane holds the policy program (`None`: none yet).
    pub fn set_policy_dataplane(&self, active: Option<Dataplane>) {
        for dataplane in Dataplane::ALL {
            let labels = DataplaneLabels {
                dataplane: dataplane.as_str().into(),
            };
            self.policy_dataplane
                .get_or_create(&labels)
                .set(u64::from(active == Some(*dataplane)));
        }
    }

    /// The BGP speaker now: each peer (address, type, status) and the speaker's totals
    /// (`None`: the speaker stopped).
    pub fn set_bgp(
        &self,
        peers: &[(String, &str, &margay_bgp::speaker::PeerStatus)],
        counters: Option<margay_bgp::speaker::Counters>,
    ) {
        let b = &self.bgp;
        let mut last = b.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = BTreeSet::new();
        for (peer, kind, status) in peers {
            let labels = PeerLabels {
                peer: peer.clone(),
                r#type: (*kind).to_owned(),
            };
            let up = status.state == margay_bgp::speaker::State::Established;
            b.peer_up.get_or_create(&labels).set(u64::from(up));
            b.prefixes_received
                .get_or_create(&labels)
                .set(status.prefixes_received);
            b.prefixes_accepted
                .get_or_create(&labels)
                .set(status.prefixes_accepted as u64);
            b.prefixes_advertised
                .get_or_create(&labels)
                .set(status.prefixes_advertised as u64);
            b.messages_received
                .get_or_create(&labels)
                .set(status.messages_received);
            b.messages_sent
                .get_or_create(&labels)
                .set(status.messages_sent);
            seen.insert(labels);
        }
        for gone in last.1.difference(&seen) {
            for family in [
                &b.peer_up,
                &b.prefixes_received,
                &b.prefixes_accepted,
                &b.prefixes_advertised,
                &b.messages_received,
                &b.messages_sent,
            ] {
                family.remove(gone);
            }
        }
        last.1 = seen;
        match counters {
            Some(c) => {
                let now = counter_values(&c);
                for ((counter, new), old) in b.totals.iter().zip(&now).zip(&last.0) {
                    // A restarted speaker counts from 0 again: everything it counted is new.
                    counter.inc_by(if new >= old { new - old } else { *new });
                }
                last.0 = now;
            }
            None => last.0 = vec![0; BGP_COUNTERS.len()],
        }
    }

    /// Time from a datastore event arriving to its change being applied.
    pub fn observe_watch_lag(&self, seconds: f64) {
        self.watch_lag.observe(seconds);
    }

    /// Counts one failure; `kind` is one of "route", "fdb", "neighbour", "link", "nft",
    /// "iptables", "datastore", "state" (files under the state directory).
    pub fn apply_error(&self, kind: &str) {
        self.apply_errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    /// The OpenMetrics text exposition (ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail: gauges stay below i64::MAX");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_peers_and_totals_are_exported_and_removed_with_their_peer() {
        use margay_bgp::speaker::{Counters, PeerStatus, State};
        let m = Metrics::new();
        let peer = |address: &str, state| PeerStatus {
            address: address.parse().unwrap(),
            state,
            established_since: None,
            prefixes_received: 3,
            prefixes_accepted: 2,
            prefixes_advertised: 1,
            messages_received: 10,
            messages_sent: 9,
            last_error: None,
        };
        let (a, b) = (
            peer("172.30.0.12", State::Established),
            peer("172.30.0.13", State::Active),
        );
        let counters = Counters {
            sessions_established: 4,
            routes_installed: 7,
            ..Default::default()
        };
        m.set_bgp(
            &[
                ("172.30.0.12".into(), "node-to-node mesh", &a),
                ("172.30.0.13".into(), "node-to-node mesh", &b),
            ],
            Some(counters),
        );
        let text = m.encode();
        for line in [
            "margay_bgp_peer_up{peer=\"172.30.0.12\",type=\"node-to-node mesh\"} 1\n",
            "margay_bgp_peer_up{peer=\"172.30.0.13\",type=\"node-to-node mesh\"} 0\n",
            "margay_bgp_peer_prefixes_accepted{peer=\"172.30.0.12\",type=\"node-to-node mesh\"} 2\n",
            "margay_bgp_peer_prefixes_advertised{peer=\"172.30.0.12\",type=\"node-to-node mesh\"} 1\n",
            "margay_bgp_sessions_established_total 4\n",
            "margay_bgp_routes_installed_total 7\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // A peer removed from the configuration takes its series along; totals only grow,
        // also across a restarted speaker that counts from 0 again.
        m.set_bgp(
            &[("172.30.0.12".into(), "node-to-node mesh", &a)],
            Some(Counters {
                sessions_established: 5,
                ..counters
            }),
        );
        m.set_bgp(
            &[("172.30.0.12".into(), "node-to-node mesh", &a)],
            Some(Counters {
                sessions_established: 1,
                ..Default::default()
            }),
        );
        let text = m.encode();
        assert!(!text.contains("172.30.0.13"), "{text}");
        assert!(
            text.contains("margay_bgp_sessions_established_total 6\n"),
            "{text}"
        );
        assert!(
            text.contains("margay_bgp_routes_installed_total 7\n"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_exposed_from_the_start() {
        let text = Metrics::new().encode();
        for name in [
            "# TYPE margay_agent_sync_duration_seconds histogram",
            "# TYPE margay_agent_watch_lag_seconds histogram",
            "margay_agent_routes_programmed 0",
            "margay_agent_fdb_entries_programmed 0",
            "margay_agent_neighbours_programmed 0",
            "# TYPE margay_agent_policy_programming_seconds histogram",
            "margay_agent_policy_endpoints_programmed 0",
            "margay_agent_policy_rules_programmed 0",
            "margay_agent_policy_sets_programmed 0",
            "margay_agent_policy_errors 0",
            "margay_agent_policy_dataplane{dataplane=\"nftables\"} 0",
            "margay_agent_policy_dataplane{dataplane=\"iptables\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        for kind in ERROR_KINDS {
            let line = format!("margay_agent_apply_errors_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn updates_show_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.observe_sync(0.0003);
        metrics.observe_sync(2.0);
        metrics.observe_watch_lag(0.02);
        metrics.set_programmed(12, 3, 4);
        metrics.apply_error("route");
        metrics.apply_error("route");
        metrics.apply_error("nft");
        metrics.observe_policy(0.004);
        metrics.set_policy(PolicyGauges {
            endpoints: 5,
            rules: 40,
            sets: 7,
            errors: 1,
        });
        metrics.set_policy_dataplane(Some(Dataplane::Iptables));
        let text = metrics.encode();
        for line in [
            "margay_agent_sync_duration_seconds_count 2\n",
            "margay_agent_sync_duration_seconds_sum 2.0003\n",
            "margay_agent_sync_duration_seconds_bucket{le=\"0.0005\"} 1\n",
            "margay_agent_sync_duration_seconds_bucket{le=\"2.5\"} 2\n",
            "margay_agent_watch_lag_seconds_bucket{le=\"0.01\"} 0\n",
            "margay_agent_watch_lag_seconds_bucket{le=\"0.025\"} 1\n",
            "margay_agent_routes_programmed 12\n",
            "margay_agent_fdb_entries_programmed 3\n",
            "margay_agent_neighbours_programmed 4\n",
            "margay_agent_apply_errors_total{kind=\"route\"} 2\n",
            "margay_agent_apply_errors_total{kind=\"nft\"} 1\n",
            "margay_agent_apply_errors_total{kind=\"fdb\"} 0\n",
            "margay_agent_policy_programming_seconds_bucket{le=\"0.005\"} 1\n",
            "margay_agent_policy_endpoints_programmed 5\n",
            "margay_agent_policy_rules_programmed 40\n",
            "margay_agent_policy_sets_programmed 7\n",
            "margay_agent_policy_errors 1\n",
            "margay_agent_policy_dataplane{dataplane=\"nftables\"} 0\n",
            "margay_agent_policy_dataplane{dataplane=\"iptables\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
