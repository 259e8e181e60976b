//! Network namespaces: open one by path, and run code inside it without moving the caller.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::libc;
use nix::sched::{setns, CloneFlags};

use crate::Error;

/// An open network namespace (e.g. `/var/run/netns/cni-…` or `/proc/PID/ns/net`).
///
/// Holding the file descriptor keeps the namespace alive even if its bind mount is removed.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path`. A missing path is an [`Error::is_not_found`] error; a
    /// path that is not a network namespace is refused (checked with the `NS_GET_NSTYPE`
    /// ioctl, Linux 4.11+).
    pub fn open(path: &Path) -> Result<NetNs, Error> {
        let op = || format!("opening netns {}", path.display());
        let fd = OwnedFd::from(File::open(path).map_err(|e| Error::os(op(), e))?);
        match ns_type(fd.as_fd()) {
            Ok(libc::CLONE_NEWNET) => Ok(NetNs {
                fd,
                path: path.to_owned(),
            }),
            Ok(_) => Err(Error::invalid(op(), "not a network namespace")),
            // Files outside nsfs do not know the ioctl.
            Err(Errno::ENOTTY) => Err(Error::invalid(op(), "not a namespace file")),
            Err(e) => Err(Error::os(op(), e)),
        }
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<NetNs, Error> {
        // thread-self, not self: another thread of this process may be in another namespace.
        let path = Path::new("/proc/thread-self/ns/net");
        let file = File::open(path)
            .map_err(|e| Error::os(format!("opening netns {}", path.display()), e))?;
        Ok(NetNs {
            fd: file.into(),
            path: path.to_owned(),
        })
    }

    /// The path this namespace was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh scoped thread that has `setns()`'d into this namespace, and returns
    /// its result. The caller's thread is never moved, so a failure can never leave it (or a
    /// thread pool it belongs to) in the wrong namespace. A panic in `f` is propagated.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T, Error> {
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .spawn_scoped(scope, move || {
                    setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::os(format!("entering netns {}", self.path.display()), e)
                    })?;
                    Ok(f())
                })
                .map_err(|e| {
                    Error::os(
                        format!("starting a thread for netns {}", self.path.display()),
                        e,
                    )
                })?;
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The `CLONE_NEW*` type of the namespace behind `fd`.
#[allow(unsafe_code)]
fn ns_type(fd: BorrowedFd<'_>) -> nix::Result<libc::c_int> {
    // <linux/nsfs.h>
    const NS_GET_NSTYPE: nix::sys::ioctl::ioctl_num_type = nix::request_code_none!(0xb7, 0x3);
    // SAFETY: NS_GET_NSTYPE takes no argument and writes no memory; `fd` is a borrowed, open
    // descriptor for the duration of the call.
    let res = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    Errno::result(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_a_network_namespace() {
        let ns = NetNs::current().unwrap();
        assert_eq!(ns_type(ns.as_fd()), Ok(libc::CLONE_NEWNET));
        let again = NetNs::open(ns.path()).unwrap();
        assert_eq!(again.path(), Path::new("/proc/thread-self/ns/net"));
    }

    #[test]
    fn other_files_are_refused() {
        let e = NetNs::open(Path::new("/proc/thread-self/ns/uts")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "opening netns /proc/thread-self/ns/uts: not a network namespace"
        );
        let e = NetNs::open(Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "opening netns /proc/self/status: not a namespace file"
        );
    }
}
