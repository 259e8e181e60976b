//! OPEN message and capabilities (RFC 5492).

use std::net::Ipv4Addr;

use super::{AddressFamily, EncodeError, OpenError, Reader, AS_TRANS};

const PARAM_CAPABILITIES: u8 = 2;
const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;

/// OPEN. `my_as` is the 2-octet wire field; [`Open::asn`] gives the real ASN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

/// A capability advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol(AddressFamily),
    RouteRefresh,
    GracefulRestart(GracefulRestart),
    FourOctetAs(u32),
    /// Any other capability (or a multiprotocol one for a family we do not
    /// carry), kept as it came.
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

/// Graceful restart capability (RFC 4724). Tuples for families we do not
/// carry are dropped on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: the sender has restarted.
    pub restart_state: bool,
    /// Seconds; only 12 bits go on the wire.
    pub restart_time: u16,
    /// Families, each with the "forwarding state preserved" bit.
    pub families: Vec<(AddressFamily, bool)>,
}

impl Open {
    /// An OPEN for `asn`, putting AS_TRANS in `my_as` when it does not fit
    /// and advertising the 4-octet ASN capability first.
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_id: Ipv4Addr,
        mut capabilities: Vec<Capability>,
    ) -> Self {
        capabilities.insert(0, Capability::FourOctetAs(asn));
        Open {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    /// The sender's ASN: the 4-octet capability's if present.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// Advertised families; IPv4 unicast alone when no multiprotocol
    /// capability is present (RFC 4760 §8).
    pub fn families(&self) -> Vec<AddressFamily> {
        let mut fams: Vec<_> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        let any_mp = self.capabilities.iter().any(|c| {
            matches!(c, Capability::Multiprotocol(_))
                || matches!(
                    c,
                    Capability::Unknown {
                        code: CAP_MULTIPROTOCOL,
                        ..
                    }
                )
        });
        if !any_mp {
            fams.push(AddressFamily::Ipv4Unicast);
        }
        fams.sort();
        fams.dedup();
        fams
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }
}

/// Checks done on every OPEN, whether decoded or built (RFC 4271 §6.2,
/// RFC 7607 for AS 0).
pub(crate) fn validate(open: &Open) -> Result<(), OpenError> {
    if open.my_as == 0 || open.four_octet_as() == Some(0) {
        return Err(OpenError::BadPeerAs(open.asn()));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(OpenError::UnacceptableHoldTime(open.hold_time));
    }
    if open.bgp_id.is_unspecified() {
        return Err(OpenError::BadBgpIdentifier(open.bgp_id));
    }
    Ok(())
}

pub(super) fn decode(body: &[u8]) -> Result<Open, OpenError> {
    let mut r = Reader::new(body);
    let version = r.u8().ok_or(OpenError::Malformed)?;
    if version != 4 {
        return Err(OpenError::UnsupportedVersion(version));
    }
    let my_as = r.u16().ok_or(OpenError::Malformed)?;
    let hold_time = r.u16().ok_or(OpenError::Malformed)?;
    let bgp_id = Ipv4Addr::from(r.u32().ok_or(OpenError::Malformed)?);
    let opt_len = r.u8().ok_or(OpenError::Malformed)?;
    if usize::from(opt_len) != r.remaining() {
        return Err(OpenError::Malformed);
    }
    let mut capabilities = Vec::new();
    while !r.is_empty() {
        let ptype = r.u8().ok_or(OpenError::Malformed)?;
        let plen = r.u8().ok_or(OpenError::Malformed)?;
        let value = r.bytes(usize::from(plen)).ok_or(OpenError::Malformed)?;
        if ptype != PARAM_CAPABILITIES {
            return Err(OpenError::UnsupportedOptionalParameter(ptype));
        }
        let mut c = Reader::new(value);
        while !c.is_empty() {
            let code = c.u8().ok_or(OpenError::Malformed)?;
            let len = c.u8().ok_or(OpenError::Malformed)?;
            let value = c.bytes(usize::from(len)).ok_or(OpenError::Malformed)?;
            capabilities.push(decode_capability(code, value)?);
        }
    }
    let open = Open {
        my_as,
        hold_time,
        bgp_id,
        capabilities,
    };
    validate(&open)?;
    Ok(open)
}

fn decode_capability(code: u8, value: &[u8]) -> Result<Capability, OpenError> {
    let mut r = Reader::new(value);
    Ok(match code {
        CAP_MULTIPROTOCOL => {
            if value.len() != 4 {
                return Err(OpenError::Malformed);
            }
            match AddressFamily::from_afi_safi(u16::from_be_bytes([value[0], value[1]]), value[3]) {
                Some(f) => Capability::Multiprotocol(f),
                None => Capability::Unknown {
                    code,
                    value: value.to_vec(),
                },
            }
        }
        CAP_ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
        CAP_GRACEFUL_RESTART if value.len() >= 2 && (value.len() - 2).is_multiple_of(4) => {
            let head = r.u16().ok_or(OpenError::Malformed)?;
            let mut families = Vec::new();
            while let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) {
                if let Some(f) = AddressFamily::from_afi_safi(afi, safi) {
                    families.push((f, flags & 0x80 != 0));
                }
            }
            Capability::GracefulRestart(GracefulRestart {
                restart_state: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families,
            })
        }
        CAP_FOUR_OCTET_AS if value.len() == 4 => {
            Capability::FourOctetAs(r.u32().ok_or(OpenError::Malformed)?)
        }
        CAP_ROUTE_REFRESH | CAP_GRACEFUL_RESTART | CAP_FOUR_OCTET_AS => {
            return Err(OpenError::Malformed)
        }
        _ => Capability::Unknown {
            code,
            value: value.to_vec(),
        },
    })
}

