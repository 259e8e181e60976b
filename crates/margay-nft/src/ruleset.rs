//! A small model of nftables tables and its rendering as an `nft -f` script.
//!
//! Rules are kept as nft statement text: the model only structures what Margay must own and
//! replace as a unit (tables, chains, address sets), not nft's expression language.
//!
//! Names (tables, chains, sets) must be plain nft identifiers (`[A-Za-z][A-Za-z0-9_.-]*`);
//! they come from code, never from users.

use std::collections::BTreeSet;
use std::fmt::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// An nftables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tables that are replaced as a whole, each in one `nft -f` transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The script that atomically replaces these tables (creating them if missing) and
    /// touches nothing else.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for table in &self.tables {
            table.render_replace(&mut out);
        }
        out
    }

    /// The script that deletes these tables if they exist, and touches nothing else.
    pub fn render_removal(&self) -> String {
        let mut out = String::new();
        for table in &self.tables {
            table.render_removal(&mut out);
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub sets: Vec<Set>,
    pub maps: Vec<InterfaceMap>,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            sets: Vec::new(),
            maps: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// The commands that turn the members of `old`'s sets into those of this table's, for
    /// the sets both have (by name), without touching rules: deletions of what is no longer
    /// there, then additions, per set. Empty when no member changed. Valid only against a
    /// kernel holding exactly `old`'s members; run as one `nft -f` transaction.
    pub fn render_element_updates(&self, old: &Table) -> String {
        let mut out = String::new();
        for set in &self.sets {
            let Some(before) = old.sets.iter().find(|s| s.name == set.name) else {
                continue;
            };
            let before: BTreeSet<String> = before.element_texts().into_iter().collect();
            let after: BTreeSet<String> = set.element_texts().into_iter().collect();
            for (verb, elements) in [
                ("delete", before.difference(&after)),
                ("add", after.difference(&before)),
            ] {
                let elements: Vec<&str> = elements.map(String::as_str).collect();
                if !elements.is_empty() {
                    let _ = writeln!(
                        out,
                        "{verb} element {} {} {} {{ {} }}",
                        self.family,
                        self.name,
                        set.name,
                        elements.join(", ")
                    );
                }
            }
        }
        out
    }

    /// Appends the replacement of this table to `out`.
    pub fn render_replace(&self, out: &mut String) {
        // Declaring the table first makes the delete valid whether or not it exists (nft
        // 1.0.6 has no `destroy`); the whole script is one transaction, so nobody ever sees
        // the table missing or half-built.
        self.render_removal(out);
        let _ = writeln!(out, "table {} {} {{", self.family, self.name);
        let mut first = true;
        for set in &self.sets {
            if !std::mem::take(&mut first) {
                out.push('\n');
            }
            set.render(out);
        }
        for map in &self.maps {
            if !std::mem::take(&mut first) {
                out.push('\n');
            }
            map.render(out);
        }
        for chain in &self.chains {
            if !std::mem::take(&mut first) {
                out.push('\n');
            }
            chain.render(out);
        }
        out.push_str("}\n");
    }

    /// Appends the deletion of this table, if it exists, to `out`.
    pub fn render_removal(&self, out: &mut String) {
        let _ = writeln!(out, "table {} {} {{}}", self.family, self.name);
        let _ = writeln!(out, "delete table {} {}", self.family, self.name);
    }
}

/// A named set: of IPv4 or IPv6 prefixes (`flags interval`, so prefixes and single
/// addresses mix), or of (address, IP protocol number, port) tuples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub elements: SetElements,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetElements {
    V4(Vec<Ipv4Net>),
    V6(Vec<Ipv6Net>),
    /// `ipv4_addr . inet_proto . inet_service`
    V4Ports(Vec<(Ipv4Addr, u8, u16)>),
    /// `ipv6_addr . inet_proto . inet_service`
    V6Ports(Vec<(Ipv6Addr, u8, u16)>),
}

