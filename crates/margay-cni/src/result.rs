//! The success result, rendered in the version the runtime asked for, and read back from
//! `prevResult` or a delegated IPAM plugin (any supported version).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{code, CniError, Result};
use crate::version::{Version, V1_1_0};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteEntry {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
}

impl CniResult {
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if let Some(mtu) = i.mtu.filter(|_| version >= V1_1_0) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(sb) = &i.sandbox {
                    o.insert("sandbox".into(), json!(sb));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ip_version_field() {
                    let family = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), json!(family));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), json!({}));
        Value::Object(out)
    }

    /// Reads a result of any supported version (`ips[].version` is ignored).
    pub fn from_json(v: &Value, what: &str) -> Result<CniResult> {
        CniResult::deserialize(v).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("{what} is not a CNI result: {e}"),
            )
        })
    }

    /// The addresses, without prefix lengths.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|c| c.address.addr()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{V0_3_1, V0_4_0, V1_0_0};

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "mgy0123456789a".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: Some("/var/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.0.5/32".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            }],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn old_versions_carry_ip_version() {
        for v in [V0_3_1, V0_4_0] {
            let out = sample().to_json(v);
            assert_eq!(out["ips"][0]["version"], "4");
            assert!(out["interfaces"][0].get("mtu").is_none());
        }
        let new = sample().to_json(V1_0_0);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.0.0");
        assert_eq!(sample().to_json(V1_1_0)["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn round_trips_every_version() {
        for v in crate::version::SUPPORTED {
            let back = CniResult::from_json(&sample().to_json(v), "x").unwrap();
            let mut expected = sample();
            if v < V1_1_0 {
                expected.interfaces.iter_mut().for_each(|i| i.mtu = None);
            }
            assert_eq!(back, expected, "{v}");
        }
    }

    #[test]
    fn golden_1_1_0() {
        let golden: Value =
            serde_json::from_str(include_str!("../tests/golden/result-1.1.0.json")).unwrap();
        assert_eq!(sample().to_json(V1_1_0), golden);
        let golden: Value =
            serde_json::from_str(include_str!("../tests/golden/result-0.3.1.json")).unwrap();
        assert_eq!(sample().to_json(V0_3_1), golden);
    }
}
