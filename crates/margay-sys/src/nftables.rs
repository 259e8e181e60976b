//! nftables through libnftables, the library the `nft` binary is built on, loaded at run time.
//!
//! Why not only the binary: every `nft -f` process starts, fetches the table's chains and
//! sets, commits, and on exit closes its netlink socket, and that close waits for the kernel
//! to free the rules the transaction replaced (an RCU grace period). With 2,000 chains the
//! start and the close are about half of a 25 ms update. A context kept open for the life of
//! the agent pays neither; each script is still one transaction, parsed and checked by nft's
//! own code, with nft's own error messages.
//!
//! The library is opened with `dlopen` (`libnftables.so.1`, shipped with the package that
//! ships `nft`), so a machine without it still runs Margay, with the binary.
//!
//! A context's netlink socket is opened when the context is made, in the network namespace
//! of the calling thread, and stays there: [`Nftables::open_in`] makes one for another
//! namespace.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use nix::libc;

use crate::netns::NetNs;

/// The soname of libnftables 1.x (nftables 0.9.3 onwards, where the API below is stable).
const LIBRARY: &str = "libnftables.so.1";
/// `NFT_CTX_DEFAULT`: a context that talks to the kernel.
const NFT_CTX_DEFAULT: u32 = 0;

type CtxNew = unsafe extern "C" fn(flags: u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(ctx: *mut c_void);
type CtxBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(ctx: *mut c_void) -> *const c_char;
type RunCmdFromBuffer = unsafe extern "C" fn(ctx: *mut c_void, buf: *const c_char) -> c_int;

/// The library's entry points Margay uses (`nftables/libnftables.h`).
struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    get_output_buffer: CtxGetBuffer,
    get_error_buffer: CtxGetBuffer,
    run_cmd_from_buffer: RunCmdFromBuffer,
    /// Kept loaded for the life of the process: the pointers above point into it.
    _library: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// libnftables initialises process-wide state (its number library, its symbol tables) in the
/// first `nft_ctx_new` without a lock, so every call into it is made under this one.
static CALLS: Mutex<()> = Mutex::new(());

impl Api {
    fn get() -> Result<&'static Api, NftablesError> {
        API.get_or_init(Api::load)
            .as_ref()
            .map_err(|reason| NftablesError::Unavailable(reason.clone()))
    }

    #[allow(unsafe_code)]
    fn load() -> Result<Api, String> {
        // SAFETY: loading runs the library's initialisers; libnftables' only set up its own
        // globals. The library is never unloaded (it is kept in a static), so the function
        // pointers copied out below stay valid for the life of the process.
        let library = unsafe { libloading::Library::new(LIBRARY) }
            .map_err(|e| format!("loading {LIBRARY}: {e}"))?;
        // SAFETY: each type is the C signature of its symbol in `nftables/libnftables.h`
        // (stable since libnftables 1.0 of nftables 0.9.3).
        unsafe {
            Ok(Api {
                ctx_new: symbol(&library, "nft_ctx_new")?,
                ctx_free: symbol(&library, "nft_ctx_free")?,
                buffer_output: symbol(&library, "nft_ctx_buffer_output")?,
                buffer_error: symbol(&library, "nft_ctx_buffer_error")?,
                get_output_buffer: symbol(&library, "nft_ctx_get_output_buffer")?,
                get_error_buffer: symbol(&library, "nft_ctx_get_error_buffer")?,
                run_cmd_from_buffer: symbol(&library, "nft_run_cmd_from_buffer")?,
                _library: library,
            })
        }
    }
}

/// The function `name` of `library`, as a `T`.
///
/// # Safety
///
/// `T` is the function's C signature.
#[allow(unsafe_code)]
unsafe fn symbol<T: Copy>(library: &libloading::Library, name: &str) -> Result<T, String> {
    let nul_terminated = format!("{name}\0");
    // SAFETY: the caller vouches for `T`.
    unsafe { library.get::<T>(nul_terminated.as_bytes()) }
        .map(|function| *function)
        .map_err(|e| format!("{LIBRARY}: symbol {name}: {e}"))
}

