//! The network configuration on stdin: the spec's fields, Margay's own, and Calico's
//! (`mtu`, `nodename`, `ipam.assign_ipv4`, `container_settings`, `log_file_path`…) so a
//! Calico conflist works after changing `type`. Unknown fields are ignored, as Calico does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::env::Command;
use crate::error::{code, CniError, Result};
use crate::version::{Version, LATEST};

pub const PLUGIN_TYPE: &str = "margay";
pub const IPAM_TYPE: &str = "margay-ipam";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/margay";
pub const DEFAULT_INTERFACE_PREFIX: &str = "mgy";
pub const DEFAULT_MTU: u32 = 1500;
/// Host-side veth names are the prefix plus 11 hex characters, and must fit in 15 bytes.
const MAX_PREFIX_LEN: usize = 4;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: Option<String>,
    #[serde(rename = "cniVersions", default)]
    pub cni_versions: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub mtu: u32,
    pub nodename: Option<String>,
    pub datastore: Option<String>,
    pub etcd_ca_cert_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub interface_prefix: Option<String>,
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub container_settings: ContainerSettings,
    pub log_file_path: Option<PathBuf>,
    pub log_level: Option<String>,
    /// Calico's option: how long ADD waits for the node agent to program the new
    /// endpoint's policy (`<state_dir>/policy/<host veth>`); 0, the default, does not wait.
    #[serde(default)]
    pub policy_setup_timeout_seconds: u32,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    /// The `args` convention: `args.cni.ips` requests addresses.
    #[serde(default)]
    pub args: Option<ArgsConvention>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub assign_ipv4: Option<bool>,
    #[serde(default, deserialize_with = "bool_or_string")]
    pub assign_ipv6: Option<bool>,
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerSettings {
    #[serde(default)]
    pub allow_ip_forwarding: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    /// The `ips` capability: addresses (optionally with a prefix) the runtime asks for.
    #[serde(default)]
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArgsConvention {
    #[serde(default)]
    pub cni: Option<CniArgsConvention>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CniArgsConvention {
    #[serde(default)]
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

/// Calico writes `"assign_ipv4": "true"`; JSON booleans work too.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not \"true\" or \"false\""
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "{other} is not a boolean"
        ))),
    }
}

/// A parsed config plus what it decided: the version to answer in and the raw bytes (handed
/// unchanged to a delegated IPAM plugin).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub conf: NetConf,
    pub version: Version,
    pub raw: Vec<u8>,
}

/// Picks the version from `cniVersion` (or the newest supported one in `cniVersions`).
/// A config that names no version at all is, per libcni, version 0.1.0, which is too old.
fn negotiate(conf: &NetConf) -> Result<Version, (Version, CniError)> {
    let incompatible = |asked: &str| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is {asked:?}, plugin supports [{}]",
                Version::supported_list().join(", ")
            ),
        )
    };
    match &conf.cni_version {
        Some(v) => match v.parse::<Version>() {
            Ok(parsed) if parsed.is_supported() => Ok(parsed),
            Ok(_) => Err((LATEST, incompatible(v))),
            Err(e) => Err((
                LATEST,
                CniError::new(code::DECODING_FAILURE, format!("cniVersion: {e}")),
            )),
        },
        None if !conf.cni_versions.is_empty() => {
            Version::newest_supported(conf.cni_versions.iter().map(String::as_str))
                .ok_or_else(|| (LATEST, incompatible(&conf.cni_versions.join(", "))))
        }
        None => Err((LATEST, incompatible("0.1.0 (no cniVersion given)"))),
    }
}

