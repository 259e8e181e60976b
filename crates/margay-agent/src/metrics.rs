//! The agent's Prometheus metrics, exposed on `/metrics` by [`crate::http::bind_metrics`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

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
        Arc::new(Metrics {
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
