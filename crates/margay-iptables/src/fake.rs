//! An [`Iptables`] that keeps a model of the kernel's filter tables and ipsets, for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::render::{MAX_CHAIN, MAX_SET};
use crate::rendered::{canonical_member, set_references, targets, SetHeader};
use crate::{Error, Family, Iptables};

const BUILT_IN: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];
const TARGETS: [&str; 6] = ["ACCEPT", "DROP", "RETURN", "MARK", "LOG", "REJECT"];

/// A stand-in for the kernel and the tools, refusing what they refuse where Margay relies on
/// it: rules naming chains or sets that do not exist, deleting a chain that is not empty or
/// is jumped to, destroying a set a rule uses, swapping sets of different dimensions,
/// deleting a rule that is not there, names over the kernel's limits. `iptables-restore`
/// inputs apply at `COMMIT` or not at all; `ipset restore` inputs line by line, as with
/// `-exist`. Rules are kept as the text they were given in: a spec is deleted by the same
/// text. Every input is recorded in [`inputs`](Self::inputs).
#[derive(Debug, Clone)]
pub struct FakeIptables {
    tables: [Table; 2],
    sets: BTreeMap<String, FakeSet>,
    /// Every input received, in order, with the tool's name (`iptables-restore`,
    /// `ip6tables-restore`, `ipset restore`).
    pub inputs: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Table {
    /// Built-in chains first, then user chains; rules as spec text.
    chains: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone)]
struct FakeSet {
    header: SetHeader,
    members: BTreeSet<String>,
}

impl Default for FakeIptables {
    fn default() -> FakeIptables {
        FakeIptables::new()
    }
}

impl FakeIptables {
    /// Empty tables (built-in chains only) and no sets.
    pub fn new() -> FakeIptables {
        let table = || Table {
            chains: BUILT_IN
                .iter()
                .map(|c| ((*c).to_owned(), Vec::new()))
                .collect(),
        };
        FakeIptables {
            tables: [table(), table()],
            sets: BTreeMap::new(),
            inputs: Vec::new(),
        }
    }

    fn table(&mut self, family: Family) -> &mut Table {
        &mut self.tables[usize::from(family == Family::V6)]
    }

    /// Whether any rule of either family uses set `name`.
    fn set_used(&self, name: &str) -> bool {
        self.tables
            .iter()
            .flat_map(|t| t.chains.values().flatten())
            .any(|rule| set_references(rule).any(|s| s == name))
    }

