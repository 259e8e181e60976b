//! AgentConfiguration (FelixConfiguration), ControllersConfiguration
//! (KubeControllersConfiguration) and the Go-style Duration.

use std::time::Duration as StdDuration;

use margay_api::{
    decode, parse_documents, AgentConfiguration, ControllersConfiguration, Dataplane, Decoded,
    Duration, EndpointToHostAction, FieldError, Kind, LogSeverity, Object, PortProtocol, ProtoPort,
    Resource, RouteTableRange, Source, Toggle,
};
use serde_json::json;

fn decode_yaml(yaml: &str) -> Result<Decoded, FieldError> {
    let mut docs = parse_documents(yaml).expect("valid YAML");
    assert_eq!(docs.len(), 1, "one document expected");
    decode(docs.remove(0))
}

/// decode → to_value → decode gives the same resource, with no warnings the second time.
fn assert_round_trips(d: &Decoded) {
    let again = decode(d.resource.to_value()).expect("printed resource decodes");
    assert_eq!(again.resource, d.resource);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

fn agent(d: Decoded) -> AgentConfiguration {
    AgentConfiguration::try_from(d.resource).expect("an AgentConfiguration")
}

/// The seed's `kubectl get felixconfigurations default -o yaml`, re-indented.
const SEED_FELIX: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata:
  annotations:
    projectcalico.org/metadata: '{"uid":"513fb5c0-e7a7-41c2-903d-4924995779a9","creationTimestamp":"2025-10-18T01:30:37Z"}'
  creationTimestamp: "2025-10-18T01:30:37Z"
  generation: 1
  name: default
  resourceVersion: "548"
  uid: 788adb33-a721-4f3a-a428-6a0387643f52
spec:
  bpfConnectTimeLoadBalancing: TCP
  bpfHostNetworkedNATWithoutCTLB: Enabled
  bpfLogLevel: ""
  floatingIPs: Disabled
  logSeverityScreen: Info
  reportingInterval: 0s
"#;

/// The seed's `kubectl get kubecontrollersconfigurations default -o yaml`, re-indented.
const SEED_KUBE_CONTROLLERS: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: KubeControllersConfiguration
metadata:
  annotations:
    projectcalico.org/metadata: '{"uid":"c1ae426a-c9f3-450a-b892-b022bcc4722c","creationTimestamp":"2025-10-18T01:30:51Z"}'
  creationTimestamp: "2025-10-18T01:30:51Z"
  generation: 2
  name: default
  resourceVersion: "601"
  uid: c1ae426a-c9f3-450a-b892-b022bcc4722c
spec:
  controllers:
    namespace:
      reconcilerPeriod: 5m0s
    node:
      leakGracePeriod: 15m0s
      reconcilerPeriod: 5m0s
      syncLabels: Enabled
    policy:
      reconcilerPeriod: 5m0s
    serviceAccount:
      reconcilerPeriod: 5m0s
    workloadEndpoint:
      reconcilerPeriod: 5m0s
  etcdV3CompactionPeriod: 10m0s
  healthChecks: Enabled
  logSeverityScreen: Info
  prometheusMetricsPort: 9094
status:
  environmentVars:
    DATASTORE_TYPE: kubernetes
    ENABLED_CONTROLLERS: node
  runningConfig:
    controllers:
      node:
        hostEndpoint:
          autoCreate: Disabled
        leakGracePeriod: 15m0s
        syncLabels: Disabled
    etcdV3CompactionPeriod: 10m0s
    healthChecks: Enabled
    logSeverityScreen: Info
"#;

#[test]
fn seed_felix_configuration_migrates_with_warnings_for_unimplemented_fields() {
    let d = decode_yaml(SEED_FELIX).unwrap();
    assert_eq!(d.source, Source::Calico);
    assert_eq!(d.resource.kind(), Kind::AgentConfiguration);
    let mut warnings = d.warnings.clone();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "ignored: FelixConfiguration default: spec.bpfConnectTimeLoadBalancing",
            "ignored: FelixConfiguration default: spec.bpfHostNetworkedNATWithoutCTLB",
            "ignored: FelixConfiguration default: spec.bpfLogLevel",
            "ignored: FelixConfiguration default: spec.floatingIPs",
        ]
    );

    let printed = d.resource.to_value();
    assert_eq!(printed["apiVersion"], "margay.dev/v1");
    assert_eq!(printed["kind"], "AgentConfiguration");
    assert_eq!(printed["metadata"], json!({"name": "default"}));
    let spec = &printed["spec"];
    assert_eq!(spec["logSeverityScreen"], "Info");
    assert_eq!(spec["reportingInterval"], "0s");
    assert_eq!(spec["dataplane"], "nftables");
    assert_eq!(spec["interfacePrefix"], "mgy");
    assert_eq!(spec["vxlanVNI"], 4096);
    assert_eq!(spec["vxlanPort"], 4789);
    assert_eq!(spec["healthPort"], 9099);
    assert_eq!(spec["prometheusMetricsPort"], 9091);
    assert!(spec.get("bpfLogLevel").is_none() && spec.get("floatingIPs").is_none());
    // Fields meaning "automatic" stay absent.
    assert!(spec.get("ipipEnabled").is_none() && spec.get("vxlanMTU").is_none());

    assert_round_trips(&d);
    let cfg = agent(d);
    assert_eq!(cfg.spec.reporting_interval(), StdDuration::ZERO);
    assert_eq!(cfg.spec.log_severity_screen(), LogSeverity::Info);
}