/// Appends one capability (code, length, value).
pub(crate) fn encode_capability(cap: &Capability, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (code, value): (u8, Vec<u8>) = match cap {
        Capability::Multiprotocol(f) => {
            let (afi, safi) = f.afi_safi();
            let [a, b] = afi.to_be_bytes();
            (CAP_MULTIPROTOCOL, vec![a, b, 0, safi])
        }
        Capability::RouteRefresh => (CAP_ROUTE_REFRESH, vec![]),
        Capability::GracefulRestart(gr) => {
            let head = (u16::from(gr.restart_state) << 15) | (gr.restart_time & 0x0fff);
            let mut v = head.to_be_bytes().to_vec();
            for (f, fwd) in &gr.families {
                let (afi, safi) = f.afi_safi();
                v.extend_from_slice(&afi.to_be_bytes());
                v.push(safi);
                v.push(if *fwd { 0x80 } else { 0 });
            }
            (CAP_GRACEFUL_RESTART, v)
        }
        Capability::FourOctetAs(asn) => (CAP_FOUR_OCTET_AS, asn.to_be_bytes().to_vec()),
        Capability::Unknown { code, value } => (*code, value.clone()),
    };
    let len = u8::try_from(value.len()).map_err(|_| EncodeError::TooLong(value.len()))?;
    out.push(code);
    out.push(len);
    out.extend_from_slice(&value);
    Ok(())
}

pub(super) fn encode(open: &Open, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.push(4);
    out.extend_from_slice(&open.my_as.to_be_bytes());
    out.extend_from_slice(&open.hold_time.to_be_bytes());
    out.extend_from_slice(&open.bgp_id.octets());
    // All capabilities go in as few Capabilities parameters as fit in 255
    // bytes each, as BIRD does.
    let mut params: Vec<Vec<u8>> = Vec::new();
    for cap in &open.capabilities {
        let mut one = Vec::new();
        encode_capability(cap, &mut one)?;
        match params.last_mut() {
            Some(p) if p.len() + one.len() <= 255 => p.extend_from_slice(&one),
            _ => params.push(one),
        }
    }
    let opt_len: usize = params.iter().map(|p| p.len() + 2).sum();
    out.push(u8::try_from(opt_len).map_err(|_| EncodeError::TooLong(opt_len))?);
    for p in params {
        out.push(PARAM_CAPABILITIES);
        // A parameter holding one capability with a long value can still
        // exceed 255 bytes.
        out.push(u8::try_from(p.len()).map_err(|_| EncodeError::TooLong(p.len()))?);
        out.extend_from_slice(&p);
    }
    Ok(())
}
