//! margay-policy's upstream NetworkPolicy cases (`crates/margay-policy/tests/upstream/`,
//! whose README describes the format): the fixture cluster, the case files, and their truth
//! tables, parsed strictly. margay-policy's runner checks every case against `matrix()`; the
//! lab tests of the `margay` crate check some of them against real packets, on both
//! dataplanes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use margay_api::{decode, parse_documents, Resource};
use serde_json::Value;

/// The directory of the fixture and the cases.
pub const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../margay-policy/tests/upstream"
);

/// Keys a case file may have; anything else is a data error.
const CASE_KEYS: &[&str] = &[
    "name",
    "context",
    "upstream",
    "origin",
    "note",
    "labels",
    "resources",
    "port",
    "protocol",
    "expect",
    "checks",
];
const CHECK_KEYS: &[&str] = &["port", "protocol", "expect"];

/// `cases/NNN-name.yaml`, sorted; numbers must be unique.
pub fn case_files() -> Result<Vec<PathBuf>, String> {
    let dir = Path::new(DIR).join("cases");
    let mut files = Vec::new();
    let mut numbers = BTreeMap::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let number = name
            .strip_suffix(".yaml")
            .and_then(|stem| stem.split_once('-'))
            .filter(|(n, rest)| {
                n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty()
            })
            .map(|(n, _)| n.to_owned())
            .ok_or_else(|| {
                format!(
                    "{}: case files are named NNN-short-name.yaml",
                    path.display()
                )
            })?;
        if let Some(other) = numbers.insert(number, name.clone()) {
            return Err(format!("{name} and {other} share a number"));
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// The case file numbered `number` (`"017"`).
pub fn case_file(number: &str) -> Result<PathBuf, String> {
    let prefix = format!("{number}-");
    case_files()?
        .into_iter()
        .find(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .ok_or_else(|| format!("no case {number} in {DIR}/cases"))
}

// ---------------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------------

/// `fixture.yaml`: namespaces x, y, z with pods a, b, c.
pub struct Fixture {
    pub docs: Vec<Value>,
    /// "ns/name" of every Pod, in document order: the rows and columns of every table.
    pub pods: Vec<String>,
}

impl Fixture {
    /// The fixture of [`DIR`].
    pub fn load_default() -> Result<Fixture, String> {
        let path = Path::new(DIR).join("fixture.yaml");
        Fixture::load(&path).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Fixture, String> {
        let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
        let docs = parse_documents(&text)?;
        let mut pods = Vec::new();
        let mut seen = BTreeSet::new();
        for doc in &docs {
            let id = identity(doc)?;
            if !seen.insert(id.clone()) {
                return Err(format!("{} appears twice", id.describe()));
            }
            if id.kind == "Pod" {
                pods.push(format!("{}/{}", id.namespace, id.name));
            }
        }
        if pods.is_empty() {
            return Err("no Pods".into());
        }
        Ok(Fixture { docs, pods })
    }
}

/// What makes two documents the same object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Identity {
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

pub fn identity(doc: &Value) -> Result<Identity, String> {
    let field = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let id = Identity {
        kind: field(doc.get("kind")),
        namespace: field(doc.pointer("/metadata/namespace")),
        name: field(doc.pointer("/metadata/name")),
    };
    if id.kind.is_empty() || id.name.is_empty() {
        return Err(format!("a document without kind or metadata.name: {doc}"));
    }
    if id.kind == "Pod" && id.namespace.is_empty() {
        return Err(format!("Pod {} names no namespace", id.name));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// A case
// ---------------------------------------------------------------------------------------------

/// One expected truth table.
pub struct Check {
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub expect: Table,
}

/// One case file, checked and parsed.
pub struct Case {
    pub name: String,
    pub context: String,
    pub checks: Vec<Check>,
    /// The case's own `resources` as written (YAML; empty when it has none).
    pub resources_yaml: String,
    /// The case's own documents: what it adds to the fixture, or replaces in it.
    pub documents: Vec<Value>,
    /// Label overrides, `namespace/NAME` or `pod/NS/NAME` → the object's whole labels.
    pub labels: BTreeMap<String, Value>,
    /// The fixture with the case's documents applied and its labels set, decoded.
    pub resources: Vec<Resource>,
}

impl Case {
    /// Reads and checks `file` against `fixture`. The error is a report: the case's name and
    /// context when they could be read, then `data error: …`.
    pub fn load(file: &Path, fixture: &Fixture) -> Result<Case, String> {
        let text = fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
        let mut docs = parse_documents(&text).map_err(|e| format!("data error: {e}"))?;
        if docs.len() != 1 {
            return Err(format!(
                "data error: {} YAML documents, expected one",
                docs.len()
            ));
        }
        let case = docs.remove(0);
        let text_of = |key: &str| {
            case.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (name, context) = (text_of("name"), text_of("context"));
        let header = header(&name, &context);
        read_case(&case, fixture)
            .map(|parts| Case {
                name,
                context,
                checks: parts.checks,
                resources_yaml: text_of("resources"),
                documents: parts.documents,
                labels: case
                    .get("labels")
                    .and_then(Value::as_object)
                    .map(|m| m.clone().into_iter().collect())
                    .unwrap_or_default(),
                resources: parts.resources,
            })
            .map_err(|e| format!("{header}data error: {e}\n"))
    }

    /// `"name"` and the context, on two lines: the start of a report about the case.
    pub fn header(&self) -> String {
        header(&self.name, &self.context)
    }
}

fn header(name: &str, context: &str) -> String {
    let name = if name.is_empty() { "(no name)" } else { name };
    format!("{name:?}\n    context: {context}\n")
}

/// What [`read_case`] gives.
struct Parts {
    checks: Vec<Check>,
    /// The case's own documents.
    documents: Vec<Value>,
    /// The fixture with them applied (a document with the identity of a fixture document
    /// replaces it) and the case's labels set.
    resources: Vec<Resource>,
}

/// Validates a case and builds its [`Parts`].
fn read_case(case: &Value, fixture: &Fixture) -> Result<Parts, String> {
    let map = case.as_object().ok_or("a case is a mapping")?;
    for key in map.keys() {
        if !CASE_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown key {key:?} (known: {})",
                CASE_KEYS.join(", ")
            ));
        }
    }
    for key in ["name", "context", "origin"] {
        let text = map.get(key).and_then(Value::as_str).unwrap_or_default();
        if text.trim().is_empty() {
            return Err(format!("{key:?} is required (a non-empty string)"));
        }
    }
    match map["origin"].as_str() {
        Some("upstream") => {
            if !map
                .get("upstream")
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(".go"))
            {
                return Err("an upstream case names its source file in \"upstream\"".into());
            }
        }
        Some("margay") => {}
        other => return Err(format!("origin must be upstream or margay, not {other:?}")),
    }

    // Checks: either port/protocol/expect at the top, or a non-empty `checks` list.
    let top_level = ["port", "protocol", "expect"]
        .iter()
        .any(|k| map.contains_key(*k));
    let checks = match (top_level, map.get("checks")) {
        (true, Some(_)) => {
            return Err("give either port/protocol/expect or checks, not both".into())
        }
        (false, None) => return Err("no checks: give port/protocol/expect or checks".into()),
        (true, None) => vec![read_check(case, &fixture.pods)?],
        (false, Some(list)) => {
            let list = list
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or("checks must be a non-empty list")?;
            list.iter()
                .enumerate()
                .map(|(i, c)| {
                    let m = c
                        .as_object()
                        .ok_or(format!("checks[{i}] is not a mapping"))?;
                    if let Some(k) = m.keys().find(|k| !CHECK_KEYS.contains(&k.as_str())) {
                        return Err(format!("checks[{i}]: unknown key {k:?}"));
                    }
                    read_check(c, &fixture.pods).map_err(|e| format!("checks[{i}]: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let mut seen = BTreeSet::new();
    for c in &checks {
        if !seen.insert((c.port, c.protocol.clone())) {
            return Err(format!("{}/{} is checked twice", c.protocol, c.port));
        }
    }

    // Documents: the fixture, with the case's documents applied on top.
    let mut docs: Vec<(Identity, Value)> = fixture
        .docs
        .iter()
        .map(|d| Ok((identity(d)?, d.clone())))
        .collect::<Result<_, String>>()?;
    let extra = match map.get("resources") {
        None => Vec::new(),
        Some(v) => {
            let text = v
                .as_str()
                .ok_or("resources is a YAML text (use `resources: |`)")?;
            parse_documents(text).map_err(|e| format!("resources: {e}"))?
        }
    };
    let mut applied = BTreeSet::new();
    for doc in &extra {
        let id = identity(doc).map_err(|e| format!("resources: {e}"))?;
        if !applied.insert(id.clone()) {
            return Err(format!("resources: {} appears twice", id.describe()));
        }
        match docs.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = doc.clone(),
            None if id.kind == "Pod" => {
                return Err(format!(
                    "resources: {} is not in the fixture; cases may replace pods, not add them (the tables are over the fixture's pods)",
                    id.describe()
                ))
            }
            None => docs.push((id, doc.clone())),
        }
    }

    // Label overrides: `namespace/NAME` or `pod/NS/NAME` → the object's complete labels.
    if let Some(labels) = map.get("labels") {
        let labels = labels.as_object().ok_or("labels is a mapping")?;
        for (key, value) in labels {
            let id = match key.split('/').collect::<Vec<_>>()[..] {
                ["namespace", name] => Identity {
                    kind: "Namespace".into(),
                    namespace: String::new(),
                    name: name.into(),
                },
                ["pod", ns, name] => Identity {
                    kind: "Pod".into(),
                    namespace: ns.into(),
                    name: name.into(),
                },
                _ => {
                    return Err(format!(
                        "labels: {key:?} is neither namespace/NAME nor pod/NS/NAME"
                    ))
                }
            };
            let ok = value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(format!("labels: {key}: a mapping of strings to strings"));
            }
            let (_, doc) = docs.iter_mut().find(|(i, _)| *i == id).ok_or(format!(
                "labels: no {} in the fixture or the case",
                id.describe()
            ))?;
            doc["metadata"]["labels"] = value.clone();
        }
    }

    let mut resources = Vec::new();
    for (id, doc) in docs {
        let decoded = decode(doc).map_err(|e| format!("{}: {e}", id.describe()))?;
        resources.push(decoded.resource);
    }
    Ok(Parts {
        checks,
        documents: extra,
        resources,
    })
}

fn read_check(v: &Value, pods: &[String]) -> Result<Check, String> {
    let port = v
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or("port must be a port number (1-65535)")?;
    let protocol = v
        .get("protocol")
        .and_then(Value::as_str)
        .filter(|p| ["TCP", "UDP", "SCTP"].contains(p))
        .ok_or("protocol must be TCP, UDP or SCTP")?
        .to_owned();
    let expect = v
        .get("expect")
        .and_then(Value::as_str)
        .ok_or("expect must be a table (use `expect: |`)")?;
    let expect = Table::parse(expect, pods).map_err(|e| format!("expect: {e}"))?;
    Ok(Check {
        port,
        protocol,
        expect,
    })
}

// ---------------------------------------------------------------------------------------------
// Truth tables
// ---------------------------------------------------------------------------------------------

/// `allowed[from][to]`, indices in fixture pod order.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub allowed: Vec<Vec<bool>>,
}

impl Table {
    /// The layout, strictly: a header `-` followed by every pod id in fixture order, then one
    /// row per pod in the same order: its id, then `.` (allowed) or `X` (denied) per column.
    /// Self pairs (the diagonal) are always allowed.
    pub fn parse(text: &str, pods: &[String]) -> Result<Table, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let want_header = format!("-   {}", pods.join(" "));
        let (_, header) = lines.next().ok_or("empty table")?;
        let tokens: Vec<&str> = header.split_whitespace().collect();
        if tokens.first() != Some(&"-")
            || tokens[1..] != pods.iter().map(String::as_str).collect::<Vec<_>>()[..]
        {
            return Err(format!(
                "header {:?}, expected {want_header:?}",
                header.trim()
            ));
        }
        let mut allowed = Vec::new();
        for (i, from) in pods.iter().enumerate() {
            let (n, line) =
                lines
                    .next()
                    .ok_or(format!("{} rows, expected {} (one per pod)", i, pods.len()))?;
            let tokens: Vec<&str> = line.split_whitespace().collect();
            if tokens.first() != Some(&from.as_str()) {
                return Err(format!(
                    "line {}: row {i} must start with {from}: {line:?}",
                    n + 1
                ));
            }
            if tokens.len() != pods.len() + 1 {
                return Err(format!(
                    "line {}: {} cells, expected {}: {line:?}",
                    n + 1,
                    tokens.len() - 1,
                    pods.len()
                ));
            }
            let row = tokens[1..]
                .iter()
                .map(|c| match *c {
                    "." => Ok(true),
                    "X" => Ok(false),
                    other => Err(format!(
                        "line {}: cell {other:?} is neither '.' nor 'X'",
                        n + 1
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !row[i] {
                return Err(format!(
                    "line {}: {from} -> {from} is a self pair and always allowed",
                    n + 1
                ));
            }
            allowed.push(row);
        }
        if let Some((n, line)) = lines.next() {
            return Err(format!("line {}: more rows than pods: {line:?}", n + 1));
        }
        Ok(Table { allowed })
    }

    /// From `matrix()` or `lab probe`: every (from, to) pair over the fixture's pods exactly
    /// once, in `allowed` or in `denied`.
    pub fn from_matrix(
        pods: &[String],
        allowed: &[(String, String)],
        denied: &[(String, String)],
    ) -> Result<Table, String> {
        let index = |id: &str| pods.iter().position(|p| p == id);
        let mut cells: Vec<Vec<Option<bool>>> = vec![vec![None; pods.len()]; pods.len()];
        let mut problems = Vec::new();
        for (list, value) in [(allowed, true), (denied, false)] {
            for (from, to) in list {
                match (index(from), index(to)) {
                    (Some(f), Some(t)) => {
                        if cells[f][t].replace(value).is_some() {
                            problems.push(format!("{from} -> {to} appears twice"));
                        }
                    }
                    _ => problems.push(format!("{from} -> {to} is not a pair of fixture pods")),
                }
            }
        }
        for (f, row) in cells.iter().enumerate() {
            for (t, cell) in row.iter().enumerate() {
                if cell.is_none() {
                    problems.push(format!("{} -> {} is missing", pods[f], pods[t]));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Table {
            allowed: cells
                .into_iter()
                .map(|row| row.into_iter().map(Option::unwrap).collect())
                .collect(),
        })
    }
}

fn cell(allowed: bool) -> char {
    if allowed {
        '.'
    } else {
        'X'
    }
}

/// Expected and got side by side, with the differing cells marked, then the differences in
/// words.
pub fn diff(pods: &[String], check: &Check, got: &Table) -> String {
    let mut out = String::new();
    let differing: Vec<(usize, usize)> = (0..pods.len())
        .flat_map(|f| (0..pods.len()).map(move |t| (f, t)))
        .filter(|&(f, t)| check.expect.allowed[f][t] != got.allowed[f][t])
        .collect();
    let _ = writeln!(
        out,
        "  {}/{}: {} of {} cells differ (rows: from, columns: to; '*' marks a difference)",
        check.protocol,
        check.port,
        differing.len(),
        pods.len() * pods.len()
    );
    let header: String = pods.iter().map(|p| format!(" {p:<3}")).collect();
    let width = 4 + header.len();
    let _ = writeln!(out, "    {:<width$}    got", "expected");
    let _ = writeln!(
        out,
        "    {:<width$}    -   {}",
        format!("-   {}", header.trim_start()),
        header.trim_start()
    );
    for (f, from) in pods.iter().enumerate() {
        let mut left = from.clone();
        let mut right = from.clone();
        for t in 0..pods.len() {
            let mark = if check.expect.allowed[f][t] != got.allowed[f][t] {
                '*'
            } else {
                ' '
            };
            let _ = write!(left, " {mark}{}{mark}", cell(check.expect.allowed[f][t]));
            let _ = write!(right, " {mark}{}{mark}", cell(got.allowed[f][t]));
        }
        let _ = writeln!(out, "    {left:<width$}    {}", right.trim_end());
    }
    for (f, t) in differing {
        let word = |a: bool| if a { "allowed" } else { "denied" };
        let _ = writeln!(
            out,
            "    {} -> {}: expected {}, got {}",
            pods[f],
            pods[t],
            word(check.expect.allowed[f][t]),
            word(got.allowed[f][t])
        );
    }
    out
}