#[test]
fn default_object_gets_calico_defaults_and_failsafe_ports() {
    let cfg = agent(
        decode(json!({
            "apiVersion": "margay.dev/v1", "kind": "AgentConfiguration",
            "metadata": {"name": "default"}, "spec": {}
        }))
        .unwrap(),
    );
    let s = &cfg.spec;
    assert_eq!(s.dataplane, Some(Dataplane::Nftables));
    assert_eq!(
        s.default_endpoint_to_host_action,
        Some(EndpointToHostAction::Drop)
    );
    assert_eq!(s.route_refresh_interval, Some(Duration::from_secs(90)));
    assert_eq!(s.iptables_refresh_interval, Some(Duration::from_secs(180)));
    assert_eq!(s.reporting_interval, Some(Duration::from_secs(30)));
    assert_eq!(s.remove_external_routes, Some(true));
    assert_eq!(s.health_host.as_deref(), Some("localhost"));
    assert_eq!(s.log_file_path(), Some("/var/log/margay/agent.log"));
    let inbound: Vec<(PortProtocol, u16)> = s
        .failsafe_inbound_host_ports()
        .iter()
        .map(|p| (p.protocol, p.port))
        .collect();
    use PortProtocol::{Tcp, Udp};
    assert_eq!(
        inbound,
        [
            (Tcp, 22),
            (Udp, 68),
            (Tcp, 179),
            (Tcp, 2379),
            (Tcp, 2380),
            (Tcp, 5473),
            (Tcp, 6443),
            (Tcp, 6666),
            (Tcp, 6667)
        ]
    );
    let outbound: Vec<(PortProtocol, u16)> = s
        .failsafe_outbound_host_ports()
        .iter()
        .map(|p| (p.protocol, p.port))
        .collect();
    assert_eq!(
        outbound,
        [
            (Udp, 53),
            (Udp, 67),
            (Tcp, 179),
            (Tcp, 2379),
            (Tcp, 2380),
            (Tcp, 5473),
            (Tcp, 6443),
            (Tcp, 6666),
            (Tcp, 6667)
        ]
    );
    assert_eq!(s.route_tables(), [RouteTableRange { min: 1, max: 250 }]);
    assert_eq!(s.workload_interface_prefix(), "mgy");
}