impl SetElements {
    /// The same kind of elements, none of them.
    pub fn cleared(&self) -> SetElements {
        match self {
            SetElements::V4(_) => SetElements::V4(Vec::new()),
            SetElements::V6(_) => SetElements::V6(Vec::new()),
            SetElements::V4Ports(_) => SetElements::V4Ports(Vec::new()),
            SetElements::V6Ports(_) => SetElements::V6Ports(Vec::new()),
        }
    }
}

impl Set {
    pub fn ipv4(name: impl Into<String>, nets: impl IntoIterator<Item = Ipv4Net>) -> Set {
        Set {
            name: name.into(),
            elements: SetElements::V4(nets.into_iter().collect()),
        }
    }

    pub fn ipv6(name: impl Into<String>, nets: impl IntoIterator<Item = Ipv6Net>) -> Set {
        Set {
            name: name.into(),
            elements: SetElements::V6(nets.into_iter().collect()),
        }
    }

    pub fn ipv4_ports(
        name: impl Into<String>,
        tuples: impl IntoIterator<Item = (Ipv4Addr, u8, u16)>,
    ) -> Set {
        Set {
            name: name.into(),
            elements: SetElements::V4Ports(tuples.into_iter().collect()),
        }
    }

    pub fn ipv6_ports(
        name: impl Into<String>,
        tuples: impl IntoIterator<Item = (Ipv6Addr, u8, u16)>,
    ) -> Set {
        Set {
            name: name.into(),
            elements: SetElements::V6Ports(tuples.into_iter().collect()),
        }
    }

    /// The elements as the script writes them, sorted and deduplicated. Prefixes are
    /// aggregated (merged): the text is then a function of the addresses covered (so callers
    /// can compare scripts), and nft never sees overlapping intervals, which it rejects
    /// without `auto-merge`.
    pub fn element_texts(&self) -> Vec<String> {
        fn tuples<A: Ord + fmt::Display>(tuples: &[(A, u8, u16)]) -> Vec<String> {
            let sorted: BTreeSet<&(A, u8, u16)> = tuples.iter().collect();
            sorted
                .into_iter()
                .map(|(addr, protocol, port)| format!("{addr} . {protocol} . {port}"))
                .collect()
        }
        match &self.elements {
            SetElements::V4(nets) => Ipv4Net::aggregate(nets)
                .iter()
                .map(|n| prefix_text(n.addr(), n.prefix_len(), 32))
                .collect(),
            SetElements::V6(nets) => Ipv6Net::aggregate(nets)
                .iter()
                .map(|n| prefix_text(n.addr(), n.prefix_len(), 128))
                .collect(),
            SetElements::V4Ports(t) => tuples(t),
            SetElements::V6Ports(t) => tuples(t),
        }
    }

    fn render(&self, out: &mut String) {
        let (kind, interval) = match &self.elements {
            SetElements::V4(_) => ("ipv4_addr", true),
            SetElements::V6(_) => ("ipv6_addr", true),
            SetElements::V4Ports(_) => ("ipv4_addr . inet_proto . inet_service", false),
            SetElements::V6Ports(_) => ("ipv6_addr . inet_proto . inet_service", false),
        };
        let elements = self.element_texts();
        let _ = writeln!(out, "\tset {} {{", self.name);
        let _ = writeln!(out, "\t\ttype {kind}");
        if interval {
            out.push_str("\t\tflags interval\n");
        }
        // nft rejects `elements = { }`: an empty set simply has no elements line.
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
    }
}

/// A verdict map keyed on interface names (`type ifname : verdict`), for dispatching with
/// `iifname vmap @NAME` / `oifname vmap @NAME`. Interface names must be plain (as nft
/// identifiers); they are written quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceMap {
    pub name: String,
    /// (interface, verdict), e.g. `("mgy0123456789a", "goto fw-mgy0123456789a")`.
    pub elements: Vec<(String, String)>,
}