/// What went wrong talking to nftables through the library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftablesError {
    /// The library could not be loaded or a context made: use the `nft` binary instead.
    #[error("libnftables unavailable: {0}")]
    Unavailable(String),
    /// nft refused the script; its message as nft prints it (several lines: the error, the
    /// offending input and a `^^^` marker under it). Nothing of the script was applied.
    #[error("{0}")]
    Refused(String),
}

/// One libnftables context: a netlink socket in one network namespace and nft's cache of
/// what the kernel holds, both kept between scripts.
pub struct Nftables {
    ctx: NonNull<c_void>,
    api: &'static Api,
}

// SAFETY: a context is plain heap state plus a socket, with no tie to the thread that made
// it; `&mut self` on every call means one thread uses it at a time, and `CALLS` serialises
// the library's shared state across contexts.
#[allow(unsafe_code)]
unsafe impl Send for Nftables {}

impl fmt::Debug for Nftables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nftables").finish_non_exhaustive()
    }
}

impl Nftables {
    /// A context in the calling thread's network namespace.
    ///
    /// # Errors
    ///
    /// [`NftablesError::Unavailable`] when the library is missing or refuses to make one.
    #[allow(unsafe_code)]
    pub fn open() -> Result<Nftables, NftablesError> {
        let api = Api::get()?;
        let _calls = lock();
        let fds_before = open_fds();
        // SAFETY: `nft_ctx_new` takes flags by value and returns an owned context or NULL.
        let ctx = NonNull::new(unsafe { (api.ctx_new)(NFT_CTX_DEFAULT) }).ok_or_else(|| {
            NftablesError::Unavailable("nft_ctx_new returned no context".to_string())
        })?;
        // libnftables opens its netlink socket without SOCK_CLOEXEC: without this, every
        // tool the agent runs (iptables-restore, ipset, …) would inherit it.
        for fd in open_fds().difference(&fds_before) {
            close_on_exec(*fd);
        }
        // Wrapped at once, so that it is freed on the error path below too.
        let nftables = Nftables { ctx, api };
        // SAFETY: `ctx` is a live context owned by `nftables`. Buffering makes the library
        // write listings and errors to memory instead of the process's stdout and stderr
        // (the CNI plugin's stdout carries its result).
        let (output, error) = unsafe {
            (
                (api.buffer_output)(ctx.as_ptr()),
                (api.buffer_error)(ctx.as_ptr()),
            )
        };
        if output != 0 || error != 0 {
            return Err(NftablesError::Unavailable(
                "libnftables could not buffer its output".to_string(),
            ));
        }
        Ok(nftables)
    }

    /// A context whose socket lives in the network namespace `netns`.
    ///
    /// # Errors
    ///
    /// [`NftablesError::Unavailable`] as [`Nftables::open`], or when the namespace cannot be
    /// entered.
    pub fn open_in(netns: &NetNs) -> Result<Nftables, NftablesError> {
        netns
            .run(Nftables::open)
            .map_err(|e| NftablesError::Unavailable(e.to_string()))?
    }

    /// Runs an nft script (what `nft -f` reads) as one transaction and returns what nft
    /// printed (a listing for `list …`, nothing for changes).
    ///
    /// # Errors
    ///
    /// [`NftablesError::Refused`] with nft's message; the kernel then holds what it held
    /// before.
    #[allow(unsafe_code)]
    pub fn run(&mut self, script: &str) -> Result<String, NftablesError> {
        let script = CString::new(script)
            .map_err(|_| NftablesError::Refused("the script holds a NUL byte".to_string()))?;
        let _calls = lock();
        let ctx = self.ctx.as_ptr();
        // SAFETY: `ctx` is live and owned by `self`; `script` is a NUL-terminated string that
        // outlives the call, which only reads it.
        let status = unsafe { (self.api.run_cmd_from_buffer)(ctx, script.as_ptr()) };
        // SAFETY: both getters return the context's own NUL-terminated buffers (or NULL),
        // valid until the next call on the context; they are copied before the lock is
        // released. Each read also empties the buffer, so nothing carries over to the next
        // script.
        let (output, error) = unsafe {
            (
                owned((self.api.get_output_buffer)(ctx)),
                owned((self.api.get_error_buffer)(ctx)),
            )
        };
        if status == 0 {
            Ok(output)
        } else if error.trim().is_empty() {
            Err(NftablesError::Refused(format!(
                "nft failed with status {status}"
            )))
        } else {
            Err(NftablesError::Refused(error))
        }
    }
}

