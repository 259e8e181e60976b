//! Object metadata shared by every kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{self, Errors};

/// Margay's own API group and version.
pub const API_VERSION: &str = "margay.dev/v1";

/// Kubernetes-style object metadata. `uid`, `creationTimestamp` and `resourceVersion` are set
/// by the datastore; on input they are accepted (so `get -o yaml` output re-applies) and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl ObjectMeta {
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }
    }

    /// The datastore revision this object was read at, if any.
    pub fn revision(&self) -> Option<i64> {
        self.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
    }

    pub(crate) fn validate(&self, namespaced: bool, errs: &mut Errors) {
        if self.name.is_empty() {
            errs.add("metadata.name", "is required");
        } else {
            validate::resource_name("metadata.name", &self.name, errs);
        }
        match (&self.namespace, namespaced) {
            (Some(ns), true) => validate::dns_label("metadata.namespace", ns, errs),
            (Some(_), false) => errs.add(
                "metadata.namespace",
                "must not be set: this kind is not namespaced",
            ),
            (None, _) => {}
        }
        for (k, v) in &self.labels {
            validate::label(&format!("metadata.labels.{k}"), k, v, errs);
        }
    }
}
