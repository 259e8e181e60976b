//! The catalogue of kinds: names, aliases, scope, and the `Resource` enum over all of them.

use std::fmt;

use serde_json::Value;

use crate::kinds::*;
use crate::meta::{ObjectMeta, API_VERSION};
use crate::object::Object;
use crate::validate::Errors;

macro_rules! kinds {
    ($(
        $variant:ident => $ty:ty {
            api_version: $api:expr,
            doc_kind: $doc:expr,
            namespaced: $ns:expr,
            plural: $plural:expr,
            aliases: [$($alias:expr),* $(,)?],
        }
    ),* $(,)?) => {
        /// Every kind Margay stores.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind { $($variant),* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The name used as the datastore key kind and in messages.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$variant => stringify!($variant)),* }
            }

            /// `apiVersion` printed for this kind.
            pub fn api_version(self) -> &'static str {
                match self { $(Kind::$variant => $api),* }
            }

            /// `kind` printed for this kind (differs from `name` for Kubernetes NetworkPolicy).
            pub fn document_kind(self) -> &'static str {
                match self { $(Kind::$variant => $doc),* }
            }

            pub fn namespaced(self) -> bool {
                match self { $(Kind::$variant => $ns),* }
            }

            pub fn plural(self) -> &'static str {
                match self { $(Kind::$variant => $plural),* }
            }

            /// Other names accepted on the command line (lower case).
            pub fn aliases(self) -> &'static [&'static str] {
                match self { $(Kind::$variant => &[$($alias),*]),* }
            }
        }

        /// A decoded resource of any kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource { $($variant($ty)),* }

        impl Resource {
            pub fn kind(&self) -> Kind {
                match self { $(Resource::$variant(_) => Kind::$variant),* }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self { $(Resource::$variant(o) => o.metadata()),* }
            }

            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Resource::$variant(o) => o.metadata_mut()),* }
            }

            pub fn apply_defaults(&mut self) {
                match self { $(Resource::$variant(o) => o.apply_defaults()),* }
            }

            pub fn validate(&self) -> Errors {
                match self { $(Resource::$variant(o) => o.validate()),* }
            }

            /// Checks a change against the stored version; kinds must match.
            pub fn validate_update(&self, old: &Resource) -> Errors {
                let mut errs = Errors::default();
                match (self, old) {
                    $((Resource::$variant(new), Resource::$variant(old)) => new.validate_update(old, &mut errs),)*
                    _ => errs.add("kind", "cannot change the kind of a stored resource"),
                }
                errs
            }

            /// `{metadata, spec…}` without `apiVersion`/`kind`.
            fn body_value(&self) -> Value {
                let body = match self { $(Resource::$variant(o) => serde_json::to_value(o)),* };
                body.expect("resource types serialize to JSON")
            }

            /// Decodes the body of a document already known to be of `kind`; unknown fields
            /// are passed to `on_unknown` with their path.
            pub(crate) fn decode_body(
                kind: Kind,
                body: Value,
                on_unknown: &mut dyn FnMut(String),
            ) -> Result<Resource, serde_path_to_error::Error<serde_json::Error>> {
                Ok(match kind {
                    $(Kind::$variant => Resource::$variant(crate::document::decode_typed::<$ty>(body, on_unknown)?)),*
                })
            }

            pub(crate) fn migrate_calico(kind: Kind, body: &mut serde_json::Map<String, Value>) {
                match kind { $(Kind::$variant => <$ty as Object>::migrate_calico(body)),* }
            }

            pub(crate) fn calico_ignored_fields(kind: Kind) -> &'static [&'static str] {
                match kind { $(Kind::$variant => <$ty as Object>::calico_ignored_fields()),* }
            }
        }

        $(
            impl From<$ty> for Resource {
                fn from(o: $ty) -> Resource { Resource::$variant(o) }
            }

            impl TryFrom<Resource> for $ty {
                type Error = Resource;
                fn try_from(r: Resource) -> Result<$ty, Resource> {
                    match r { Resource::$variant(o) => Ok(o), other => Err(other) }
                }
            }
        )*
    };
}

