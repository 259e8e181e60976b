//! Network namespaces: open one by path, and run code inside it without moving the caller;
//! create and delete named ones (`ip netns add` / `del`), and find the processes inside one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::netlink::RouteSocket;
use crate::Error;

/// Where named network namespaces live, as iproute2 keeps them (`/var/run/netns` is the same
/// directory where `/var/run` links to `/run`): `ip netns`, CNI runtimes and Margay all look
/// here.
pub const NETNS_RUN_DIR: &str = "/run/netns";

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

    /// Creates the named network namespace `/run/netns/NAME` exactly as `ip netns add NAME`
    /// does, so `ip netns exec NAME …` and CNI runtimes can use it, and brings its `lo` up.
    ///
    /// As iproute2 does: `/run/netns` is made a shared mount (bind-mounted onto itself first
    /// if it is not a mount point), so that deleting the namespace in one mount namespace
    /// unmounts it in all of them and the kernel can free it; the file is created with
    /// `O_EXCL`, so an existing name is an [`Error::is_exists`] error and is left alone; and
    /// a fresh thread `unshare()`s a new network namespace and bind-mounts it onto the file.
    /// The caller's thread is never moved. If any later step fails, the file (and its mount)
    /// is removed again: there is no half-made namespace.
    ///
    /// `name` must be a single path component: non-empty, no `/`, not `.` or `..`, at most
    /// 255 bytes.
    pub fn create_named(name: &str) -> Result<NetNs, Error> {
        let op = |step: &str| format!("creating netns {name} ({step})");
        check_name(name)
            .map_err(|reason| Error::invalid(format!("creating netns {name}"), reason))?;
        let dir = Path::new(NETNS_RUN_DIR);
        // 0755, as iproute2 makes it: everyone may open the namespaces, only root add them.
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::os(op(&format!("creating {}", dir.display())), e))?;
        make_shared(dir).map_err(|(step, e)| Error::os(op(&step), e))?;
        let path = dir.join(name);
        // Mode 0 and no descriptor kept, as iproute2: the file is only a mount point.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| Error::os(op(&format!("creating {}", path.display())), e))?;
        let made = bind_new_netns(&path)
            .map_err(|(step, e)| Error::os(op(&step), e))
            .and_then(|()| NetNs::open(&path))
            .and_then(|ns| {
                // Every user of a lab namespace wants loopback; a new namespace has it down.
                RouteSocket::new_in(&ns)?.set_up_by_name("lo", None)?;
                Ok(ns)
            });
        if made.is_err() {
            // Best effort: the error that matters is the one being returned.
            let _ = remove_named(&path);
        }
        made
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

/// Deletes the named network namespace `/run/netns/NAME` as `ip netns del NAME` does:
/// detaches its bind mount and removes the file. The namespace itself lives on while a
/// process or open [`NetNs`] is still in it.
///
/// Returns `Ok(false)` if there was no such namespace, so deleting is idempotent. A file
/// that is not (or no longer) a mount point, e.g. left by an interrupted
/// [`NetNs::create_named`], is removed all the same.
pub fn delete_named(name: &str) -> Result<bool, Error> {
    let op = || format!("deleting netns {name}");
    check_name(name).map_err(|reason| Error::invalid(op(), reason))?;
    match remove_named(&Path::new(NETNS_RUN_DIR).join(name)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::os(op(), e)),
    }
}

/// The processes whose network namespace is the one at `path` (any namespace file, e.g.
/// `/run/netns/NAME` or `/proc/PID/ns/net`), sorted: those whose `/proc/PID/ns/net` has the
/// same device and inode, as `ip netns pids` finds them.
///
/// Processes that exit during the scan, and (for callers without root) processes whose
/// namespace the caller may not look at, are left out.
pub fn pids_in(path: &Path) -> Result<Vec<u32>, Error> {
    let op = || format!("listing processes in netns {}", path.display());
    let ns = fs::metadata(path).map_err(|e| Error::os(op(), e))?;
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").map_err(|e| Error::os(op(), e))? {
        let entry = entry.map_err(|e| Error::os(op(), e))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue; // not a process: /proc/net, /proc/self, …
        };
        match fs::metadata(entry.path().join("ns/net")) {
            Ok(m) if (m.dev(), m.ino()) == (ns.dev(), ns.ino()) => pids.push(pid),
            Ok(_) => {}
            // Gone (or a zombie, which has no namespaces left), or not ours to look at.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(Error::os(op(), e)),
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Why `name` cannot name a file directly under [`NETNS_RUN_DIR`], if it cannot.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        Err("invalid name: expected one path component, without '/'")
    } else if name.len() > 255 {
        Err("invalid name: longer than 255 bytes")
    } else if name.contains('\0') {
        Err("invalid name: contains a NUL byte")
    } else {
        Ok(())
    }
}

/// Makes `dir` a shared mount, turning it into a mount point first if it is not one (the
/// kernel refuses to change the propagation of a plain directory with EINVAL). Returns the
/// failed step and its error.
fn make_shared(dir: &Path) -> Result<(), (String, Errno)> {
    let mut made_mount_point = false;
    loop {
        match mount(
            Some(""),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) if !made_mount_point => {
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| (format!("bind-mounting {} onto itself", dir.display()), e))?;
                made_mount_point = true;
            }
            Err(e) => return Err((format!("making {} a shared mount", dir.display()), e)),
        }
    }
}

/// On a fresh thread, moves into a new network namespace and bind-mounts it onto `path`,
/// which keeps it alive after the thread ends. Returns the failed step and its error.
fn bind_new_netns(path: &Path) -> Result<(), (String, io::Error)> {
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .spawn_scoped(scope, || {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| ("unsharing a network namespace".to_owned(), e.into()))?;
                // thread-self, not self: only this thread is in the new namespace.
                let own = Path::new("/proc/thread-self/ns/net");
                mount(
                    Some(own),
                    path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| {
                    (
                        format!("bind-mounting {} onto {}", own.display(), path.display()),
                        e.into(),
                    )
                })
            })
            .map_err(|e| ("starting a thread".to_owned(), e))?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Detaches the namespace's bind mount, if it has one (EINVAL: not a mount point), and
/// removes the file. A missing file is a `NotFound` error.
fn remove_named(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // ENOENT: no file; remove_file reports that.
        Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    fs::remove_file(path)
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
    fn names_must_be_one_path_component() {
        for bad in ["", ".", "..", "a/b", "/abs", "nul\0byte"] {
            let e = NetNs::create_named(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid { .. }), "{bad:?}: {e}");
            assert!(delete_named(bad).is_err(), "{bad:?}");
        }
        let long = "n".repeat(256);
        let e = NetNs::create_named(&long).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("creating netns {long}: invalid name: longer than 255 bytes")
        );
        assert_eq!(check_name(&"n".repeat(255)), Ok(()));
        assert_eq!(check_name("lab-a.node-1"), Ok(()));
    }

    #[test]
    fn pids_in_own_namespace_includes_this_process() {
        let pids = pids_in(Path::new("/proc/self/ns/net")).unwrap();
        assert!(pids.contains(&std::process::id()), "{pids:?}");
        assert!(pids.windows(2).all(|w| w[0] < w[1]), "sorted: {pids:?}");
        let e = pids_in(Path::new("/proc/self/ns/mgy-missing")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
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