#[test]
fn node_object_keeps_only_its_overrides_and_layers_over_default() {
    let d = decode_yaml(
        r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: node.worker-1
spec:
  logSeverityScreen: debug
  vxlanMTU: 1400
  failsafeInboundHostPorts: []
"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty());
    let node = agent(d.clone());
    assert_eq!(node.node(), Some("worker-1"));
    // Case-insensitive like Calico, printed canonically; nothing else filled in.
    assert_eq!(
        d.resource.to_value()["spec"],
        json!({"logSeverityScreen": "Debug", "vxlanMTU": 1400, "failsafeInboundHostPorts": []})
    );
    assert_round_trips(&d);

    let mut global = AgentConfiguration::new("default");
    global.spec.vxlan_mtu = Some(1450);
    global.spec.vxlan_vni = Some(5000);
    global.apply_defaults();
    let eff = AgentConfiguration::effective(Some(&global), Some(&node));
    assert_eq!(eff.vxlan_mtu(), Some(1400));
    assert_eq!(eff.vxlan_vni(), 5000);
    assert_eq!(eff.log_severity_screen(), LogSeverity::Debug);
    assert!(eff.failsafe_inbound_host_ports().is_empty());
    assert_eq!(eff.failsafe_outbound_host_ports().len(), 9);

    let built_in = AgentConfiguration::effective(None, None);
    assert_eq!(built_in.vxlan_mtu(), None);
    assert_eq!(built_in.health_port(), 9099);
}

#[test]
fn implemented_fields_parse_with_calico_names() {
    let d = decode_yaml(
        r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata:
  name: default
spec:
  dataplane: iptables
  ipipEnabled: true
  ipipMTU: 1480
  vxlanEnabled: false
  vxlanVNI: 4097
  vxlanPort: 8472
  vxlanMTUV6: 1430
  mtuIfacePattern: "^eth.*"
  natOutgoingAddress: 192.0.2.10
  interfacePrefix: cali,tap
  defaultEndpointToHostAction: ACCEPT
  routeRefreshInterval: 1m
  iptablesRefreshInterval: 90s
  routeTableRanges: [{min: 10, max: 20}]
  routeTableRange: {min: 1, max: 5}
  removeExternalRoutes: false
  healthEnabled: true
  healthHost: 0.0.0.0
  prometheusMetricsEnabled: true
  failsafeOutboundHostPorts:
  - {port: 53, protocol: udp}
  - {port: 443, net: 10.0.0.1}
  logFilePath: none
"#,
    )
    .unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let s = agent(d.clone()).spec;
    assert_eq!(s.dataplane(), Dataplane::Iptables);
    assert_eq!(s.ipip_enabled, Some(true));
    assert_eq!(s.ipip_mtu(), Some(1480));
    assert_eq!(s.vxlan_port(), 8472);
    assert_eq!(s.nat_outgoing_address, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(s.interface_prefixes(), ["cali", "tap"]);
    assert_eq!(s.workload_interface_prefix(), "cali");
    assert_eq!(
        s.default_endpoint_to_host_action(),
        EndpointToHostAction::Accept
    );
    assert_eq!(s.route_refresh_interval(), StdDuration::from_secs(60));
    assert_eq!(s.route_tables(), [RouteTableRange { min: 10, max: 20 }]);
    assert!(!s.remove_external_routes());
    assert_eq!(s.log_file_path(), None);
    assert_eq!(
        s.failsafe_outbound_host_ports(),
        [
            ProtoPort::new(PortProtocol::Udp, 53),
            ProtoPort {
                protocol: PortProtocol::Tcp,
                port: 443,
                net: Some("10.0.0.1/32".parse().unwrap()),
            },
        ]
    );
    let printed = d.resource.to_value();
    assert_eq!(printed["spec"]["routeRefreshInterval"], "1m0s");
    assert_eq!(printed["spec"]["defaultEndpointToHostAction"], "Accept");
    assert_eq!(
        printed["spec"]["failsafeOutboundHostPorts"][1],
        json!({"protocol": "TCP", "port": 443, "net": "10.0.0.1/32"})
    );
    assert_round_trips(&d);
}

#[test]
fn calico_nftables_mode_becomes_the_dataplane() {
    let with_mode = |mode: &str| {
        let d = decode(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"nftablesMode": mode}
        }))
        .unwrap();
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        agent(d).spec.dataplane()
    };
    assert_eq!(with_mode("Enabled"), Dataplane::Nftables);
    assert_eq!(with_mode("Disabled"), Dataplane::Iptables);
    assert_eq!(with_mode("Auto"), Dataplane::Nftables);
}