kinds! {
    IPPool => IPPool {
        api_version: API_VERSION, doc_kind: "IPPool", namespaced: false,
        plural: "ippools", aliases: ["ippool", "ipp", "ipps", "pool", "pools"],
    },
    IPAMConfig => IPAMConfig {
        api_version: API_VERSION, doc_kind: "IPAMConfig", namespaced: false,
        plural: "ipamconfigs", aliases: ["ipamconfig", "ipamconfiguration", "ipamconfigurations"],
    },
    IPReservation => IPReservation {
        api_version: API_VERSION, doc_kind: "IPReservation", namespaced: false,
        plural: "ipreservations", aliases: ["ipreservation", "ipres"],
    },
    IPAMBlock => IPAMBlock {
        api_version: API_VERSION, doc_kind: "IPAMBlock", namespaced: false,
        plural: "ipamblocks", aliases: ["ipamblock", "block", "blocks"],
    },
    BlockAffinity => BlockAffinity {
        api_version: API_VERSION, doc_kind: "BlockAffinity", namespaced: false,
        plural: "blockaffinities", aliases: ["blockaffinity", "affinity", "affinities"],
    },
    IPAMHandle => IPAMHandle {
        api_version: API_VERSION, doc_kind: "IPAMHandle", namespaced: false,
        plural: "ipamhandles", aliases: ["ipamhandle", "handle", "handles"],
    },
    Node => Node {
        api_version: API_VERSION, doc_kind: "Node", namespaced: false,
        plural: "nodes", aliases: ["node", "no"],
    },
    WorkloadEndpoint => WorkloadEndpoint {
        api_version: API_VERSION, doc_kind: "WorkloadEndpoint", namespaced: true,
        plural: "workloadendpoints", aliases: ["workloadendpoint", "wep", "weps"],
    },
    HostEndpoint => HostEndpoint {
        api_version: API_VERSION, doc_kind: "HostEndpoint", namespaced: false,
        plural: "hostendpoints", aliases: ["hostendpoint", "hep", "heps"],
    },
    Profile => Profile {
        api_version: API_VERSION, doc_kind: "Profile", namespaced: false,
        plural: "profiles", aliases: ["profile", "pro", "pros"],
    },
    NetworkPolicy => NetworkPolicy {
        api_version: API_VERSION, doc_kind: "NetworkPolicy", namespaced: true,
        plural: "networkpolicies", aliases: ["networkpolicy", "np", "nps", "policy", "policies"],
    },
    GlobalNetworkPolicy => GlobalNetworkPolicy {
        api_version: API_VERSION, doc_kind: "GlobalNetworkPolicy", namespaced: false,
        plural: "globalnetworkpolicies", aliases: ["globalnetworkpolicy", "gnp", "gnps"],
    },
    Tier => Tier {
        api_version: API_VERSION, doc_kind: "Tier", namespaced: false,
        plural: "tiers", aliases: ["tier"],
    },
    NetworkSet => NetworkSet {
        api_version: API_VERSION, doc_kind: "NetworkSet", namespaced: true,
        plural: "networksets", aliases: ["networkset", "netset", "netsets"],
    },
    GlobalNetworkSet => GlobalNetworkSet {
        api_version: API_VERSION, doc_kind: "GlobalNetworkSet", namespaced: false,
        plural: "globalnetworksets", aliases: ["globalnetworkset", "gns"],
    },
    BGPConfiguration => BGPConfiguration {
        api_version: API_VERSION, doc_kind: "BGPConfiguration", namespaced: false,
        plural: "bgpconfigurations", aliases: ["bgpconfiguration", "bgpconfig", "bgpconfigs"],
    },
    BGPPeer => BGPPeer {
        api_version: API_VERSION, doc_kind: "BGPPeer", namespaced: false,
        plural: "bgppeers", aliases: ["bgppeer", "bgpp", "bgpps", "peer", "peers"],
    },
    AgentConfiguration => AgentConfiguration {
        api_version: API_VERSION, doc_kind: "AgentConfiguration", namespaced: false,
        plural: "agentconfigurations",
        aliases: ["agentconfiguration", "agentconfig", "felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs"],
    },
    ControllersConfiguration => ControllersConfiguration {
        api_version: API_VERSION, doc_kind: "ControllersConfiguration", namespaced: false,
        plural: "controllersconfigurations",
        aliases: ["controllersconfiguration", "kubecontrollersconfiguration", "kubecontrollersconfigurations"],
    },
    ClusterInformation => ClusterInformation {
        api_version: API_VERSION, doc_kind: "ClusterInformation", namespaced: false,
        plural: "clusterinformations", aliases: ["clusterinformation", "clusterinfo"],
    },
    KubernetesNetworkPolicy => KubernetesNetworkPolicy {
        api_version: "networking.k8s.io/v1", doc_kind: "NetworkPolicy", namespaced: true,
        plural: "networkpolicies.networking.k8s.io",
        aliases: ["knp", "k8snetworkpolicy", "k8snetworkpolicies", "kubernetesnetworkpolicy", "kubernetesnetworkpolicies", "networkpolicy.networking.k8s.io"],
    },
    Namespace => Namespace {
        api_version: "v1", doc_kind: "Namespace", namespaced: false,
        plural: "namespaces", aliases: ["namespace", "ns"],
    },
    Pod => Pod {
        api_version: "v1", doc_kind: "Pod", namespaced: true,
        plural: "pods", aliases: ["pod", "po"],
    },
}

