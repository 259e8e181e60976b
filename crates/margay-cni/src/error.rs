//! The CNI error result: `{cniVersion, code, msg, details}` on stdout with a non-zero exit.

use serde_json::{json, Value};

use crate::version::Version;

/// Error codes. 1–99 are the spec's; 100 and up are Margay's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// No address could be allocated (pools exhausted, none selects the node, address taken).
    pub const IPAM: u32 = 100;
    /// Wiring the pod's interface, addresses or routes failed.
    pub const DATAPLANE: u32 = 101;
    /// CHECK found the pod's network different from what ADD set up.
    pub const CHECK_MISMATCH: u32 = 102;
    /// The delegated IPAM plugin could not be run or answered garbage.
    pub const DELEGATE: u32 = 103;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_CONFIG, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> CniError {
        CniError::new(code::INVALID_ENVIRONMENT, msg)
    }

    pub fn dataplane(msg: impl Into<String>) -> CniError {
        CniError::new(code::DATAPLANE, msg)
    }

    pub fn to_json(&self, version: Version) -> Value {
        let mut v = json!({
            "cniVersion": version.to_string(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }

    /// Reads a delegate plugin's error output; `None` if it is not one.
    pub fn from_json(v: &Value) -> Option<CniError> {
        let code = v.get("code")?.as_u64()?;
        Some(CniError {
            code: u32::try_from(code).ok()?,
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        })
    }
}

/// Datastore failures that a retry may cure (unreachable, busy) become "try again later".
impl From<margay_client::Error> for CniError {
    fn from(e: margay_client::Error) -> CniError {
        let code = match &e {
            margay_client::Error::Datastore(margay_datastore::Error::Backend { .. })
            | margay_client::Error::Datastore(margay_datastore::Error::Conflict { .. }) => {
                code::TRY_AGAIN_LATER
            }
            _ => code::IO_FAILURE,
        };
        CniError::new(code, format!("datastore: {e}"))
    }
}

impl From<margay_ipam::Error> for CniError {
    fn from(e: margay_ipam::Error) -> CniError {
        match e {
            margay_ipam::Error::Client(c) => c.into(),
            margay_ipam::Error::Contention { .. } => {
                CniError::new(code::TRY_AGAIN_LATER, format!("IPAM: {e}"))
            }
            other => CniError::new(code::IPAM, format!("IPAM: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{V0_3_1, V1_1_0};

    #[test]
    fn renders_the_spec_shape() {
        let e = CniError::new(code::INVALID_CONFIG, "bad mtu").with_details("mtu: -1");
        assert_eq!(
            e.to_json(V1_1_0),
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad mtu", "details": "mtu: -1"})
        );
        let plain = CniError::new(code::TRY_AGAIN_LATER, "busy").to_json(V0_3_1);
        assert_eq!(
            plain,
            json!({"cniVersion": "0.3.1", "code": 11, "msg": "busy"})
        );
        assert_eq!(CniError::from_json(&plain).unwrap().code, 11);
        assert!(CniError::from_json(&json!({"ips": []})).is_none());
    }

    #[test]
    fn unreachable_datastore_means_try_again() {
        let e: CniError = margay_client::Error::Datastore(margay_datastore::Error::Backend {
            backend: "etcd",
            message: "connection refused".into(),
        })
        .into();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
    }
}