impl InterfaceMap {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "\tmap {} {{", self.name);
        out.push_str("\t\ttype ifname : verdict\n");
        let mut elements: Vec<&(String, String)> = self.elements.iter().collect();
        elements.sort();
        if !elements.is_empty() {
            let elements: Vec<String> = elements
                .iter()
                .map(|(iface, verdict)| format!("\"{iface}\" : {verdict}"))
                .collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
    }
}

/// How nft itself lists elements: a full-length prefix as a bare address.
fn prefix_text(addr: impl fmt::Display, len: u8, max: u8) -> String {
    if len == max {
        addr.to_string()
    } else {
        format!("{addr}/{len}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `None` for a regular chain, reached only by jumps.
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

impl Chain {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "\tchain {} {{", self.name);
        if let Some(base) = &self.base {
            let _ = writeln!(
                out,
                "\t\ttype {} hook {} priority {}; policy {};",
                base.kind.as_str(),
                base.hook.as_str(),
                base.priority,
                base.policy.as_str()
            );
        }
        for rule in &self.rules {
            let _ = writeln!(
                out,
                "\t\t{} comment \"{}\"",
                rule.statement,
                sanitize_comment(&rule.comment)
            );
        }
        out.push_str("\t}\n");
    }
}

/// Where a base chain is attached to the kernel's packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: Priority,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// One of nft's standard priority names plus an offset, e.g. `filter - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub base: NamedPriority,
    pub offset: i32,
}

impl Priority {
    pub const fn new(base: NamedPriority, offset: i32) -> Priority {
        Priority { base, offset }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base.as_str())?;
        match self.offset {
            0 => Ok(()),
            o if o < 0 => write!(f, " - {}", o.unsigned_abs()),
            o => write!(f, " + {o}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedPriority {
    Raw,
    Mangle,
    DstNat,
    Filter,
    Security,
    SrcNat,
}

impl NamedPriority {
    fn as_str(self) -> &'static str {
        match self {
            NamedPriority::Raw => "raw",
            NamedPriority::Mangle => "mangle",
            NamedPriority::DstNat => "dstnat",
            NamedPriority::Filter => "filter",
            NamedPriority::Security => "security",
            NamedPriority::SrcNat => "srcnat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        }
    }
}

/// One rule: nft statement text (matches and a verdict), and a comment saying why it exists,
/// which `nft list` shows to whoever debugs the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub statement: String,
    pub comment: String,
}

impl Rule {
    pub fn new(statement: impl Into<String>, comment: impl Into<String>) -> Rule {
        Rule {
            statement: statement.into(),
            comment: comment.into(),
        }
    }
}

/// nft's rule comments are at most 128 bytes, with no escapes inside the quotes: a comment
/// is only an explanation, so it is made to fit rather than failing the whole ruleset.
fn sanitize_comment(comment: &str) -> String {
    quoted_text(comment, 128)
}

/// `text` made fit for an nft quoted string of at most `max` bytes: double quotes become
/// single ones, control characters spaces, and what does not fit is cut (at a character).
pub(crate) fn quoted_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = match c {
            '"' => '\'',
            c if c.is_control() => ' ',
            c => c,
        };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn sets_are_sorted_deduplicated_and_merged() {
        let set = Set::ipv4(
            "s",
            [
                v4("10.2.0.0/16"),
                v4("10.1.0.7/32"),
                v4("10.2.3.0/24"),
                v4("10.2.0.0/16"),
                v4("10.1.0.6/32"),
                v4("192.168.1.9/24"),
            ],
        );
        let mut out = String::new();
        set.render(&mut out);
        assert_eq!(
            out,
            "\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\
             \t\telements = { 10.1.0.6/31, 10.2.0.0/16, 192.168.1.0/24 }\n\t}\n"
        );
    }

    #[test]
    fn empty_set_has_no_elements_line() {
        let mut out = String::new();
        Set::ipv6("s", []).render(&mut out);
        assert_eq!(
            out,
            "\tset s {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n"
        );
    }