impl Kind {
    /// Resolves a command-line kind name: case-insensitive, singular, plural or short.
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|k| {
            k.name().eq_ignore_ascii_case(&lower)
                || k.plural() == lower
                || k.aliases().contains(&lower.as_str())
        })
    }

    /// The kind named by a document's `apiVersion` and `kind`, after Calico migration.
    pub fn from_document(api_version: &str, doc_kind: &str) -> Option<Kind> {
        let doc_kind = match doc_kind {
            "FelixConfiguration" => "AgentConfiguration",
            "KubeControllersConfiguration" => "ControllersConfiguration",
            other => other,
        };
        match api_version {
            "networking.k8s.io/v1" if doc_kind == "NetworkPolicy" => {
                Some(Kind::KubernetesNetworkPolicy)
            }
            "v1" => match doc_kind {
                "Namespace" => Some(Kind::Namespace),
                "Pod" => Some(Kind::Pod),
                _ => None,
            },
            _ => Kind::ALL
                .iter()
                .copied()
                .find(|k| k.api_version() == API_VERSION && k.name() == doc_kind),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Resource {
    pub fn from_object<T: Object>(obj: T) -> Resource {
        obj.into()
    }

    /// Decodes a document as stored by Margay itself: already migrated, defaulted and
    /// validated, so no checks run and unknown fields (from a newer version) are ignored.
    pub fn from_stored(kind: Kind, mut doc: Value) -> Result<Resource, String> {
        if let Value::Object(map) = &mut doc {
            map.remove("apiVersion");
            map.remove("kind");
        }
        Resource::decode_body(kind, doc, &mut |_| {}).map_err(|e| e.to_string())
    }

    /// The full document: `apiVersion`, `kind`, then the body.
    pub fn to_value(&self) -> Value {
        let kind = self.kind();
        let mut doc = serde_json::Map::new();
        doc.insert("apiVersion".into(), kind.api_version().into());
        doc.insert("kind".into(), kind.document_kind().into());
        if let Value::Object(body) = self.body_value() {
            doc.extend(body);
        }
        Value::Object(doc)
    }

    /// `Kind name` or `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let m = self.metadata();
        match &m.namespace {
            Some(ns) => format!("{} {}/{}", self.kind(), ns, m.name),
            None => format!("{} {}", self.kind(), m.name),
        }
    }
}
