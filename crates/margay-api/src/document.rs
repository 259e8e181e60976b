//! Reading documents: multi-document YAML or JSON text → typed, defaulted, validated resources.
//!
//! Three sources are accepted: Margay's own `margay.dev/v1` (strict: an unknown field is an
//! error), Calico's `projectcalico.org/v3` and `crd.projectcalico.org/v1` exactly as
//! `calicoctl`/`kubectl get -o yaml` print them (server-set fields dropped, valid-but-unimplemented
//! Calico fields dropped with a warning), and the Kubernetes kinds Margay reads.

use serde::de::{Deserialize, DeserializeOwned};
use serde_json::{Map, Value};

use crate::kind::{Kind, Resource};
use crate::meta::API_VERSION;
use crate::validate::FieldError;

const CALICO_API_VERSIONS: &[&str] = &["projectcalico.org/v3", "crd.projectcalico.org/v1"];

/// Metadata fields a server sets; dropped from migrated documents.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Metadata Kubernetes controllers set on the objects they own.
const CONTROLLER_METADATA: &[&str] = &["generateName", "ownerReferences", "finalizers"];

/// Annotations written by Calico or kubectl for their own bookkeeping.
const SERVER_ANNOTATIONS: &[&str] = &[
    "projectcalico.org/metadata",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Where a document came from, which decides how strict decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Margay,
    Calico,
    Kubernetes,
}

/// A resource read from a document, with the warnings migration produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub resource: Resource,
    pub source: Source,
    pub warnings: Vec<String>,
}

/// Splits text into documents. Accepts multi-document YAML, JSON, and `List` wrappers
/// (`kind: List` or `kind: IPPoolList` with `items`, as `get -o yaml` prints lists).
/// Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(de).map_err(|e| format!("malformed YAML: {e}"))?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if is_list(map) => {
                if let Some(Value::Array(items)) = map.get("items") {
                    docs.extend(items.iter().cloned());
                }
            }
            Value::Object(_) => docs.push(value),
            other => {
                return Err(format!(
                    "expected a mapping with apiVersion and kind, found {}",
                    type_name(&other)
                ))
            }
        }
    }
    Ok(docs)
}

