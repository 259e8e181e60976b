//! Margay's CNI plugin, spec 1.1.
//!
//! One binary, two plugin types: `margay` wires a pod Calico-style (see [`dataplane`]) and
//! records its WorkloadEndpoint; invoked as `margay-ipam` it only manages addresses, for other
//! main plugins. Results and errors go to stdout as the spec says; logs never do.

pub mod allocate;
pub mod config;
pub mod dataplane;
pub mod delegate;
pub mod endpoint;
pub mod env;
pub mod error;
pub mod install;
mod logging;
pub mod plugin;
pub mod result;
pub mod version;

use std::io::{Read, Write};

use crate::env::{Command, Invocation};
use crate::error::CniError;
use crate::plugin::Host;
pub use crate::plugin::Mode;
use crate::version::{Version, LATEST};

/// Runs one plugin invocation from the process environment and stdin; returns the exit code.
pub fn main(mode: Mode) -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => invoke(mode, stdin),
        Err(e) => Err((
            LATEST,
            CniError::new(error::code::IO_FAILURE, format!("reading stdin: {e}")),
        )),
    };
    let mut stdout = std::io::stdout().lock();
    let (json, exit) = match outcome {
        Ok(None) => return 0,
        Ok(Some(v)) => (v, 0),
        Err((version, e)) => {
            tracing::error!(code = e.code, "{e}");
            (e.to_json(version), 1)
        }
    };
    // Nothing useful can be done if stdout is gone; the exit code still tells.
    let _ = writeln!(stdout, "{json}");
    exit
}

type Outcome = Result<Option<serde_json::Value>, (Version, CniError)>;

fn invoke(mode: Mode, stdin: Vec<u8>) -> Outcome {
    let var = |k: &str| std::env::var(k).ok();
    let inv = Invocation::from_env(var).map_err(|e| (LATEST, e))?;
    if inv.command == Command::Version {
        return Ok(Some(plugin::version_info()));
    }
    let loaded = config::load(stdin, inv.command)?;
    let version = loaded.version;
    let expected_type = match mode {
        Mode::Main => config::PLUGIN_TYPE,
        Mode::Ipam => config::IPAM_TYPE,
    };
    let declared = match mode {
        Mode::Main => loaded.conf.plugin_type.as_str(),
        Mode::Ipam => loaded.conf.ipam_type(),
    };
    if declared != expected_type {
        return Err((
            version,
            CniError::invalid_config(format!(
                "this plugin is {expected_type:?} but the config says {declared:?}"
            )),
        ));
    }
    logging::init(&loaded.conf);
    tracing::debug!(command = ?inv.command, container = %inv.container_id, "invoked");
    let mut host = Host {
        dataplane: dataplane::LinuxDataplane,
        exec: delegate::ProcessExec {
            path: inv.path.clone(),
        },
        datastore_env: var("MARGAY_DATASTORE"),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                version,
                CniError::new(error::code::IO_FAILURE, format!("async runtime: {e}")),
            )
        })?;
    runtime
        .block_on(plugin::run(mode, &inv, &loaded, &mut host))
        .map_err(|e| (version, e))
}
