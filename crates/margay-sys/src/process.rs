//! Processes of a lab: ending them, and telling whether they still run.

use std::fs;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::Error;

/// Sends `SIGKILL` to the process `pid`. A process that is already gone is not an error.
///
/// The process may not have ended yet when this returns, and if it is the caller's child it
/// stays a zombie until the caller reaps it (e.g. `std::process::Child::wait`).
pub fn kill(pid: u32) -> Result<(), Error> {
    let op = || format!("killing process {pid}");
    // kill(2) reads 0 and negative numbers as process groups: never let a pid become one.
    let raw = i32::try_from(pid)
        .ok()
        .filter(|&raw| raw > 0)
        .ok_or_else(|| Error::invalid(op(), "not a process id"))?;
    match signal::kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::os(op(), e)),
    }
}

/// Whether the process `pid` exists and is not a zombie (exited, waiting to be reaped): a
/// killed child counts as dead before its parent has waited for it.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE …": COMM may hold spaces and ')', so the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    // Z: zombie, X: dead (never seen in practice, but not alive either).
    state.is_some_and(|state| !matches!(state, "Z" | "X"))
}

/// Whether this process runs as root (effective user 0): what namespaces, links and the
/// root tests need.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Raises this process's soft limit on open files to its hard limit, and returns the new
/// soft limit: a lab probe holds one socket per pod pair at once (900 for 30 pods), just
/// under the usual soft limit of 1024.
pub fn raise_open_files_limit() -> Result<u64, Error> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let op = || "raising the open files limit".to_owned();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| Error::os(op(), e))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| Error::os(op(), e))?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
    }

    #[test]
    fn kill_refuses_what_kill2_would_read_as_a_group() {
        for pid in [0, u32::MAX, 1 << 31] {
            let e = kill(pid).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("killing process {pid}: not a process id")
            );
        }
    }

    #[test]
    fn killing_a_missing_process_is_ok() {
        // Above the kernel's largest pid_max (2^22), so never a process.
        kill(i32::MAX as u32).unwrap();
    }
}
