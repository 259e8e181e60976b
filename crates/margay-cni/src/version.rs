//! CNI spec versions: which ones Margay speaks, and which verbs each allows.

use std::fmt;
use std::str::FromStr;

/// A CNI spec version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u16, u16, u16);

pub const V0_3_0: Version = Version(0, 3, 0);
pub const V0_3_1: Version = Version(0, 3, 1);
pub const V0_4_0: Version = Version(0, 4, 0);
pub const V1_0_0: Version = Version(1, 0, 0);
pub const V1_1_0: Version = Version(1, 1, 0);

/// Every version this plugin accepts in a config and can render results in, oldest first.
pub const SUPPORTED: [Version; 5] = [V0_3_0, V0_3_1, V0_4_0, V1_0_0, V1_1_0];

/// The newest version, used where no version was asked for (VERSION output, early errors).
pub const LATEST: Version = V1_1_0;

impl Version {
    pub fn is_supported(self) -> bool {
        SUPPORTED.contains(&self)
    }

    /// CHECK arrived in 0.4.0.
    pub fn allows_check(self) -> bool {
        self >= V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn allows_gc_and_status(self) -> bool {
        self >= V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ip_version_field(self) -> bool {
        self < V1_0_0
    }

    /// The newest supported version in a conflist's `cniVersions`.
    pub fn newest_supported<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<Version> {
        candidates
            .into_iter()
            .filter_map(|v| v.parse::<Version>().ok())
            .filter(|v| v.is_supported())
            .max()
    }

    pub fn supported_list() -> Vec<String> {
        SUPPORTED.iter().map(Version::to_string).collect()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a CNI version (MAJOR.MINOR.PATCH)");
        let mut parts = s.split('.').map(|p| p.parse::<u16>().map_err(|_| bad()));
        let v = Version(
            parts.next().ok_or_else(bad)??,
            parts.next().ok_or_else(bad)??,
            parts.next().unwrap_or(Ok(0))?,
        );
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!("0.3.1".parse::<Version>().unwrap(), V0_3_1);
        assert_eq!("1.1".parse::<Version>().unwrap(), V1_1_0);
        assert!("1.x.0".parse::<Version>().is_err());
        assert!("1.0.0.0".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
        assert!(V0_4_0 < V1_0_0);
        assert!(!"0.2.0".parse::<Version>().unwrap().is_supported());
        assert!(!"2.0.0".parse::<Version>().unwrap().is_supported());
    }

    #[test]
    fn verbs_by_version() {
        assert!(!V0_3_1.allows_check());
        assert!(V0_4_0.allows_check());
        assert!(!V1_0_0.allows_gc_and_status());
        assert!(V1_1_0.allows_gc_and_status());
        assert!(V0_4_0.ip_version_field());
        assert!(!V1_0_0.ip_version_field());
    }

    #[test]
    fn newest_supported_of_a_list() {
        assert_eq!(
            Version::newest_supported(["0.3.1", "1.0.0", "9.9.9", "junk"]),
            Some(V1_0_0)
        );
        assert_eq!(Version::newest_supported(["0.1.0"]), None);
    }
}
