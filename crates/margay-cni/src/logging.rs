//! Logs go to stderr (the runtime keeps them) and, if the config names one, to a file, as
//! Calico's `log_file_path` does. Never to stdout, which carries the result.

use std::fs::OpenOptions;

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::config::NetConf;

/// Calico spells levels `Info`, `Warning`, `Debug`; `MARGAY_LOG` overrides the config.
fn level(conf: &NetConf) -> String {
    if let Ok(env) = std::env::var("MARGAY_LOG") {
        return env;
    }
    match conf
        .log_level
        .as_deref()
        .unwrap_or("warn")
        .to_ascii_lowercase()
        .as_str()
    {
        "warning" => "warn".to_owned(),
        "fatal" | "panic" | "critical" => "error".to_owned(),
        other => other.to_owned(),
    }
}

pub fn init(conf: &NetConf) {
    let filter = EnvFilter::try_new(level(conf)).unwrap_or_else(|_| EnvFilter::new("warn"));
    let file = conf.log_file_path.as_ref().and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("margay: cannot open log file {}: {e}", path.display());
                None
            }
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(f) => builder
            .with_writer(std::io::stderr.and(std::sync::Mutex::new(f)))
            .try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