#[test]
fn ignored_families_warn_but_unknown_fields_fail() {
    let d = decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": "default"},
        "spec": {"wireguardEnabled": true, "iptablesBackend": "NFT", "ipv6Support": false}
    }))
    .unwrap();
    assert_eq!(d.warnings.len(), 3, "{:?}", d.warnings);

    let err = decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": "default"}, "spec": {"vxlanVNIs": 1}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.vxlanVNIs");

    // Margay's own API is strict: Calico-only fields are errors there.
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "AgentConfiguration",
        "metadata": {"name": "default"}, "spec": {"bpfLogLevel": "Off"}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.bpfLogLevel");
}

#[test]
fn agent_configuration_validation_names_the_field() {
    let check = |name: &str, spec: serde_json::Value| {
        decode(json!({
            "apiVersion": "margay.dev/v1", "kind": "AgentConfiguration",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap_err()
    };
    assert_eq!(check("global", json!({})).field, "metadata.name");
    assert_eq!(
        check("default", json!({"interfacePrefix": "calico"})).field,
        "spec.interfacePrefix"
    );
    assert_eq!(
        check("default", json!({"interfacePrefix": "a b"})).field,
        "spec.interfacePrefix"
    );
    assert_eq!(
        check("default", json!({"vxlanVNI": 16_777_216})).field,
        "spec.vxlanVNI"
    );
    assert_eq!(
        check("default", json!({"vxlanPort": 0})).field,
        "spec.vxlanPort"
    );
    assert_eq!(
        check("default", json!({"ipipMTU": 40})).field,
        "spec.ipipMTU"
    );
    assert_eq!(
        check("default", json!({"vxlanMTUV6": 1000})).field,
        "spec.vxlanMTUV6"
    );
    assert_eq!(
        check("default", json!({"logSeverityScreen": "Panic"})).field,
        "spec.logSeverityScreen"
    );
    assert_eq!(
        check("default", json!({"logFilePath": "agent.log"})).field,
        "spec.logFilePath"
    );
    assert_eq!(
        check("default", json!({"healthHost": "a/b"})).field,
        "spec.healthHost"
    );
    assert_eq!(
        check(
            "default",
            json!({"routeTableRanges": [{"min": 0, "max": 3}]})
        )
        .field,
        "spec.routeTableRanges[0]"
    );
    assert_eq!(
        check(
            "default",
            json!({"failsafeInboundHostPorts": [{"port": 0}]})
        )
        .field,
        "spec.failsafeInboundHostPorts[0].port"
    );
    // Type errors carry the path too.
    let err = check("default", json!({"routeRefreshInterval": "soon"}));
    assert_eq!(err.field, "spec.routeRefreshInterval");
    assert!(err.message.contains("invalid duration"), "{err}");
    assert_eq!(
        check("default", json!({"dataplane": "ebpf"})).field,
        "spec.dataplane"
    );
    assert_eq!(check("node.", json!({})).field, "metadata.name");
}

#[test]
fn seed_kube_controllers_configuration_decodes_cleanly() {
    let d = decode_yaml(SEED_KUBE_CONTROLLERS).unwrap();
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(d.resource.kind(), Kind::ControllersConfiguration);
    let printed = d.resource.to_value();
    assert_eq!(printed["apiVersion"], "margay.dev/v1");
    assert_eq!(printed["kind"], "ControllersConfiguration");
    assert!(printed.get("status").is_none());
    assert_eq!(
        printed["spec"]["controllers"]["node"]["leakGracePeriod"],
        "15m0s"
    );
    assert_round_trips(&d);

    let c = ControllersConfiguration::try_from(d.resource).unwrap();
    assert_eq!(c.leak_grace_period(), Some(StdDuration::from_secs(15 * 60)));
    let node = c.spec.controllers.node.as_ref().unwrap();
    assert_eq!(node.reconciler_period(), StdDuration::from_secs(300));
    assert!(node.sync_labels());
    assert!(!node.auto_create_host_endpoints());
    assert_eq!(c.spec.prometheus_metrics_port(), Some(9094));
    assert!(c.spec.health_checks());
    assert_eq!(
        c.spec.etcd_v3_compaction_period,
        Some(Duration::from_mins(10))
    );
}

#[test]
fn controllers_defaults_and_disabled_gc() {
    let d = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "ControllersConfiguration",
        "metadata": {"name": "default"},
        "spec": {"controllers": {"node": {"leakGracePeriod": "0s", "hostEndpoint": {}}}}
    }))
    .unwrap();
    let c = ControllersConfiguration::try_from(d.resource.clone()).unwrap();
    // Zero disables IP garbage collection; other controllers stay off because they are absent.
    assert_eq!(c.leak_grace_period(), None);
    assert!(c.spec.controllers.policy.is_none());
    let node = c.spec.controllers.node.as_ref().unwrap();
    assert_eq!(node.sync_labels, Some(Toggle::Enabled));
    assert_eq!(
        node.host_endpoint.as_ref().unwrap().auto_create,
        Some(Toggle::Disabled)
    );
    assert_eq!(c.spec.log_severity_screen, Some(LogSeverity::Info));
    assert_round_trips(&d);

    let no_node = ControllersConfiguration::try_from(
        decode(json!({
            "apiVersion": "margay.dev/v1", "kind": "ControllersConfiguration",
            "metadata": {"name": "default"}, "spec": {"controllers": {}}
        }))
        .unwrap()
        .resource,
    )
    .unwrap();
    assert_eq!(no_node.leak_grace_period(), None);

    let all = ControllersConfiguration::new_default();
    assert_eq!(all.leak_grace_period(), Some(StdDuration::from_secs(900)));
    assert!(all.spec.controllers.namespace.is_some());
    assert!(all.validate().is_empty());
}

