//! The reachability matrix: what `margay policy matrix` predicts and `margay lab probe`
//! measures, in one shape so the two can be compared pair by pair.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transport protocol with ports, spelled `TCP`/`UDP`/`SCTP` like Kubernetes'
/// `NetworkPolicyPort.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IANA protocol number, which is how policy rules compare protocols (`6` and `TCP`
    /// are the same protocol to Calico).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with that number, if it is one with ports.
    pub fn from_number(number: u8) -> Option<Protocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.number() == number)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A protocol name that is none of TCP, UDP and SCTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP or SCTP")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Any case: `tcp` on a command line means TCP.
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| s.eq_ignore_ascii_case(&p.to_string()))
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// Who reaches whom on one port. Pairs are `(from, to)`, sorted.
///
/// The JSON shape is a contract between `margay policy matrix`, which predicts, and
/// `margay lab probe`, which measures: `{"port":80,"protocol":"TCP","allowed":[["x/a","y/b"]],…}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: Vec<(String, String)>,
    pub denied: Vec<(String, String)>,
}

/// Several matrices, as printed by `--output json`: `{"probes":[…]}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub probes: Vec<Matrix>,
}

/// The matrix as a truth table, like the Kubernetes network-policy e2e suite prints: sources
/// are rows, targets columns, `.` allowed, `X` denied (`?` for a pair not in the matrix).
/// Columns are numbered, and each row starts with its number and id, so the rows are also the
/// legend and 30 pods with long ids still fit a terminal.
pub fn render_table(m: &Matrix, ids: &[String]) -> String {
    let allowed: BTreeSet<(&str, &str)> = m
        .allowed
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let denied: BTreeSet<(&str, &str)> = m
        .denied
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let num = ids.len().to_string().len();
    let id_width = ids.iter().map(|id| id.chars().count()).max().unwrap_or(0);
    let columns = (1..=ids.len())
        .map(|i| format!("{i:>num$}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = format!(
        "{}/{} (rows: from, columns: to; . allowed, X denied)\n",
        m.port, m.protocol
    );
    out += &format!("{:pad$}{columns}\n", "", pad = num + 1 + id_width + 2);
    for (i, from) in ids.iter().enumerate() {
        let cells = ids
            .iter()
            .map(|to| {
                let pair = (from.as_str(), to.as_str());
                let cell = if allowed.contains(&pair) {
                    "."
                } else if denied.contains(&pair) {
                    "X"
                } else {
                    "?"
                };
                format!("{cell:>num$}")
            })
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!("{:>num$} {from:<id_width$}  {cells}\n", i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn protocol_parses_any_case_and_displays_upper_case() {
        for s in ["TCP", "tcp", "Tcp"] {
            assert_eq!(s.parse::<Protocol>(), Ok(Protocol::Tcp));
        }
        assert_eq!("uDp".parse::<Protocol>(), Ok(Protocol::Udp));
        assert_eq!("sctp".parse::<Protocol>(), Ok(Protocol::Sctp));
        assert_eq!(
            "icmp".parse::<Protocol>().unwrap_err().to_string(),
            r#"unknown protocol "icmp": expected TCP, UDP or SCTP"#
        );
        assert_eq!(Protocol::Tcp.to_string(), "TCP");
        assert_eq!(Protocol::Udp.to_string(), "UDP");
        assert_eq!(Protocol::Sctp.to_string(), "SCTP");
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::from_number(1), None);
    }

    /// The contract between `margay policy matrix` and `margay lab probe`: do not change
    /// this shape.
    #[test]
    fn report_json_shape_is_pinned() {
        let report = Report {
            probes: vec![
                Matrix {
                    port: 80,
                    protocol: Protocol::Tcp,
                    allowed: pairs(&[("x/a", "x/a"), ("x/a", "y/b")]),
                    denied: pairs(&[("y/b", "x/a")]),
                },
                Matrix {
                    port: 53,
                    protocol: Protocol::Udp,
                    allowed: vec![],
                    denied: pairs(&[("x/a", "y/b")]),
                },
                Matrix {
                    port: 9,
                    protocol: Protocol::Sctp,
                    allowed: vec![],
                    denied: vec![],
                },
            ],
        };
        let json = r#"{"probes":[{"port":80,"protocol":"TCP","allowed":[["x/a","x/a"],["x/a","y/b"]],"denied":[["y/b","x/a"]]},{"port":53,"protocol":"UDP","allowed":[],"denied":[["x/a","y/b"]]},{"port":9,"protocol":"SCTP","allowed":[],"denied":[]}]}"#;
        assert_eq!(serde_json::to_string(&report).unwrap(), json);
        assert_eq!(serde_json::from_str::<Report>(json).unwrap(), report);
    }

    #[test]
    fn table_has_sources_as_rows_and_targets_as_columns() {
        let ids: Vec<String> = ["x/a", "x/b", "y/long-name"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            allowed: pairs(&[
                ("x/a", "x/a"),
                ("x/a", "x/b"),
                ("x/b", "x/b"),
                ("y/long-name", "x/a"),
                ("y/long-name", "y/long-name"),
            ]),
            denied: pairs(&[
                ("x/a", "y/long-name"),
                ("x/b", "x/a"),
                ("x/b", "y/long-name"),
            ]),
        };
        assert_eq!(
            render_table(&m, &ids),
            "\
80/TCP (rows: from, columns: to; . allowed, X denied)
               1 2 3
1 x/a          . . X
2 x/b          X . X
3 y/long-name  . ? .
"
        );
    }

    #[test]
    fn table_columns_stay_aligned_past_nine_pods() {
        let ids: Vec<String> = (1..=10).map(|i| format!("n/p{i}")).collect();
        let m = Matrix {
            port: 53,
            protocol: Protocol::Udp,
            allowed: vec![],
            denied: ids
                .iter()
                .flat_map(|a| ids.iter().map(|b| (a.clone(), b.clone())))
                .collect(),
        };
        let table = render_table(&m, &ids);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "53/UDP (rows: from, columns: to; . allowed, X denied)"
        );
        assert_eq!(lines[1], "           1  2  3  4  5  6  7  8  9 10");
        assert_eq!(lines[2], " 1 n/p1    X  X  X  X  X  X  X  X  X  X");
        assert_eq!(lines[11], "10 n/p10   X  X  X  X  X  X  X  X  X  X");
    }
}
