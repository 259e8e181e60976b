//! `get`, `apply`/`create`/`replace` and `delete`.

use margay_api::{Kind, Resource};
use margay_client::{ApplyMode, ApplyOutcome, Client};
use margay_selector::Selector;
use serde_json::Value;

use crate::input::{context_of, decode_all, read_sources};
use crate::output::{render_resources, OutputFormat};
use crate::{CtlError, Result};

/// Which namespaces a command looks at (`-n NS` or `-A`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    One(String),
    All,
}

impl NamespaceScope {
    fn for_kind(&self, kind: Kind) -> Option<&str> {
        match self {
            NamespaceScope::One(ns) if kind.namespaced() => Some(ns),
            _ => None,
        }
    }

    fn default_namespace(&self) -> &str {
        match self {
            NamespaceScope::One(ns) => ns,
            NamespaceScope::All => "default",
        }
    }
}

/// What a write command prints: result lines (stdout) and warnings (stderr).
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
}

fn resolve_kind(name: &str) -> Result<Kind> {
    Kind::from_cli_name(name).ok_or_else(|| CtlError::UnknownKind(name.to_owned()))
}

fn display_name(kind: Kind, r: &Resource) -> String {
    format!("{}/{}", kind.name().to_ascii_lowercase(), r.metadata().name)
}

/// Validates every document of every file, then writes them all or none.
pub async fn apply_files(
    client: &Client,
    paths: &[String],
    mode: ApplyMode,
    scope: &NamespaceScope,
) -> Result<Report> {
    let docs = read_sources(paths)?;
    let (resources, warnings) = decode_all(&docs, scope.default_namespace())?;
    let applied = margay_client::apply(client, resources, mode)
        .await
        .map_err(|e| match e {
            margay_client::Error::Rejected { index, message } => CtlError::Input {
                origin: context_of(&docs, index),
                message,
            },
            other => CtlError::Client(other),
        })?;
    let lines = applied
        .iter()
        .map(|a| {
            let verb = match a.outcome {
                ApplyOutcome::Created => "created",
                ApplyOutcome::Configured => "configured",
                ApplyOutcome::Unchanged => "unchanged",
            };
            format!("{} {verb}", display_name(a.resource.kind(), &a.resource))
        })
        .collect();
    Ok(Report { lines, warnings })
}

/// `get KIND [NAME]`, rendered in `format`.
pub async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    scope: &NamespaceScope,
    selector: Option<&str>,
    format: OutputFormat,
) -> Result<String> {
    let kind = resolve_kind(kind)?;
    let selector = selector
        .map(|s| {
            Selector::parse(s).map_err(|e| CtlError::Selector {
                selector: s.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()?;
    let ns = scope.for_kind(kind);
    let mut items = match name {
        Some(name) => match client.get_resource(kind, ns, name).await? {
            Some(r) => vec![r],
            None => return Err(CtlError::NotFound(not_found(kind, ns, name))),
        },
        None => client.list_resources(kind, ns).await?,
    };
    if let Some(sel) = &selector {
        items.retain(|r| sel.matches(&r.metadata().labels));
    }
    let with_namespace = *scope == NamespaceScope::All;
    Ok(render_resources(
        kind,
        &items,
        format,
        name.is_some(),
        with_namespace,
    ))
}

fn not_found(kind: Kind, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{} {name:?} in namespace {ns:?}", kind.name()),
        None => format!("{} {name:?}", kind.name()),
    }
}

/// `delete KIND NAME…`.
pub async fn delete_named(
    client: &Client,
    kind: &str,
    names: &[String],
    scope: &NamespaceScope,
) -> Result<Report> {
    let kind = resolve_kind(kind)?;
    let ns = scope.for_kind(kind);
    let targets: Vec<(Kind, Option<String>, String)> = names
        .iter()
        .map(|n| (kind, ns.map(str::to_owned), n.clone()))
        .collect();
    delete_all(client, &targets).await
}

/// `delete -f FILE`: deletes what the documents name; all must exist, or nothing is deleted.
pub async fn delete_files(
    client: &Client,
    paths: &[String],
    scope: &NamespaceScope,
) -> Result<Report> {
    let docs = read_sources(paths)?;
    let mut targets = Vec::new();
    for doc in &docs {
        let mut value = doc.value.clone();
        margay_api::set_default_namespace(&mut value, scope.default_namespace());
        let (kind, ns, name) = identity(&value).ok_or_else(|| CtlError::Input {
            origin: context_of(&docs, doc.index - 1),
            message: "needs apiVersion, a known kind and metadata.name".into(),
        })?;
        targets.push((kind, ns, name));
    }
    delete_all(client, &targets).await
}

fn identity(doc: &Value) -> Option<(Kind, Option<String>, String)> {
    let api = doc.get("apiVersion")?.as_str()?;
    let api = if api.contains("projectcalico.org") {
        margay_api::API_VERSION
    } else {
        api
    };
    let kind = Kind::from_document(api, doc.get("kind")?.as_str()?)?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_owned();
    let ns = kind
        .namespaced()
        .then(|| {
            meta.get("namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten();
    Some((kind, ns, name))
}

async fn delete_all(client: &Client, targets: &[(Kind, Option<String>, String)]) -> Result<Report> {
    for (kind, ns, name) in targets {
        if client
            .get_resource(*kind, ns.as_deref(), name)
            .await?
            .is_none()
        {
            return Err(CtlError::NotFound(not_found(*kind, ns.as_deref(), name)));
        }
    }
    let mut report = Report::default();
    for (kind, ns, name) in targets {
        let gone = client.delete_resource(*kind, ns.as_deref(), name).await?;
        report
            .lines
            .push(format!("{} deleted", display_name(*kind, &gone)));
    }
    Ok(report)
}