#[test]
fn controllers_configuration_rules_and_ignored_fields() {
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "ControllersConfiguration",
        "metadata": {"name": "other"}, "spec": {}
    }))
    .unwrap_err();
    assert_eq!(err.field, "metadata.name");
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "ControllersConfiguration",
        "metadata": {"name": "default"}, "spec": {"logSeverityScreen": "Trace"}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.logSeverityScreen");

    let d = decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
        "metadata": {"name": "default"},
        "spec": {
            "logSeverityScreen": "None",
            "debugProfilePort": 6060,
            "controllers": {
                "loadBalancer": {"assignIPs": "AllServices"},
                "node": {"hostEndpoint": {"autoCreate": "Enabled", "templates": [{"generateName": "x"}]}}
            }
        }
    }))
    .unwrap();
    let mut warnings = d.warnings.clone();
    warnings.sort();
    // serde_ignored marks the inside of an `Option` with `?`.
    assert_eq!(
        warnings,
        [
            "ignored: KubeControllersConfiguration default: spec.controllers.loadBalancer",
            "ignored: KubeControllersConfiguration default: spec.controllers.node.hostEndpoint.templates",
            "ignored: KubeControllersConfiguration default: spec.debugProfilePort",
        ]
    );
    let c = ControllersConfiguration::try_from(d.resource).unwrap();
    assert!(c
        .spec
        .controllers
        .node
        .unwrap()
        .auto_create_host_endpoints());
}

