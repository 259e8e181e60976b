//! The WorkloadEndpoint an attachment is recorded as: what policy, the agent and leak
//! detection read. Built the way Calico's CNI plugin builds it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use margay_api::{
    Action, EntityRule, ObjectMeta, Pod, PortProtocol, Profile, ProfileSpec, Protocol, Rule,
    WorkloadEndpoint, WorkloadEndpointPort, WorkloadEndpointSpec, ORCHESTRATOR_K8S,
};
use sha1::{Digest, Sha1};

use crate::error::{CniError, Result};

/// Non-Kubernetes attachments (e.g. `ctr run --cni`) are keyed by container ID, as Calico does.
pub const ORCHESTRATOR_CNI: &str = "cni";
/// Namespace for endpoints of non-Kubernetes attachments.
pub const CNI_NAMESPACE: &str = "default";

/// Calico's labels that tie an endpoint to its namespace, orchestrator and service account.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";

/// Who the attachment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    Pod { namespace: String, name: String },
    Container { id: String },
}

impl Workload {
    /// Host-side veth: prefix + first 11 hex of SHA1("<ns>.<pod>"), or of the container ID.
    pub fn host_veth_name(&self, prefix: &str) -> String {
        let seed = match self {
            Workload::Pod { namespace, name } => format!("{namespace}.{name}"),
            Workload::Container { id } => id.clone(),
        };
        let digest = Sha1::digest(seed.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}{}", &hex[..11])
    }

    pub fn namespace(&self) -> &str {
        match self {
            Workload::Pod { namespace, .. } => namespace,
            Workload::Container { .. } => CNI_NAMESPACE,
        }
    }

    pub fn endpoint_name(&self, node: &str, ifname: &str) -> Result<String> {
        let (orchestrator, id) = match self {
            Workload::Pod { name, .. } => (ORCHESTRATOR_K8S, name.as_str()),
            Workload::Container { id } => (ORCHESTRATOR_CNI, id.as_str()),
        };
        WorkloadEndpoint::name_for(node, orchestrator, id, ifname)
            .map_err(|e| CniError::invalid_env(format!("cannot name the endpoint: {e}")))
    }
}

/// Everything the endpoint is built from.
pub struct EndpointInput<'a> {
    pub workload: &'a Workload,
    pub node: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub network: &'a str,
    pub host_ifname: &'a str,
    pub container_mac: &'a str,
    pub addresses: &'a [IpAddr],
    /// The stored Kubernetes Pod, when there is one: labels, service account, named ports.
    pub pod: Option<&'a Pod>,
}

pub fn build(input: &EndpointInput) -> Result<WorkloadEndpoint> {
    let namespace = input.workload.namespace();
    let name = input.workload.endpoint_name(input.node, input.ifname)?;
    let mut labels = BTreeMap::new();
    let mut spec = WorkloadEndpointSpec {
        node: input.node.to_owned(),
        container_id: Some(input.container_id.to_owned()),
        endpoint: input.ifname.to_owned(),
        interface_name: input.host_ifname.to_owned(),
        mac: (!input.container_mac.is_empty()).then(|| input.container_mac.to_owned()),
        ip_networks: input.addresses.iter().map(|ip| IpNet::from(*ip)).collect(),
        ..Default::default()
    };
    match input.workload {
        Workload::Pod { name: pod, .. } => {
            let sa = input
                .pod
                .map_or(margay_api::DEFAULT_SERVICE_ACCOUNT, Pod::service_account);
            spec.orchestrator = ORCHESTRATOR_K8S.to_owned();
            spec.pod = Some(pod.clone());
            spec.service_account_name = Some(sa.to_owned());
            spec.profiles = vec![format!("kns.{namespace}"), format!("ksa.{namespace}.{sa}")];
            if let Some(p) = input.pod {
                labels.extend(p.labels().clone());
                spec.ports = p
                    .named_ports()
                    .into_iter()
                    .map(|np| WorkloadEndpointPort {
                        name: np.name,
                        protocol: match np.protocol {
                            PortProtocol::Tcp => Protocol::Tcp,
                            PortProtocol::Udp => Protocol::Udp,
                            PortProtocol::Sctp => Protocol::Sctp,
                        },
                        port: np.port,
                        host_port: 0,
                        host_ip: None,
                    })
                    .collect();
            }
            labels.insert(LABEL_SERVICE_ACCOUNT.to_owned(), sa.to_owned());
        }
        Workload::Container { id } => {
            spec.orchestrator = ORCHESTRATOR_CNI.to_owned();
            spec.workload = Some(id.clone());
            spec.profiles = vec![input.network.to_owned()];
        }
    }
    labels.insert(LABEL_NAMESPACE.to_owned(), namespace.to_owned());
    labels.insert(LABEL_ORCHESTRATOR.to_owned(), spec.orchestrator.clone());
    let mut metadata = ObjectMeta::namespaced(namespace, name);
    metadata.labels = labels;
    Ok(WorkloadEndpoint { metadata, spec })
}

