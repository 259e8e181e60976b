//! The rendered state: Margay's chains, its rules in built-in chains, and its ipsets, as
//! plain data that can be written as restore inputs, compared, and read back from the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::{Family, CHAIN_PREFIX};

/// One rule: what follows `-A <chain> ` in `iptables-save`, and its `mgy:` hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub spec: String,
    /// From the rule's `mgy:<hash>` comment; `None` for a rule without one (not Margay's
    /// rendering, so never equal to any).
    pub hash: Option<String>,
}

/// A chain of Margay's, `mgy-…`, with its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// A rule of Margay's in a built-in chain (`INPUT`, `FORWARD`, `OUTPUT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub chain: String,
    /// Inserted at the top of the chain (`-I CHAIN 1`), else appended. Read back from the
    /// kernel, hooks count as appended: only their chain and hash are compared.
    pub insert: bool,
    pub rule: Rule,
}

/// What `ipset create` says of a set besides its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetHeader {
    /// `hash:net`, `hash:ip,port`.
    pub kind: String,
    /// `inet`, `inet6`.
    pub family: String,
    pub maxelem: u64,
}

impl SetHeader {
    /// Felix's default `MaxIpsetSize`.
    pub const MAXELEM: u64 = 1_048_576;

    /// The header of Margay's sets of `kind` in `family`.
    pub fn new(kind: &str, family: Family) -> SetHeader {
        SetHeader {
            kind: kind.to_owned(),
            family: family.ipset_family().to_owned(),
            maxelem: SetHeader::MAXELEM,
        }
    }

    /// `hash:net family inet hashsize 1024 maxelem 1048576`
    pub fn create_args(&self) -> String {
        format!(
            "{} family {} hashsize 1024 maxelem {}",
            self.kind, self.family, self.maxelem
        )
    }

    /// Whether `ipset swap` can exchange a set of this header with one of `other`: the
    /// kernel requires the same family and the same dimensions (`hash:ip` and `hash:net`
    /// both match an address, `hash:ip,port` an address and a port).
    pub fn swappable_with(&self, other: &SetHeader) -> bool {
        self.family == other.family && dimensions(&self.kind) == dimensions(&other.kind)
    }
}

fn dimensions(kind: &str) -> &str {
    let dims = kind.split_once(':').map_or(kind, |(_, d)| d);
    match dims {
        "ip" | "net" => "ip",
        "ip,port" | "net,port" => "ip,port",
        other => other,
    }
}

/// One ipset: its header and its members, as `ipset save` prints them (`10.1.0.1`,
/// `10.2.0.0/16`, `10.1.0.1,tcp:80`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipset {
    pub header: SetHeader,
    pub members: BTreeSet<String>,
}

/// Everything Margay programs in one family's filter table and ipsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub family: Family,
    /// Margay's chains, in the order they are written.
    pub chains: Vec<Chain>,
    /// Margay's rules in built-in chains.
    pub hooks: Vec<Hook>,
    /// Margay's sets of this family, by name.
    pub sets: BTreeMap<String, Ipset>,
}

impl Rendered {
    /// Nothing: what [`remove_all`](crate::remove_all) goes to.
    pub fn empty(family: Family) -> Rendered {
        Rendered {
            family,
            chains: Vec::new(),
            hooks: Vec::new(),
            sets: BTreeMap::new(),
        }
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The `iptables-restore --noflush` (`ip6tables-restore --noflush`) input that loads
    /// this rendering into a filter table that has none of Margay's chains and rules: other
    /// chains are left alone. To change a table that has some, use
    /// [`changed_chains`](crate::changed_chains) from what is there. Load
    /// [`ipset_restore`](Self::ipset_restore) first: the rules name its sets.
    pub fn iptables_restore(&self) -> String {
        let mut out = String::from("*filter\n");
        for chain in &self.chains {
            let _ = writeln!(out, ":{} - [0:0]", chain.name);
        }
        for chain in &self.chains {
            write_rules(&mut out, chain);
        }
        write_hooks(&mut out, &self.hooks);
        out.push_str("COMMIT\n");
        out
    }

    /// The `ipset restore` input that creates this rendering's sets with their members.
    pub fn ipset_restore(&self) -> String {
        let mut out = String::new();
        for (name, set) in &self.sets {
            write_set(&mut out, name, set);
        }
        out
    }

    /// What the kernel holds of Margay's, from `iptables-save` (`ip6tables-save`) and
    /// `ipset save` output: every `mgy-` chain of the filter table with its rules, every rule
    /// of a built-in chain that jumps to one or has an `mgy:` comment, and every set of this
    /// family whose name starts with `mgy4` (`mgy6`), temporary ones included. Lines it does
    /// not understand are skipped.
    pub fn from_kernel(family: Family, iptables_save: &str, ipset_save: &str) -> Rendered {
        let mut rendered = Rendered::empty(family);
        let mut in_filter = false;
        for line in iptables_save.lines() {
            if let Some(table) = line.strip_prefix('*') {
                in_filter = table.trim() == "filter";
                continue;
            }
            if !in_filter {
                continue;
            }
            if let Some(declared) = line.strip_prefix(':') {
                let name = declared.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) {
                    rendered.chain_mut(name);
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                let rule = Rule {
                    spec: spec.to_owned(),
                    hash: hash_of(spec),
                };
                if chain.starts_with(CHAIN_PREFIX) {
                    rendered.chain_mut(chain).rules.push(rule);
                } else if rule.hash.is_some() || targets(spec).any(is_margay_chain) {
                    rendered.hooks.push(Hook {
                        chain: chain.to_owned(),
                        insert: false,
                        rule,
                    });
                }
            }
        }
        for line in ipset_save.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["create", name, kind, options @ ..]
                    if name.starts_with(family.any_set_prefix()) =>
                {
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
                    rendered.sets.insert(
                        (*name).to_owned(),
                        Ipset {
                            header,
                            members: BTreeSet::new(),
                        },
                    );
                }
                ["add", name, member, ..] => {
                    if let Some(set) = rendered.sets.get_mut(*name) {
                        let member = canonical_member(&set.header.kind, member);
                        set.members.insert(member);
                    }
                }
                _ => {}
            }
        }
        rendered
    }

    fn chain_mut(&mut self, name: &str) -> &mut Chain {
        let i = match self.chains.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.chains.push(Chain {
                    name: name.to_owned(),
                    rules: Vec::new(),
                });
                self.chains.len() - 1
            }
        };
        &mut self.chains[i]
    }
}