#[test]
fn durations_parse_and_print_like_go() {
    let cases = [
        ("90s", 90_000_000_000u64, "1m30s"),
        ("5m0s", 300_000_000_000, "5m0s"),
        ("15m", 900_000_000_000, "15m0s"),
        ("1h2m3s", 3_723_000_000_000, "1h2m3s"),
        ("2h", 7_200_000_000_000, "2h0m0s"),
        ("1.5h", 5_400_000_000_000, "1h30m0s"),
        ("1.5s", 1_500_000_000, "1.5s"),
        ("250ms", 250_000_000, "250ms"),
        ("1500us", 1_500_000, "1.5ms"),
        ("1.5\u{b5}s", 1_500, "1.5\u{b5}s"),
        ("42ns", 42, "42ns"),
        ("0", 0, "0s"),
        ("0s", 0, "0s"),
        ("+10s", 10_000_000_000, "10s"),
        ("1m0.25s", 60_250_000_000, "1m0.25s"),
        (".5s", 500_000_000, "500ms"),
    ];
    for (text, nanos, printed) in cases {
        let d: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(d.as_std(), StdDuration::from_nanos(nanos), "{text}");
        assert_eq!(d.to_string(), printed, "{text}");
        assert_eq!(printed.parse::<Duration>().unwrap(), d, "{printed}");
    }
    for bad in [
        "",
        "5",
        "5x",
        "-1s",
        "s",
        "1.5.5s",
        "1h2",
        "9999999999h",
        "1 s",
    ] {
        assert!(bad.parse::<Duration>().is_err(), "{bad:?} should not parse");
    }
    assert_eq!(
        serde_json::to_value(Duration::from_mins(5)).unwrap(),
        json!("5m0s")
    );
    let err = serde_json::from_value::<Duration>(json!(30)).unwrap_err();
    assert!(err.to_string().contains("duration string"), "{err}");
}

#[test]
fn agent_configuration_resource_conversions() {
    let cfg = AgentConfiguration::new("node.worker-2");
    let r = Resource::from(cfg.clone());
    assert_eq!(r.kind(), Kind::AgentConfiguration);
    assert_eq!(AgentConfiguration::try_from(r).unwrap(), cfg);
    assert_eq!(
        Kind::from_cli_name("felixconfig"),
        Some(Kind::AgentConfiguration)
    );
}

#[test]
fn dataplane_is_checked_by_name_and_a_node_can_choose_its_own() {
    let err = decode(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
        "metadata": {"name": "default"}, "spec": {"dataplane": "ebpf"}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.dataplane");
    assert_eq!(err.message, "\"ebpf\" is not one of nftables, iptables");
    let err = decode(json!({
        "apiVersion": "margay.dev/v1", "kind": "AgentConfiguration",
        "metadata": {"name": "node.n1"}, "spec": {"dataplane": 1}
    }))
    .unwrap_err();
    assert_eq!(err.field, "spec.dataplane");

    // Case-insensitive like Calico's enums, printed canonically.
    let node = agent(
        decode(json!({
            "apiVersion": "margay.dev/v1", "kind": "AgentConfiguration",
            "metadata": {"name": "node.n1"}, "spec": {"dataplane": "IPTables"}
        }))
        .unwrap(),
    );
    assert_eq!(node.spec.dataplane, Some(Dataplane::Iptables));
    let mut global = AgentConfiguration::new("default");
    global.apply_defaults();
    assert_eq!(global.spec.dataplane, Some(Dataplane::Nftables));
    assert_eq!(
        AgentConfiguration::effective(Some(&global), Some(&node)).dataplane(),
        Dataplane::Iptables
    );
    assert_eq!(
        AgentConfiguration::effective(Some(&global), None).dataplane(),
        Dataplane::Nftables
    );
    global.spec.dataplane = Some(Dataplane::Iptables);
    let mut other = AgentConfiguration::new("node.n2");
    other.spec.dataplane = Some(Dataplane::Nftables);
    assert_eq!(
        AgentConfiguration::effective(Some(&global), Some(&other)).dataplane(),
        Dataplane::Nftables
    );
    assert_eq!(
        AgentConfiguration::effective(None, None).dataplane(),
        Dataplane::Nftables
    );
}