fn is_list(map: &Map<String, Value>) -> bool {
    map.get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && map.contains_key("items")
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A short label for a document in error messages: `IPPool default-ipv4-ippool`.
pub fn describe_document(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Puts namespaced documents that name no namespace into `namespace` (kubectl's `-n`).
pub fn set_default_namespace(doc: &mut Value, namespace: &str) {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = if CALICO_API_VERSIONS.contains(&api_version) {
        API_VERSION
    } else {
        api_version
    };
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !Kind::from_document(api_version, kind).is_some_and(Kind::namespaced) {
        return;
    }
    if let Some(Value::Object(meta)) = doc.get_mut("metadata") {
        meta.entry("namespace")
            .or_insert_with(|| Value::String(namespace.to_owned()));
    }
}

/// Decodes one document: migration, typed decoding, defaults, then validation.
pub fn decode(doc: Value) -> Result<Decoded, FieldError> {
    let Value::Object(mut map) = doc else {
        return Err(field_error("", "a document must be a mapping"));
    };
    let api_version = take_string(&mut map, "apiVersion")?;
    let doc_kind = take_string(&mut map, "kind")?;

    let source = if api_version == API_VERSION {
        Source::Margay
    } else if CALICO_API_VERSIONS.contains(&api_version.as_str()) {
        Source::Calico
    } else if api_version == "networking.k8s.io/v1" || api_version == "v1" {
        Source::Kubernetes
    } else {
        return Err(field_error(
            "apiVersion",
            format!(
                "unknown apiVersion {api_version:?} (expected {API_VERSION}, projectcalico.org/v3, crd.projectcalico.org/v1, networking.k8s.io/v1 or v1)"
            ),
        ));
    };
    let lookup_version = if source == Source::Calico {
        API_VERSION
    } else {
        &api_version
    };
    let kind = Kind::from_document(lookup_version, &doc_kind)
        .filter(|k| source != Source::Margay || k.document_kind() == doc_kind)
        .ok_or_else(|| {
            field_error(
                "kind",
                format!("unknown kind {doc_kind:?} in {api_version}"),
            )
        })?;

    if source != Source::Margay {
        strip_server_fields(kind, &mut map);
    }
    if source == Source::Calico {
        Resource::migrate_calico(kind, &mut map);
    }

    let mut unknown = Vec::new();
    let mut resource =
        Resource::decode_body(kind, Value::Object(map), &mut |path| unknown.push(path)).map_err(
            |e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                field_error(path, e.into_inner().to_string())
            },
        )?;

    let mut warnings = Vec::new();
    let ignorable = Resource::calico_ignored_fields(kind);
    let name = resource.metadata().name.clone();
    for path in unknown {
        if source == Source::Calico && matches_any(ignorable, &path) {
            warnings.push(format!("ignored: {doc_kind} {name}: {path}"));
        } else {
            return Err(field_error(path, "unknown field"));
        }
    }

    resource.apply_defaults();
    resource.validate().into_result()?;
    Ok(Decoded {
        resource,
        source,
        warnings,
    })
}

/// `serde_ignored` writes `spec.ingress.0.?.http` (`?` for an `Option`, bare list indices);
/// print it the way errors are printed: `spec.ingress[0].http`.
fn normalize_path(raw: &str) -> String {
    let mut out = String::new();
    for seg in raw.split('.').filter(|s| *s != "?") {
        if !out.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// A pattern matches a path exactly, as a parent of it, or with a trailing `*` as a prefix;
/// `[*]` matches any list index.
fn matches_any(patterns: &[&str], path: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, path))
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    if let Some((head, tail)) = pattern.split_once("[*]") {
        let Some(rest) = path.strip_prefix(head).and_then(|r| r.strip_prefix('[')) else {
            return false;
        };
        let Some((index, rest)) = rest.split_once(']') else {
            return false;
        };
        return !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && pattern_matches(tail, rest);
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => {
            path == pattern
                || path
                    .strip_prefix(pattern)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        }
    }
}

fn take_string(map: &mut Map<String, Value>, field: &'static str) -> Result<String, FieldError> {
    match map.remove(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(field_error(field, "must be a non-empty string")),
        None => Err(field_error(field, "is required")),
    }
}

fn strip_server_fields(kind: Kind, map: &mut Map<String, Value>) {
    // A Pod's status carries its addresses, which the Pod kind keeps (and nothing else of it).
    if kind != Kind::Pod {
        map.remove("status");
    }
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        for f in SERVER_METADATA.iter().chain(CONTROLLER_METADATA) {
            meta.remove(*f);
        }
        if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
            for a in SERVER_ANNOTATIONS {
                ann.remove(*a);
            }
            if ann.is_empty() {
                meta.remove("annotations");
            }
        }
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Typed decoding that reports unknown fields (by path) instead of silently dropping them,
/// and errors with the path of the offending field.
pub(crate) fn decode_typed<T: DeserializeOwned>(
    body: Value,
    on_unknown: &mut dyn FnMut(String),
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let mut record = |path: serde_ignored::Path<'_>| on_unknown(normalize_path(&path.to_string()));
    let de = serde_ignored::Deserializer::new(body, &mut record);
    serde_path_to_error::deserialize(de)
}

/// Renders resources as YAML documents separated by `---`.
pub fn to_yaml(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| serde_norway::to_string(v).expect("JSON values serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_paths_read_like_error_paths() {
        assert_eq!(
            normalize_path("spec.ingress.0.?.http"),
            "spec.ingress[0].http"
        );
        assert_eq!(
            normalize_path("spec.controllers.node.?.hostEndpoint.?.templates"),
            "spec.controllers.node.hostEndpoint.templates"
        );
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches(
            "spec.ingress[*].http",
            "spec.ingress[3].http"
        ));
        assert!(pattern_matches(
            "spec.ingress[*].http",
            "spec.ingress[3].http.methods"
        ));
        assert!(!pattern_matches(
            "spec.ingress[*].http",
            "spec.ingress[3].https"
        ));
        assert!(!pattern_matches(
            "spec.ingress[*].http",
            "spec.ingress[x].http"
        ));
        assert!(pattern_matches("spec.bpf*", "spec.bpfLogLevel"));
        assert!(pattern_matches("spec.ipip", "spec.ipip.mode"));
        assert!(!pattern_matches("spec.ipip", "spec.ipipMode"));
    }
}