pub(crate) fn write_rules(out: &mut String, chain: &Chain) {
    for rule in &chain.rules {
        let _ = writeln!(out, "-A {} {}", chain.name, rule.spec);
    }
}

/// Inserted hooks in reverse, so that they end up at the top in order; then appended ones.
pub(crate) fn write_hooks(out: &mut String, hooks: &[Hook]) {
    for hook in hooks.iter().rev().filter(|h| h.insert) {
        let _ = writeln!(out, "-I {} 1 {}", hook.chain, hook.rule.spec);
    }
    for hook in hooks.iter().filter(|h| !h.insert) {
        let _ = writeln!(out, "-A {} {}", hook.chain, hook.rule.spec);
    }
}

pub(crate) fn write_set(out: &mut String, name: &str, set: &Ipset) {
    let _ = writeln!(out, "create {name} {}", set.header.create_args());
    for member in &set.members {
        let _ = writeln!(out, "add {name} {member}");
    }
}

/// Whether two lists of rules are Margay's same rendering: same length, and every rule
/// hashed and equal by hash.
pub(crate) fn same_rules<'a>(
    a: impl ExactSizeIterator<Item = &'a Rule>,
    b: impl ExactSizeIterator<Item = &'a Rule>,
) -> bool {
    a.len() == b.len() && a.zip(b).all(|(x, y)| x.hash.is_some() && x.hash == y.hash)
}

/// The targets of a rule: what follows `-j` or `-g`.
pub(crate) fn targets(spec: &str) -> impl Iterator<Item = &str> {
    let mut words = spec.split_whitespace().peekable();
    std::iter::from_fn(move || {
        while let Some(word) = words.next() {
            if matches!(word, "-j" | "-g" | "--jump" | "--goto") {
                return words.next();
            }
        }
        None
    })
}

fn is_margay_chain(name: &str) -> bool {
    name.starts_with(CHAIN_PREFIX)
}

/// The sets a rule matches on: what follows `--match-set`.
pub(crate) fn set_references(spec: &str) -> impl Iterator<Item = &str> {
    let mut words = spec.split_whitespace();
    std::iter::from_fn(move || {
        while let Some(word) = words.next() {
            if word == "--match-set" {
                return words.next();
            }
        }
        None
    })
}

const HASH_COMMENT: &str = "--comment \"mgy:";
const HASH_LEN: usize = 16;

/// The hash of a rule of `chain` after a rule whose hash is `previous` (empty for the
/// first): 16 hex digits of SHA-256 over the three, so that equal hashes mean an equal rule
/// at an equal place, as Felix's rule hashes do.
pub(crate) fn rule_hash(chain: &str, previous: &str, unhashed: &str) -> String {
    let mut digest = Sha256::new();
    for part in [chain, previous, unhashed] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    hex(&digest.finalize(), HASH_LEN)
}

/// The comment that carries a rule's hash.
pub(crate) fn hash_comment(hash: &str) -> String {
    format!("-m comment {HASH_COMMENT}{hash}\"")
}

