use std::io;

use nix::libc;

/// An operation on a namespace, link, address, route, neighbour or sysctl failed.
///
/// `Display` is one complete line: the operation and its object, then the cause, e.g.
/// `creating veth mgy1234 (peer eth0): File exists (os error 17)`. The cause is part of that
/// line rather than a `source()`, so error chains do not print it twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A syscall failed, or the kernel refused a netlink request. `extack` is the kernel's own
    /// explanation (netlink extended ACK), when it gave one.
    #[error("{op}: {error}{}", extack_suffix(.extack))]
    Os {
        op: String,
        error: io::Error,
        extack: Option<String>,
    },
    /// The object is not what the operation needs (e.g. a path that is not a network
    /// namespace), or the kernel's reply could not be understood.
    #[error("{op}: {reason}")]
    Invalid { op: String, reason: String },
}

fn extack_suffix(extack: &Option<String>) -> String {
    extack
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

impl Error {
    pub(crate) fn os(op: impl Into<String>, error: impl Into<io::Error>) -> Self {
        Error::Os {
            op: op.into(),
            error: error.into(),
            extack: None,
        }
    }

    pub(crate) fn invalid(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// The errno behind this error, if a syscall or the kernel reported one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { error, .. } => error.raw_os_error(),
            Error::Invalid { .. } => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.raw_os_error() == Some(libc::EEXIST)
    }

    /// There is no such netns, link, route, address or sysctl (ENOENT, ENODEV, ESRCH, ENXIO).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::ENXIO)
        )
    }

    /// The kernel lacks the feature: a protocol or address family it was built without
    /// (EAFNOSUPPORT, EPROTONOSUPPORT), or an operation or link type it does not know
    /// (EOPNOTSUPP; an unknown link type, such as ipip without its module, is reported as
    /// "Unknown device type" with that errno).
    pub fn is_not_supported(&self) -> bool {
        matches!(
            self.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_operation_and_cause() {
        let e = Error::os(
            "creating veth mgy1234 (peer eth0)",
            io::Error::from_raw_os_error(libc::EEXIST),
        );
        assert_eq!(
            e.to_string(),
            "creating veth mgy1234 (peer eth0): File exists (os error 17)"
        );
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn display_appends_kernel_explanation() {
        let e = Error::Os {
            op: "adding route 0.0.0.0/0 via 10.0.0.1".into(),
            error: io::Error::from_raw_os_error(libc::ENETUNREACH),
            extack: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "adding route 0.0.0.0/0 via 10.0.0.1: Network is unreachable (os error 101): \
             Nexthop has invalid gateway"
        );
    }

    #[test]
    fn not_found_covers_every_missing_object_errno() {
        for errno in [libc::ENOENT, libc::ENODEV, libc::ESRCH, libc::ENXIO] {
            let e = Error::os("x", io::Error::from_raw_os_error(errno));
            assert!(e.is_not_found(), "errno {errno}");
            assert!(!e.is_exists());
        }
        let e = Error::invalid("opening netns /tmp/x", "not a network namespace");
        assert!(!e.is_not_found() && !e.is_exists() && !e.is_not_supported());
        assert_eq!(
            e.to_string(),
            "opening netns /tmp/x: not a network namespace"
        );
    }

    #[test]
    fn not_supported_covers_missing_kernel_features() {
        for errno in [libc::EOPNOTSUPP, libc::EAFNOSUPPORT, libc::EPROTONOSUPPORT] {
            let e = Error::Os {
                op: "creating ipip tunl1".into(),
                error: io::Error::from_raw_os_error(errno),
                extack: Some("Unknown device type".into()),
            };
            assert!(e.is_not_supported(), "errno {errno}");
            assert!(!e.is_not_found() && !e.is_exists());
        }
        assert!(!Error::os("x", io::Error::from_raw_os_error(libc::EINVAL)).is_not_supported());
    }
}
