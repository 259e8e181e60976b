//! The runtime's side of an invocation: `CNI_*` environment variables.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{CniError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::invalid_env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )))
            }
        })
    }
}

/// `CNI_ARGS` keys Margay understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub infra_container_id: Option<String>,
    /// `IP=` (Calico's spelling): addresses requested for this attachment.
    pub ips: Vec<IpAddr>,
}

impl CniArgs {
    /// Parses `KEY=VALUE;KEY=VALUE`. Unknown keys are errors unless `IgnoreUnknown` is true.
    pub fn parse(raw: &str) -> Result<CniArgs> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::invalid_env(format!(
                    "CNI_ARGS: {pair:?} is not KEY=VALUE"
                )));
            };
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = non_empty(value),
                "K8S_POD_NAME" => args.pod_name = non_empty(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = non_empty(value),
                "IgnoreUnknown" => {
                    ignore_unknown = matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
                }
                "IP" => {
                    for ip in value.split(',').filter(|s| !s.is_empty()) {
                        args.ips.push(ip.trim().parse().map_err(|_| {
                            CniError::invalid_env(format!("CNI_ARGS: IP={ip:?} is not an address"))
                        })?);
                    }
                }
                // Set by Kubernetes runtimes; harmless to know about.
                "K8S_POD_UID" => {}
                other => unknown.push(other.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS: unknown argument(s) {} (add IgnoreUnknown=1 to allow them)",
                unknown.join(", ")
            )));
        }
        Ok(args)
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// One invocation's environment, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads `CNI_*` through `var` (the process environment in production).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Invocation> {
        let command = Command::parse(
            &var("CNI_COMMAND").ok_or_else(|| CniError::invalid_env("CNI_COMMAND is not set"))?,
        )?;
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> Result<String> {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::invalid_env(format!("{name} is not set")))
        };
        let (container_id, ifname) = if per_attachment {
            let id = required("CNI_CONTAINERID")?;
            validate_container_id(&id)?;
            let ifname = required("CNI_IFNAME")?;
            validate_ifname(&ifname)?;
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = match command {
            Command::Add | Command::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            Command::Del => var("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            _ => None,
        };
        let args = match var("CNI_ARGS") {
            Some(raw) if per_attachment => CniArgs::parse(&raw)?,
            _ => CniArgs::default(),
        };
        let path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// The Kubernetes pod (namespace, name) when the runtime named one.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.pod_namespace.as_deref()?,
            self.args.pod_name.as_deref()?,
        ))
    }
}

/// The spec: alphanumeric first, then alphanumerics, `_`, `.` or `-`.
fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// What the kernel accepts as an interface name.
pub fn validate_ifname(name: &str) -> Result<()> {
    let problem = if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid name")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::invalid_env(format!("CNI_IFNAME {name:?} {p}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::error::code;

    fn invocation(vars: &[(&str, &str)]) -> Result<Invocation> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let ok = invocation(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;FOO=bar",
            ),
        ])
        .unwrap();
        assert_eq!(ok.pod(), Some(("ns", "web-0")));
        assert_eq!(ok.path.len(), 2);
        let missing = invocation(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]);
        assert_eq!(missing.unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let inv = invocation(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(inv.netns, None);
    }

    #[test]
    fn bad_values_are_invalid_environment() {
        for vars in [
            vec![("CNI_COMMAND", "FROB")],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "-bad"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_IFNAME", "a-very-long-interface"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "FOO=bar"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ok"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "garbage"),
            ],
        ] {
            let err = invocation(&vars).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{vars:?}: {err}");
        }
    }

    #[test]
    fn ip_argument() {
        let args = CniArgs::parse("IP=10.0.0.5,fd00::5").unwrap();
        assert_eq!(args.ips.len(), 2);
        assert!(CniArgs::parse("IP=nope").is_err());
    }

    #[test]
    fn status_and_gc_need_only_the_command() {
        assert!(invocation(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(invocation(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(invocation(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