fn hash_of(spec: &str) -> Option<String> {
    let start = spec.find(HASH_COMMENT)? + HASH_COMMENT.len();
    let len = spec[start..].find('"')?;
    Some(spec[start..start + len].to_owned())
}

pub(crate) fn hex(bytes: &[u8], digits: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(digits);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            if s.len() == digits {
                return s;
            }
            s.push(char::from(DIGITS[usize::from(nibble)]));
        }
    }
    s
}

/// A member as `ipset save` prints it: addresses without `/32` (`/128`), networks masked,
/// `address,proto:port` with the protocol's name in lower case. Unknown forms are kept.
pub(crate) fn canonical_member(kind: &str, member: &str) -> String {
    match dimensions(kind) {
        "ip" => parse_net(member).map_or_else(|| member.to_owned(), net_member),
        "ip,port" => {
            let Some((ip, port)) = member.split_once(',') else {
                return member.to_owned();
            };
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return member.to_owned();
            };
            // ipset takes a bare port as TCP.
            let (proto, number) = port.split_once(':').unwrap_or(("tcp", port));
            match number.parse::<u16>() {
                Ok(n) => format!("{ip},{}:{n}", proto.to_ascii_lowercase()),
                Err(_) => member.to_owned(),
            }
        }
        _ => member.to_owned(),
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A network as ipset prints it: masked, and a host without its prefix length.
pub(crate) fn net_member(net: IpNet) -> String {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_printed_as_ipset_prints_them() {
        assert_eq!(canonical_member("hash:net", "10.1.0.1/32"), "10.1.0.1");
        assert_eq!(canonical_member("hash:net", "10.1.0.5/24"), "10.1.0.0/24");
        assert_eq!(canonical_member("hash:net", "fd00:0::1/128"), "fd00::1");
        assert_eq!(
            canonical_member("hash:ip,port", "10.1.0.1,TCP:80"),
            "10.1.0.1,tcp:80"
        );
        assert_eq!(
            canonical_member("hash:ip,port", "10.1.0.1,80"),
            "10.1.0.1,tcp:80"
        );
        assert_eq!(canonical_member("hash:net", "junk"), "junk");
    }

    #[test]
    fn kernel_state_is_read_back() {
        let save = "# Generated by iptables-save\n*nat\n:mgy-nat - [0:0]\nCOMMIT\n*filter\n\
            :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:mgy-a - [0:0]\n:mgy-empty - [0:0]\n\
            -A FORWARD -m comment --comment \"mgy:0123\" -j mgy-a\n\
            -A FORWARD -j KUBE-FORWARD\n-A FORWARD -i x -g mgy-a\n\
            -A mgy-a -p tcp -m comment --comment \"mgy:abcd\" -j DROP\n-A mgy-a -j RETURN\nCOMMIT\n";
        let sets = "create mgy40s-x hash:net family inet hashsize 1024 maxelem 1048576 \
            bucketsize 12 initval 0x1\nadd mgy40s-x 10.1.0.1\nadd mgy40s-x 10.2.0.0/16\n\
            create mgy60s-x hash:net family inet6 hashsize 1024 maxelem 65536\n\
            create other hash:ip family inet\nadd other 10.9.9.9\n";
        let r = Rendered::from_kernel(Family::V4, save, sets);
        let names: Vec<&str> = r.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mgy-a", "mgy-empty"]);
        let a = r.chain("mgy-a").unwrap();
        assert_eq!(a.rules[0].hash.as_deref(), Some("abcd"));
        assert_eq!(a.rules[1].hash, None);
        assert_eq!(a.rules[1].spec, "-j RETURN");
        assert_eq!(r.hooks.len(), 2);
        assert_eq!(r.hooks[1].rule.spec, "-i x -g mgy-a");
        assert_eq!(r.sets.len(), 1);
        let set = &r.sets["mgy40s-x"];
        assert_eq!(set.header, SetHeader::new("hash:net", Family::V4));
        assert_eq!(
            set.members.iter().map(String::as_str).collect::<Vec<_>>(),
            ["10.1.0.1", "10.2.0.0/16"]
        );
        let v6 = Rendered::from_kernel(Family::V6, "", sets);
        assert_eq!(v6.sets["mgy60s-x"].header.maxelem, 65_536);
    }

    #[test]
    fn swaps_need_the_same_dimensions_and_family() {
        let net = SetHeader::new("hash:net", Family::V4);
        let ip = SetHeader {
            kind: "hash:ip".into(),
            ..net.clone()
        };
        let smaller = SetHeader {
            maxelem: 65_536,
            ..net.clone()
        };
        assert!(net.swappable_with(&ip));
        assert!(net.swappable_with(&smaller));
        assert!(!net.swappable_with(&SetHeader::new("hash:ip,port", Family::V4)));
        assert!(!net.swappable_with(&SetHeader::new("hash:net", Family::V6)));
    }
}