/// The profile of non-Kubernetes endpoints, named after the network (their only profile), as
/// Calico's plugin creates it when it is missing: endpoints of the network let each other in,
/// and send anywhere. It labels them `<network>: ""`, which its ingress rule selects. Without
/// it, the node agent would find no rule for them and drop all their traffic.
pub fn network_profile(network: &str) -> Profile {
    let mut from_network = Rule::new(Action::Allow);
    from_network.source = EntityRule {
        selector: Some(format!("has({network})")),
        ..EntityRule::default()
    };
    Profile {
        metadata: ObjectMeta::named(network),
        spec: ProfileSpec {
            ingress: vec![from_network],
            egress: vec![Rule::new(Action::Allow)],
            labels_to_apply: BTreeMap::from([(network.to_owned(), String::new())]),
        },
    }
}

#[cfg(test)]
mod tests {
    use margay_api::Object;
    use serde_json::json;

    use super::*;

    #[test]
    fn veth_name_matches_calico() {
        // Calico: "cali" + sha1("default.nginx")[:11].
        let w = Workload::Pod {
            namespace: "default".into(),
            name: "nginx".into(),
        };
        let hex: String = Sha1::digest(b"default.nginx")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(w.host_veth_name("cali"), format!("cali{}", &hex[..11]));
        assert_eq!(w.host_veth_name("mgy").len(), 14);
        let c = Workload::Container { id: "abc".into() };
        assert!(c.host_veth_name("mgy").starts_with("mgya9993e36470"));
    }

    #[test]
    fn pod_endpoint_carries_labels_ports_and_profiles() {
        let mut pod = Pod::new(
            "shop",
            "web-0",
            json!({"serviceAccountName": "front", "containers": [{"ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9000}
            ]}]}),
        );
        pod.metadata.labels.insert("app".into(), "web".into());
        let workload = Workload::Pod {
            namespace: "shop".into(),
            name: "web-0".into(),
        };
        let wep = build(&EndpointInput {
            workload: &workload,
            node: "node-1",
            container_id: "cid1",
            ifname: "eth0",
            network: "k8s-pod-network",
            host_ifname: "mgy123",
            container_mac: "02:00:00:00:00:01",
            addresses: &["10.0.0.5".parse().unwrap()],
            pod: Some(&pod),
        })
        .unwrap();
        assert_eq!(wep.metadata.name, "node--1-k8s-web--0-eth0");
        assert_eq!(wep.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(wep.metadata.labels["app"], "web");
        assert_eq!(wep.metadata.labels[LABEL_SERVICE_ACCOUNT], "front");
        assert_eq!(wep.spec.profiles, vec!["kns.shop", "ksa.shop.front"]);
        assert_eq!(wep.spec.ports.len(), 2);
        assert_eq!(
            wep.spec.ip_networks,
            vec!["10.0.0.5/32".parse::<IpNet>().unwrap()]
        );
        assert!(wep.validate().is_empty(), "{:?}", wep.validate());
    }

    #[test]
    fn container_endpoint_without_pod() {
        let workload = Workload::Container { id: "ctr-1".into() };
        let wep = build(&EndpointInput {
            workload: &workload,
            node: "n",
            container_id: "ctr-1",
            ifname: "eth0",
            network: "margay",
            host_ifname: "mgy1",
            container_mac: "",
            addresses: &["10.0.0.6".parse().unwrap()],
            pod: None,
        })
        .unwrap();
        assert_eq!(wep.metadata.name, "n-cni-ctr--1-eth0");
        assert_eq!(wep.spec.profiles, vec!["margay"]);
        assert!(wep.validate().is_empty(), "{:?}", wep.validate());
    }

    #[test]
    fn the_network_profile_lets_its_endpoints_in_and_everything_out() {
        let profile = network_profile("k8s-pod-network");
        assert!(profile.validate().is_empty(), "{:?}", profile.validate());
        assert_eq!(
            serde_json::to_value(&profile.spec).unwrap(),
            json!({
                "ingress": [{"action": "Allow", "source": {"selector": "has(k8s-pod-network)"}}],
                "egress": [{"action": "Allow"}],
                "labelsToApply": {"k8s-pod-network": ""},
            })
        );
        // Enforced: containers of the network reach each other; others only send to them.
        let container = |id: &str, ip: &str| {
            let workload = Workload::Container { id: id.into() };
            build(&EndpointInput {
                workload: &workload,
                node: "n",
                container_id: id,
                ifname: "eth0",
                network: "k8s-pod-network",
                host_ifname: "mgy1",
                container_mac: "",
                addresses: &[ip.parse().unwrap()],
                pod: None,
            })
            .unwrap()
        };
        let pod = Workload::Pod {
            namespace: "default".into(),
            name: "web".into(),
        };
        let pod = build(&EndpointInput {
            workload: &pod,
            node: "n",
            container_id: "c3",
            ifname: "eth0",
            network: "k8s-pod-network",
            host_ifname: "mgy3",
            container_mac: "",
            addresses: &["10.0.0.3".parse().unwrap()],
            pod: None,
        })
        .unwrap();
        let cluster = margay_policy::Cluster::from_resources([
            container("c1", "10.0.0.1").into(),
            container("c2", "10.0.0.2").into(),
            pod.into(),
            profile.into(),
        ])
        .unwrap();
        let m = margay_policy::matrix(&cluster, 80, margay_policy::Protocol::Tcp);
        let allowed = |a: &str, b: &str| m.allowed.contains(&(a.to_owned(), b.to_owned()));
        assert!(allowed("default/c1", "default/c2") && allowed("default/c2", "default/c1"));
        assert!(allowed("default/c1", "default/web"));
        assert!(!allowed("default/web", "default/c1"));
    }
}