    fn apply_restore(&self, family: Family, input: &str) -> Result<Table, String> {
        let mut committed = self.tables[usize::from(family == Family::V6)].clone();
        let mut table: Option<Table> = None;
        for (n, line) in input.lines().enumerate() {
            let at = |message: String| format!("line {}: {message}", n + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "*filter" {
                table = Some(committed.clone());
                continue;
            }
            let Some(t) = table.as_mut() else {
                return Err(at(format!("{line:?} outside of *filter")));
            };
            if line == "COMMIT" {
                committed = t.clone();
                table = None;
                continue;
            }
            if let Some(declared) = line.strip_prefix(':') {
                let name = declared.split_whitespace().next().unwrap_or_default();
                if !BUILT_IN.contains(&name) {
                    if name.len() > MAX_CHAIN {
                        return Err(at(format!("chain name {name} too long")));
                    }
                    t.chains.entry(name.to_owned()).or_default().clear();
                }
                continue;
            }
            let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            if !t.chains.contains_key(chain) {
                return Err(at(format!("chain {chain:?} does not exist")));
            }
            match command {
                "-A" | "-I" => {
                    let (position, spec) = if command == "-I" {
                        let (n, spec) = spec.split_once(' ').unwrap_or((spec, ""));
                        let n: usize = n.parse().map_err(|_| at(format!("bad position {n}")))?;
                        (Some(n), spec)
                    } else {
                        (None, spec)
                    };
                    if let Some(target) = targets(spec)
                        .find(|t2| !TARGETS.contains(t2) && !t.chains.contains_key(*t2))
                    {
                        return Err(at(format!("no chain/target {target}")));
                    }
                    if let Some(set) = set_references(spec).find(|s| {
                        self.sets
                            .get(*s)
                            .is_none_or(|set| set.header.family != family_name(family))
                    }) {
                        return Err(at(format!("set {set} does not exist")));
                    }
                    let rules = t.chains.entry(chain.to_owned()).or_default();
                    match position {
                        None => rules.push(spec.to_owned()),
                        Some(n) if (1..=rules.len() + 1).contains(&n) => {
                            rules.insert(n - 1, spec.to_owned());
                        }
                        Some(n) => return Err(at(format!("index {n} too big"))),
                    }
                }
                "-D" => {
                    let rules = t.chains.entry(chain.to_owned()).or_default();
                    match rules.iter().position(|r| r == spec) {
                        Some(i) => {
                            rules.remove(i);
                        }
                        None => return Err(at(format!("no such rule in {chain}: {spec}"))),
                    }
                }
                "-F" => t.chains.get_mut(chain).into_iter().for_each(Vec::clear),
                "-X" => {
                    if BUILT_IN.contains(&chain) {
                        return Err(at(format!("cannot delete built-in chain {chain}")));
                    }
                    if !t.chains[chain].is_empty() {
                        return Err(at(format!("chain {chain} is not empty")));
                    }
                    if t.chains
                        .values()
                        .flatten()
                        .any(|r| targets(r).any(|x| x == chain))
                    {
                        return Err(at(format!("chain {chain} is still referenced")));
                    }
                    t.chains.remove(chain);
                }
                other => return Err(at(format!("unknown command {other}"))),
            }
        }
        if table.is_some() {
            return Err("no COMMIT".into());
        }
        Ok(committed)
    }

    fn apply_ipset_line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => Ok(()),
            ["create", name, kind, options @ ..] => {
                if name.len() > MAX_SET {
                    return Err(format!("set name {name} too long"));
                }
                let option = |key: &str| {
                    options
                        .iter()
                        .position(|o| *o == key)
                        .and_then(|i| options.get(i + 1))
                };
                let header = SetHeader {
                    kind: (*kind).to_owned(),
                    family: option("family").map_or("inet", |f| f).to_owned(),
                    maxelem: option("maxelem")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(65_536),
                };
                match self.sets.get(*name) {
                    Some(set) if set.header != header => {
                        Err(format!("set {name} exists with another type"))
                    }
                    Some(_) => Ok(()),
                    None => {
                        self.sets.insert(
                            (*name).to_owned(),
                            FakeSet {
                                header,
                                members: BTreeSet::new(),
                            },
                        );
                        Ok(())
                    }
                }
            }
            ["add" | "del", name, member] => {
                let set = self
                    .sets
                    .get_mut(*name)
                    .ok_or_else(|| format!("set {name} does not exist"))?;
                let member = canonical_member(&set.header.kind, member);
                if words[0] == "add" {
                    set.members.insert(member);
                } else {
                    set.members.remove(&member);
                }
                Ok(())
            }
            ["swap", from, to] => {
                let (Some(a), Some(b)) = (self.sets.get(*from), self.sets.get(*to)) else {
                    return Err(format!("swap {from} {to}: a set does not exist"));
                };
                if !a.header.swappable_with(&b.header) {
                    return Err(format!("swap {from} {to}: incompatible types"));
                }
                let (a, b) = (a.clone(), b.clone());
                self.sets.insert((*from).to_owned(), b);
                self.sets.insert((*to).to_owned(), a);
                Ok(())
            }
            ["destroy", name] => {
                if !self.sets.contains_key(*name) {
                    return Err(format!("set {name} does not exist"));
                }
                if self.set_used(name) {
                    return Err(format!("set {name} is in use by a kernel component"));
                }
                self.sets.remove(*name);
                Ok(())
            }
            ["flush", name] => {
                let set = self
                    .sets
                    .get_mut(*name)
                    .ok_or_else(|| format!("set {name} does not exist"))?;
                set.members.clear();
                Ok(())
            }
            _ => Err(format!("cannot parse {line:?}")),
        }
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    }
}

fn tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables-restore",
        Family::V6 => "ip6tables-restore",
    }
}

impl Iptables for FakeIptables {
    fn restore(&mut self, family: Family, input: &str) -> Result<(), Error> {
        self.inputs
            .push((tool(family).to_owned(), input.to_owned()));
        let table = self
            .apply_restore(family, input)
            .map_err(|stderr| Error::Failed {
                command: format!("fake {} --noflush", tool(family)),
                stderr,
            })?;
        *self.table(family) = table;
        Ok(())
    }

    fn save(&mut self, family: Family) -> Result<String, Error> {
        let table = self.table(family);
        let mut out = String::from("*filter\n");
        // As the kernel lists them: the built-in chains in the table's order, then the others.
        let order = |name: &&String| {
            let built_in = BUILT_IN.iter().position(|b| *b == name.as_str());
            (built_in.unwrap_or(BUILT_IN.len()), (*name).clone())
        };
        let mut names: Vec<&String> = table.chains.keys().collect();
        names.sort_by_key(order);
        for name in &names {
            let policy = if BUILT_IN.contains(&name.as_str()) {
                "ACCEPT"
            } else {
                "-"
            };
            let _ = writeln!(out, ":{name} {policy} [0:0]");
        }
        for name in &names {
            for rule in &table.chains[*name] {
                let _ = writeln!(out, "-A {name} {rule}");
            }
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }

    fn ipset_restore(&mut self, input: &str) -> Result<(), Error> {
        self.inputs.push(("ipset restore".into(), input.to_owned()));
        for (n, line) in input.lines().enumerate() {
            self.apply_ipset_line(line)
                .map_err(|message| Error::Failed {
                    command: "fake ipset restore -exist".into(),
                    stderr: format!("line {}: {message}", n + 1),
                })?;
        }
        Ok(())
    }

    fn ipset_save(&mut self) -> Result<String, Error> {
        let mut out = String::new();
        for (name, set) in &self.sets {
            let _ = writeln!(out, "create {name} {}", set.header.create_args());
            for member in &set.members {
                let _ = writeln!(out, "add {name} {member}");
            }
        }
        Ok(out)
    }
}