impl Drop for Nftables {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let _calls = lock();
        // SAFETY: `ctx` was made by `nft_ctx_new`, is owned by `self` and is not used again.
        unsafe { (self.api.ctx_free)(self.ctx.as_ptr()) }
    }
}

/// The library lock; a panic while holding it leaves nothing half-done on our side.
fn lock() -> std::sync::MutexGuard<'static, ()> {
    CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The descriptors open in this process.
fn open_fds() -> BTreeSet<c_int> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sets FD_CLOEXEC on `fd`. Another thread's descriptor opened meanwhile may be marked
/// too, which changes nothing: Rust opens every descriptor close-on-exec already.
#[allow(unsafe_code)]
fn close_on_exec(fd: c_int) {
    // SAFETY: F_GETFD/F_SETFD read and write only the descriptor's flags, and take no
    // pointer; on a descriptor closed since it was listed they fail with EBADF, ignored.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// A copy of a C string the library owns; NULL is empty.
///
/// # Safety
///
/// `ptr` is NULL or a NUL-terminated string that stays valid for the call.
#[allow(unsafe_code)]
unsafe fn owned(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL, and NUL-terminated and alive per this function's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::is_root;

    /// The library when present; tests that need it say why they skip otherwise.
    fn context() -> Option<Nftables> {
        if !is_root() {
            eprintln!("skipped: needs root (nftables in a new network namespace)");
            return None;
        }
        match Nftables::open() {
            Ok(nftables) => Some(nftables),
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    #[test]
    fn scripts_apply_list_and_refuse_in_a_private_namespace() {
        let name = format!("mgy-libnft-{}", std::process::id());
        let netns = NetNs::create_named(&name).expect("namespace");
        struct Remove(String);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = crate::netns::delete_named(&self.0);
            }
        }
        let _remove = Remove(name);
        let Some(_probe) = context() else { return };
        let mut nft = Nftables::open_in(&netns).expect("context in the namespace");

        let out = nft
            .run("add table ip mgytest\nadd chain ip mgytest c\nadd rule ip mgytest c counter accept")
            .expect("applied");
        assert_eq!(out, "");
        let listing = nft.run("list table ip mgytest").expect("listed");
        assert!(listing.contains("chain c {"), "{listing}");
        // Listed again: the output buffer was emptied by the first read.
        assert_eq!(nft.run("list table ip mgytest").expect("listed"), listing);

        // One transaction: the chain added before the bad rule is not kept.
        let refused = nft
            .run("add chain ip mgytest d\nadd rule ip mgytest c ip saddr @nope drop")
            .expect_err("refused");
        let NftablesError::Refused(message) = &refused else {
            panic!("{refused:?}")
        };
        assert!(message.contains("No such file or directory"), "{message}");
        assert!(!nft
            .run("list table ip mgytest")
            .unwrap()
            .contains("chain d"));

        // The namespace's table is not this one's.
        let here = Nftables::open().unwrap().run("list table ip mgytest");
        assert!(
            here.is_err(),
            "the table was made in the calling thread's namespace"
        );
    }

    #[test]
    fn the_context_socket_is_not_inherited_by_children() {
        let before = open_fds();
        let Some(_nft) = context() else { return };
        let opened: Vec<c_int> = open_fds().difference(&before).copied().collect();
        assert!(!opened.is_empty(), "the context holds a socket");
        for fd in opened {
            let flags =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            // `flags:` is octal; O_CLOEXEC is 02000000.
            let Some(flags) = flags
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            else {
                continue; // closed meanwhile by another test's thread
            };
            assert_ne!(flags & 0o2000000, 0, "fd {fd} is close-on-exec");
        }
    }

    #[test]
    fn a_script_with_a_nul_byte_is_refused_before_nft_sees_it() {
        let Some(mut nft) = context() else { return };
        assert_eq!(
            nft.run("list tables\0"),
            Err(NftablesError::Refused(
                "the script holds a NUL byte".to_string()
            ))
        );
    }
}
