//! Small values of a policy program (margay-policy's intermediate representation), for the
//! renderers' unit tests.

use ipnet::IpNet;
use margay_api::Action;
use margay_policy::program::{EndMatch, Matches, ProgramRule};

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Matches that match every packet.
pub fn no_matches() -> Matches {
    Matches {
        ip_version: None,
        protocol: None,
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source: EndMatch::default(),
        destination: EndMatch::default(),
    }
}

/// Rule `index` with the comment `rule INDEX`.
pub fn rule(index: usize, action: Action, matches: Matches) -> ProgramRule {
    ProgramRule {
        index,
        action,
        comment: format!("rule {index}"),
        matches,
    }
}