    #[test]
    fn ipv6_host_addresses_are_bare() {
        let mut out = String::new();
        Set::ipv6(
            "s",
            [
                "fd00::1/128".parse().unwrap(),
                "fd00:1::/48".parse().unwrap(),
            ],
        )
        .render(&mut out);
        assert!(out.contains("elements = { fd00::1, fd00:1::/48 }"), "{out}");
    }

    #[test]
    fn port_sets_are_sorted_deduplicated_and_not_intervals() {
        let a: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let b: Ipv4Addr = "10.0.0.10".parse().unwrap();
        let mut out = String::new();
        Set::ipv4_ports("np", [(b, 6, 80), (a, 17, 53), (b, 6, 80), (a, 6, 80)]).render(&mut out);
        assert_eq!(
            out,
            "\tset np {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\
             \t\telements = { 10.0.0.2 . 6 . 80, 10.0.0.2 . 17 . 53, 10.0.0.10 . 6 . 80 }\n\t}\n"
        );
        let mut out = String::new();
        Set::ipv6_ports("np6", []).render(&mut out);
        assert_eq!(
            out,
            "\tset np6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t}\n"
        );
    }

    #[test]
    fn interface_maps_are_sorted_and_quoted() {
        let map = InterfaceMap {
            name: "m".into(),
            elements: vec![
                ("mgyb".into(), "goto b".into()),
                ("mgya".into(), "goto a".into()),
            ],
        };
        let mut out = String::new();
        map.render(&mut out);
        assert_eq!(
            out,
            "\tmap m {\n\t\ttype ifname : verdict\n\
             \t\telements = { \"mgya\" : goto a, \"mgyb\" : goto b }\n\t}\n"
        );
    }

    #[test]
    fn element_updates_cover_sets_both_tables_have() {
        let table = |sets: Vec<Set>| Table {
            sets,
            ..Table::new(Family::Ip, "t")
        };
        let old = table(vec![
            Set::ipv4("kept", [v4("10.0.0.1/32"), v4("10.0.0.2/32")]),
            Set::ipv4("gone", [v4("10.0.0.1/32")]),
        ]);
        let new = table(vec![
            Set::ipv4("kept", [v4("10.0.0.2/32"), v4("10.0.0.9/32")]),
            Set::ipv4("new", [v4("10.0.0.1/32")]),
        ]);
        assert_eq!(
            new.render_element_updates(&old),
            "delete element ip t kept { 10.0.0.1 }\nadd element ip t kept { 10.0.0.9 }\n"
        );
        assert_eq!(new.render_element_updates(&new), "");
    }

    #[test]
    fn priorities_render_with_offsets() {
        let p = |o| Priority::new(NamedPriority::Filter, o).to_string();
        assert_eq!(p(0), "filter");
        assert_eq!(p(-1), "filter - 1");
        assert_eq!(p(10), "filter + 10");
    }

    #[test]
    fn comments_are_made_to_fit() {
        assert_eq!(sanitize_comment("say \"hi\"\nnow"), "say 'hi' now");
        let long = "é".repeat(100);
        let cut = sanitize_comment(&long);
        assert_eq!(cut.len(), 128);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn table_replacement_declares_deletes_and_defines() {
        let mut table = Table::new(Family::Inet, "t");
        table.chains.push(Chain {
            name: "jumped".into(),
            base: None,
            rules: vec![Rule::new("accept", "why")],
        });
        let ruleset = Ruleset {
            tables: vec![table],
        };
        assert_eq!(
            ruleset.render(),
            "table inet t {}\ndelete table inet t\ntable inet t {\n\
             \tchain jumped {\n\t\taccept comment \"why\"\n\t}\n}\n"
        );
        assert_eq!(
            ruleset.render_removal(),
            "table inet t {}\ndelete table inet t\n"
        );
    }
}