/// Decodes stdin. On failure, also says which version the error should be rendered in.
pub fn load(raw: Vec<u8>, command: Command) -> Result<Loaded, (Version, CniError)> {
    let value: Value = serde_json::from_slice(&raw).map_err(|e| {
        (
            LATEST,
            CniError::new(
                code::DECODING_FAILURE,
                format!("network config on stdin is not JSON: {e}"),
            ),
        )
    })?;
    let asked_version = value
        .get("cniVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse::<Version>().ok())
        .filter(|v| v.is_supported())
        .unwrap_or(LATEST);
    let conf: NetConf = serde_json::from_value(value).map_err(|e| {
        (
            asked_version,
            CniError::new(
                code::DECODING_FAILURE,
                format!("network config on stdin: {e}"),
            ),
        )
    })?;
    let version = negotiate(&conf)?;
    conf.validate(command).map_err(|e| (version, e))?;
    Ok(Loaded { conf, version, raw })
}

impl NetConf {
    fn validate(&self, command: Command) -> Result<()> {
        if command == Command::Version {
            return Ok(());
        }
        validate_network_name(&self.name)?;
        if let Some(prefix) = &self.interface_prefix {
            if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
                return Err(CniError::invalid_config(format!(
                    "interface_prefix {prefix:?} must be 1 to {MAX_PREFIX_LEN} characters (veth names are limited to 15)"
                )));
            }
        }
        if self.mtu != 0 && !(68..=65535).contains(&self.mtu) {
            return Err(CniError::invalid_config(format!(
                "mtu {} is outside 68..65535",
                self.mtu
            )));
        }
        if let Some(ipam) = &self.ipam {
            if ipam.ipam_type.is_empty() {
                return Err(CniError::invalid_config("ipam.type is missing"));
            }
            if ipam.assign_ipv4 == Some(false) && ipam.assign_ipv6 != Some(true) {
                return Err(CniError::invalid_config(
                    "ipam: assign_ipv4 and assign_ipv6 are both false, nothing to assign",
                ));
            }
        } else if matches!(command, Command::Add | Command::Check) {
            return Err(CniError::invalid_config(
                "ipam is missing (use {\"type\": \"margay-ipam\"})",
            ));
        }
        self.requested_ips()?;
        Ok(())
    }

    /// True when addresses are allocated in this process rather than by a delegate plugin.
    pub fn ipam_in_process(&self) -> bool {
        self.ipam.as_ref().is_some_and(|i| i.ipam_type == IPAM_TYPE)
    }

    pub fn ipam_type(&self) -> &str {
        self.ipam.as_ref().map_or("", |i| i.ipam_type.as_str())
    }

    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_STATE_DIR))
    }

    /// How long ADD waits for the endpoint's policy; `None` when it does not wait.
    pub fn policy_setup_timeout(&self) -> Option<Duration> {
        (self.policy_setup_timeout_seconds > 0)
            .then(|| Duration::from_secs(self.policy_setup_timeout_seconds.into()))
    }

    pub fn interface_prefix(&self) -> &str {
        self.interface_prefix
            .as_deref()
            .unwrap_or(DEFAULT_INTERFACE_PREFIX)
    }

    /// Addresses asked for through the `ips` capability or `args.cni.ips`.
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>> {
        let from_args = self
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .map(|c| c.ips.as_slice())
            .unwrap_or_default();
        self.runtime_config
            .ips
            .iter()
            .chain(from_args)
            .map(|s| {
                s.parse::<IpNet>()
                    .map(|n| n.addr())
                    .or_else(|_| s.parse::<IpAddr>())
                    .map_err(|_| {
                        CniError::invalid_config(format!(
                            "runtimeConfig.ips: {s:?} is not an address"
                        ))
                    })
            })
            .collect()
    }

    /// The pool restriction (`ipv4_pools`, `ipv6_pools`): CIDRs, or pool names to resolve.
    pub fn pool_refs(&self) -> Vec<&str> {
        self.ipam
            .as_ref()
            .map(|i| {
                i.ipv4_pools
                    .iter()
                    .chain(&i.ipv6_pools)
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn assign_ipv4(&self) -> bool {
        self.ipam
            .as_ref()
            .and_then(|i| i.assign_ipv4)
            .unwrap_or(true)
    }

    pub fn assign_ipv6(&self) -> bool {
        self.ipam
            .as_ref()
            .and_then(|i| i.assign_ipv6)
            .unwrap_or(false)
    }
}

/// The spec's network name rule.
fn validate_network_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else if name.is_empty() {
        Err(CniError::invalid_config("name is missing"))
    } else {
        Err(CniError::invalid_config(format!(
            "name {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{V0_3_1, V1_0_0};

    fn load_str(s: &str, command: Command) -> Result<Loaded, (Version, CniError)> {
        load(s.as_bytes().to_vec(), command)
    }

    #[test]
    fn calico_style_config_loads() {
        let loaded = load_str(
            r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"margay","mtu":0,
                "log_level":"Info","datastore_type":"kubernetes","policy":{"type":"k8s"},
                "kubernetes":{"kubeconfig":"/x"},"container_settings":{"allow_ip_forwarding":true},
                "ipam":{"type":"margay-ipam","assign_ipv4":"true","assign_ipv6":"false","ipv4_pools":["default-ipv4-ippool"]}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(loaded.version, V0_3_1);
        assert!(loaded.conf.ipam_in_process());
        assert!(loaded.conf.assign_ipv4() && !loaded.conf.assign_ipv6());
        assert!(loaded.conf.container_settings.allow_ip_forwarding);
        assert_eq!(loaded.conf.pool_refs(), vec!["default-ipv4-ippool"]);
        assert_eq!(loaded.conf.policy_setup_timeout(), None);
        let waiting = load_str(
            r#"{"cniVersion":"1.0.0","name":"n","type":"margay","ipam":{"type":"margay-ipam"},
                "policy_setup_timeout_seconds":5}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            waiting.conf.policy_setup_timeout(),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn versions() {
        let newest = load_str(
            r#"{"cniVersions":["0.3.1","1.0.0","7.0.0"],"name":"n","type":"margay","ipam":{"type":"margay-ipam"}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(newest.version, V1_0_0);
        for bad in [
            r#"{"cniVersion":"0.2.0","name":"n","ipam":{"type":"x"}}"#,
            r#"{"cniVersion":"2.0.0","name":"n","ipam":{"type":"x"}}"#,
            r#"{"name":"n","ipam":{"type":"x"}}"#,
        ] {
            let (_, e) = load_str(bad, Command::Add).unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{bad}");
        }
    }

    #[test]
    fn decoding_and_config_errors() {
        let (_, e) = load_str("{not json", Command::Add).unwrap_err();
        assert_eq!(e.code, code::DECODING_FAILURE);
        let (v, e) = load_str(
            r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#,
            Command::Add,
        )
        .unwrap_err();
        assert_eq!((v, e.code), (V1_0_0, code::DECODING_FAILURE));
        for (bad, field) in [
            (r#"{"cniVersion":"1.0.0","ipam":{"type":"x"}}"#, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","ipam":{"type":"x"}}"#,
                "name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "ipam"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":20,"ipam":{"type":"x"}}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","interface_prefix":"toolong","ipam":{"type":"x"}}"#,
                "interface_prefix",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"x"},"runtimeConfig":{"ips":["x"]}}"#,
                "runtimeConfig.ips",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"x","assign_ipv4":"false"}}"#,
                "assign_ipv4",
            ),
        ] {
            let (_, e) = load_str(bad, Command::Add).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains(field), "{bad}: {}", e.msg);
        }
        // DEL tolerates a config without ipam (nothing to release then).
        assert!(load_str(r#"{"cniVersion":"1.0.0","name":"n"}"#, Command::Del).is_ok());
    }

    #[test]
    fn requested_ips_from_capability_and_args() {
        let loaded = load_str(
            r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"margay-ipam"},
                "runtimeConfig":{"ips":["10.1.0.5/24"],"portMappings":[{"hostPort":80}],"bandwidth":{"ingressRate":1}},
                "args":{"cni":{"ips":["10.1.0.6"]}}}"#,
            Command::Add,
        )
        .unwrap();
        assert_eq!(
            loaded.conf.requested_ips().unwrap(),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "10.1.0.6".parse().unwrap()
            ]
        );
    }
}
