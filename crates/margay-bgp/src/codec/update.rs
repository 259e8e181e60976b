//! UPDATE message and path attributes, with RFC 7606 error handling.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{AddressFamily, Context, DecodeError, EncodeError, Reader, UpdateError, AS_TRANS};

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_PARTIAL: u8 = 0x20;
const FLAG_EXTENDED: u8 = 0x10;
const WELL_KNOWN: u8 = FLAG_TRANSITIVE;
const OPT_TRANS: u8 = FLAG_OPTIONAL | FLAG_TRANSITIVE;
const OPT_NON_TRANS: u8 = FLAG_OPTIONAL;

const ORIGIN: u8 = 1;
const AS_PATH: u8 = 2;
const NEXT_HOP: u8 = 3;
const MED: u8 = 4;
const LOCAL_PREF: u8 = 5;
const ATOMIC_AGGREGATE: u8 = 6;
const AGGREGATOR: u8 = 7;
const COMMUNITIES: u8 = 8;
const ORIGINATOR_ID: u8 = 9;
const CLUSTER_LIST: u8 = 10;
const MP_REACH: u8 = 14;
const MP_UNREACH: u8 = 15;
const AS4_PATH: u8 = 17;
const AS4_AGGREGATOR: u8 = 18;

const SEG_SET: u8 = 1;
const SEG_SEQUENCE: u8 = 2;

/// UPDATE. IPv4 unicast travels in `withdrawn`/`nlri`, IPv6 unicast in the
/// multiprotocol attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: PathAttributes,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub nlri: Vec<Ipv4Net>,
}

/// The path attributes other than MP_REACH/MP_UNREACH. `None`/empty means
/// absent. AS4_PATH and AS4_AGGREGATOR never appear here: they are merged
/// into `as_path`/`aggregator` on decode and produced on encode as needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognized optional transitive attributes, sorted by type code.
    pub unknown: Vec<RawAttribute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Set(Vec<u32>),
    Sequence(Vec<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// An attribute kept as it came. `flags` never has the extended-length bit:
/// the encoder chooses that.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// MP_REACH_NLRI for IPv6 unicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub next_hop: Ipv6Addr,
    pub link_local: Option<Ipv6Addr>,
    pub nlri: Vec<Ipv6Net>,
}

/// MP_UNREACH_NLRI for IPv6 unicast.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MpUnreach {
    pub withdrawn: Vec<Ipv6Net>,
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2).
    pub fn end_of_rib(family: AddressFamily) -> Self {
        match family {
            AddressFamily::Ipv4Unicast => Update::default(),
            AddressFamily::Ipv6Unicast => Update {
                mp_unreach: Some(MpUnreach::default()),
                ..Update::default()
            },
        }
    }

    /// The family this UPDATE is the End-of-RIB marker of, if it is one.
    pub fn end_of_rib_family(&self) -> Option<AddressFamily> {
        let bare = self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && self.mp_reach.is_none()
            && self.attributes == PathAttributes::default();
        match &self.mp_unreach {
            _ if !bare => None,
            None => Some(AddressFamily::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(AddressFamily::Ipv6Unicast),
            Some(_) => None,
        }
    }
}

impl AsPath {
    pub fn sequence(asns: Vec<u32>) -> Self {
        AsPath {
            segments: if asns.is_empty() {
                vec![]
            } else {
                vec![AsSegment::Sequence(asns)]
            },
        }
    }

    /// Path length for best-path selection: an AS_SET counts as one.
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Set(_) => 1,
                AsSegment::Sequence(v) => v.len(),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Set(v) | AsSegment::Sequence(v) => v.contains(&asn),
        })
    }

    /// The neighbouring AS the route came from (first ASN of a leading
    /// AS_SEQUENCE), used to scope MED comparison.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn`, opening a new segment when the first is not a
    /// sequence or is full (255 ASNs).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() < 255 => v.insert(0, asn),
            _ => self.segments.insert(0, AsSegment::Sequence(vec![asn])),
        }
    }

    fn has_four_octet(&self) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Set(v) | AsSegment::Sequence(v) => v.iter().any(|&a| a > 0xffff),
        })
    }
}

/// Outcome of one attribute that is malformed.
enum Fault {
    /// RFC 7606 session reset: the UPDATE is rejected with this error.
    Reset(UpdateError),
    /// RFC 7606 treat-as-withdraw.
    Withdraw(UpdateError),
    /// RFC 7606 attribute discard.
    Discard(UpdateError),
}

pub(super) fn decode(
    body: &[u8],
    ctx: &Context,
    recovered: &mut Vec<UpdateError>,
) -> Result<Update, DecodeError> {
    let mut r = Reader::new(body);
    let wlen = r.u16().ok_or(UpdateError::MalformedAttributeList)?;
    let wbuf = r
        .bytes(usize::from(wlen))
        .ok_or(UpdateError::MalformedAttributeList)?;
    let alen = r.u16().ok_or(UpdateError::MalformedAttributeList)?;
    let abuf = r
        .bytes(usize::from(alen))
        .ok_or(UpdateError::MalformedAttributeList)?;
    let nbuf = r.bytes(r.remaining()).unwrap_or_default();
    let withdrawn = parse_v4_prefixes(wbuf).ok_or(UpdateError::InvalidNetworkField)?;
    let nlri = parse_v4_prefixes(nbuf).ok_or(UpdateError::InvalidNetworkField)?;

    let mut update = Update {
        withdrawn,
        nlri,
        ..Update::default()
    };
    let mut withdraw_reason: Option<UpdateError> = None;
    let mut as4_path: Option<AsPath> = None;
    let mut as4_aggregator: Option<Aggregator> = None;
    let mut seen = [false; 256];
    let mut a = Reader::new(abuf);
    while !a.is_empty() {
        let attr_start = abuf.len() - a.remaining();
        let header = a
            .bytes(2)
            .filter(|h| a.remaining() > usize::from(h[0] & FLAG_EXTENDED != 0));
        let Some(header) = header else {
            // Too few bytes left for an attribute header (RFC 7606 §4).
            withdraw_reason.get_or_insert(UpdateError::MalformedAttributeList);
            break;
        };
        let (flags, type_code) = (header[0], header[1]);
        let len = if flags & FLAG_EXTENDED != 0 {
            a.u16()
        } else {
            a.u8().map(u16::from)
        };
        let len = usize::from(len.unwrap_or_default());
        let Some(value) = a.bytes(len) else {
            withdraw_reason
                .get_or_insert(UpdateError::AttributeLength(abuf[attr_start..].to_vec()));
            break;
        };
        let raw = &abuf[attr_start..abuf.len() - a.remaining()];
        if std::mem::replace(&mut seen[usize::from(type_code)], true) {
            if type_code == MP_REACH || type_code == MP_UNREACH {
                return Err(UpdateError::MalformedAttributeList.into());
            }
            // Later duplicates are discarded (RFC 7606 §3.g).
            continue;
        }
        let fault = decode_attribute(
            flags,
            type_code,
            value,
            raw,
            ctx,
            &mut update,
            &mut as4_path,
            &mut as4_aggregator,
        );
        match fault {
            None => {}
            Some(Fault::Reset(e)) => return Err(e.into()),
            Some(Fault::Withdraw(e)) => {
                if withdraw_reason.is_none() {
                    withdraw_reason = Some(e);
                } else {
                    recovered.push(e);
                }
            }
            Some(Fault::Discard(e)) => recovered.push(e),
        }
    }
    update.attributes.unknown.sort_by_key(|u| u.type_code);

    if !ctx.four_octet_as {
        merge_as4(&mut update.attributes, as4_path, as4_aggregator);
    }

    let reach = !update.nlri.is_empty() || update.mp_reach.is_some();
    if reach && withdraw_reason.is_none() {
        let attrs = &update.attributes;
        let missing = if attrs.origin.is_none() {
            Some(ORIGIN)
        } else if attrs.as_path.is_none() {
            Some(AS_PATH)
        } else if attrs.next_hop.is_none() && !update.nlri.is_empty() {
            Some(NEXT_HOP)
        } else {
            None
        };
        withdraw_reason = missing.map(UpdateError::MissingWellKnown);
    }

    if let Some(reason) = withdraw_reason {
        recovered.insert(0, reason);
        let mut withdrawn = std::mem::take(&mut update.withdrawn);
        withdrawn.append(&mut update.nlri);
        let mut v6 = update
            .mp_unreach
            .take()
            .map(|u| u.withdrawn)
            .unwrap_or_default();
        if let Some(reach) = update.mp_reach.take() {
            v6.extend(reach.nlri);
        }
        let had_v6 = !v6.is_empty();
        update = Update {
            withdrawn,
            mp_unreach: had_v6.then_some(MpUnreach { withdrawn: v6 }),
            ..Update::default()
        };
    }
    Ok(update)
}

#[allow(clippy::too_many_arguments)]
fn decode_attribute(
    flags: u8,
    type_code: u8,
    value: &[u8],
    raw: &[u8],
    ctx: &Context,
    update: &mut Update,
    as4_path: &mut Option<AsPath>,
    as4_aggregator: &mut Option<Aggregator>,
) -> Option<Fault> {
    let expected = match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => WELL_KNOWN,
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH | MP_UNREACH => OPT_NON_TRANS,
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => OPT_TRANS,
        _ => {
            if flags & FLAG_OPTIONAL == 0 {
                return Some(Fault::Reset(UpdateError::UnrecognizedWellKnown(
                    raw.to_vec(),
                )));
            }
            // Optional non-transitive attributes we do not know are quietly
            // ignored; transitive ones are passed on (RFC 4271 §5).
            if flags & FLAG_TRANSITIVE != 0 {
                update.attributes.unknown.push(RawAttribute {
                    flags: flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE | FLAG_PARTIAL),
                    type_code,
                    value: value.to_vec(),
                });
            }
            return None;
        }
    };
    let raw_vec = || raw.to_vec();
    if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected {
        let e = UpdateError::AttributeFlags(raw_vec());
        return Some(match type_code {
            MP_REACH | MP_UNREACH => Fault::Reset(e),
            ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => Fault::Discard(e),
            _ => Fault::Withdraw(e),
        });
    }
    let attrs = &mut update.attributes;
    let u32_of = |v: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(v.try_into().ok()?)) };
    let length_error = || Some(Fault::Withdraw(UpdateError::AttributeLength(raw.to_vec())));
    match type_code {
        ORIGIN => {
            let [o] = value else { return length_error() };
            attrs.origin = Some(match o {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => return Some(Fault::Withdraw(UpdateError::InvalidOrigin(raw_vec()))),
            });
        }
        AS_PATH => match parse_as_path(value, ctx.four_octet_as) {
            Some(p) => attrs.as_path = Some(p),
            None => return Some(Fault::Withdraw(UpdateError::MalformedAsPath)),
        },
        NEXT_HOP => {
            let Some(nh) = u32_of(value).map(Ipv4Addr::from) else {
                return length_error();
            };
            if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                return Some(Fault::Withdraw(UpdateError::InvalidNextHop(raw_vec())));
            }
            attrs.next_hop = Some(nh);
        }
        MED => match u32_of(value) {
            Some(v) => attrs.med = Some(v),
            None => return length_error(),
        },
        LOCAL_PREF => match u32_of(value) {
            Some(v) => attrs.local_pref = Some(v),
            None => return length_error(),
        },
        ATOMIC_AGGREGATE => {
            if !value.is_empty() {
                return Some(Fault::Discard(UpdateError::AttributeLength(raw_vec())));
            }
            attrs.atomic_aggregate = true;
        }
        AGGREGATOR => match parse_aggregator(value, ctx.four_octet_as) {
            Some(agg) => attrs.aggregator = Some(agg),
            None => return Some(Fault::Discard(UpdateError::AttributeLength(raw_vec()))),
        },
        COMMUNITIES => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return length_error();
            }
            attrs.communities = value.chunks_exact(4).filter_map(u32_of).collect();
        }
        ORIGINATOR_ID => match u32_of(value) {
            Some(v) => attrs.originator_id = Some(Ipv4Addr::from(v)),
            None => return length_error(),
        },
        CLUSTER_LIST => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return length_error();
            }
            attrs.cluster_list = value
                .chunks_exact(4)
                .filter_map(u32_of)
                .map(Ipv4Addr::from)
                .collect();
        }
        MP_REACH => {
            let Some(parsed) = parse_mp_reach(value) else {
                return Some(Fault::Reset(UpdateError::OptionalAttribute(raw_vec())));
            };
            // A family we do not carry was not negotiated: ignore it.
            update.mp_reach = parsed;
        }
        MP_UNREACH => {
            let Some(parsed) = parse_mp_unreach(value) else {
                return Some(Fault::Reset(UpdateError::OptionalAttribute(raw_vec())));
            };
            update.mp_unreach = parsed;
        }
        AS4_PATH => match parse_as_path(value, true) {
            Some(p) => *as4_path = Some(p),
            None => return Some(Fault::Discard(UpdateError::MalformedAsPath)),
        },
        _ => match parse_aggregator(value, true) {
            // AS4_AGGREGATOR
            Some(agg) => *as4_aggregator = Some(agg),
            None => return Some(Fault::Discard(UpdateError::AttributeLength(raw_vec()))),
        },
    }
    None
}

/// Rebuilds 4-octet AS_PATH/AGGREGATOR from a 2-octet speaker's attributes
/// (RFC 6793 §4.2.3).
fn merge_as4(
    attrs: &mut PathAttributes,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<Aggregator>,
) {
    if let Some(agg) = &attrs.aggregator {
        if agg.asn != u32::from(AS_TRANS) {
            return;
        }
        if let Some(agg4) = as4_aggregator {
            attrs.aggregator = Some(agg4);
        }
    }
    let (Some(path), Some(as4)) = (attrs.as_path.as_mut(), as4_path) else {
        return;
    };
    let (n, n4) = (path.len(), as4.len());
    if n < n4 {
        return;
    }
    let mut keep = n - n4;
    let mut merged = Vec::new();
    for seg in std::mem::take(&mut path.segments) {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Set(v) => {
                keep -= 1;
                merged.push(AsSegment::Set(v));
            }
            AsSegment::Sequence(mut v) => {
                v.truncate(keep);
                keep -= v.len();
                merged.push(AsSegment::Sequence(v));
            }
        }
    }
    let mut as4 = as4.segments.into_iter();
    // Join the kept head and the AS4_PATH into one sequence where they meet.
    if let Some(first) = as4.next() {
        match (merged.last_mut(), first) {
            (Some(AsSegment::Sequence(a)), AsSegment::Sequence(b)) if a.len() + b.len() <= 255 => {
                a.extend(b)
            }
            (_, seg) => merged.push(seg),
        }
    }
    merged.extend(as4);
    path.segments = merged;
}

fn parse_as_path(value: &[u8], four: bool) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(if four { r.u32()? } else { u32::from(r.u16()?) });
        }
        segments.push(match kind {
            SEG_SET => AsSegment::Set(asns),
            SEG_SEQUENCE => AsSegment::Sequence(asns),
            _ => return None,
        });
    }
    Some(AsPath { segments })
}

fn parse_aggregator(value: &[u8], four: bool) -> Option<Aggregator> {
    let mut r = Reader::new(value);
    let asn = if four { r.u32()? } else { u32::from(r.u16()?) };
    let address = Ipv4Addr::from(r.u32()?);
    r.is_empty().then_some(Aggregator { asn, address })
}

/// `Some(None)`: well formed but for a family we do not carry.
fn parse_mp_reach(value: &[u8]) -> Option<Option<MpReach>> {
    let mut r = Reader::new(value);
    let afi = r.u16()?;
    let safi = r.u8()?;
    let nh_len = r.u8()?;
    let nh = r.bytes(usize::from(nh_len))?;
    r.u8()?; // reserved
    if AddressFamily::from_afi_safi(afi, safi) != Some(AddressFamily::Ipv6Unicast) {
        return Some(None);
    }
    let addr =
        |b: &[u8]| -> Option<Ipv6Addr> { Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?)) };
    let (next_hop, link_local) = match nh.len() {
        16 => (addr(nh)?, None),
        32 => (addr(&nh[..16])?, Some(addr(&nh[16..])?)),
        _ => return None,
    };
    let nlri = parse_v6_prefixes(r.bytes(r.remaining())?)?;
    Some(Some(MpReach {
        next_hop,
        link_local,
        nlri,
    }))
}

fn parse_mp_unreach(value: &[u8]) -> Option<Option<MpUnreach>> {
    let mut r = Reader::new(value);
    let afi = r.u16()?;
    let safi = r.u8()?;
    if AddressFamily::from_afi_safi(afi, safi) != Some(AddressFamily::Ipv6Unicast) {
        return Some(None);
    }
    let withdrawn = parse_v6_prefixes(r.bytes(r.remaining())?)?;
    Some(Some(MpUnreach { withdrawn }))
}

/// Prefixes as (length, significant octets); host bits are cleared.
fn parse_prefixes<const N: usize>(buf: &[u8]) -> Option<Vec<([u8; N], u8)>> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = r.u8()?;
        if usize::from(len) > N * 8 {
            return None;
        }
        let bytes = r.bytes(usize::from(len).div_ceil(8))?;
        let mut addr = [0u8; N];
        addr[..bytes.len()].copy_from_slice(bytes);
        out.push((addr, len));
    }
    Some(out)
}

fn parse_v4_prefixes(buf: &[u8]) -> Option<Vec<Ipv4Net>> {
    parse_prefixes::<4>(buf)?
        .into_iter()
        .map(|(a, l)| Ipv4Net::new(a.into(), l).ok().map(|n| n.trunc()))
        .collect()
}

fn parse_v6_prefixes(buf: &[u8]) -> Option<Vec<Ipv6Net>> {
    parse_prefixes::<16>(buf)?
        .into_iter()
        .map(|(a, l)| Ipv6Net::new(a.into(), l).ok().map(|n| n.trunc()))
        .collect()
}

/// Bytes one prefix takes in an NLRI field.
pub(crate) fn prefix_len_on_wire(prefix_len: u8) -> usize {
    1 + usize::from(prefix_len).div_ceil(8)
}

fn put_prefix(out: &mut Vec<u8>, octets: &[u8], len: u8) {
    out.push(len);
    out.extend_from_slice(&octets[..usize::from(len).div_ceil(8)]);
}

fn put_attr(out: &mut Vec<u8>, flags: u8, type_code: u8, value: &[u8]) -> Result<(), EncodeError> {
    if value.len() > 255 {
        let len = u16::try_from(value.len()).map_err(|_| EncodeError::TooLong(value.len()))?;
        out.extend_from_slice(&[flags | FLAG_EXTENDED, type_code]);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, type_code, value.len() as u8]);
    }
    out.extend_from_slice(value);
    Ok(())
}

fn as_path_value(path: &AsPath, four: bool) -> Result<Vec<u8>, EncodeError> {
    let mut v = Vec::new();
    for seg in &path.segments {
        let (kind, asns) = match seg {
            AsSegment::Set(a) => (SEG_SET, a),
            AsSegment::Sequence(a) => (SEG_SEQUENCE, a),
        };
        let count = u8::try_from(asns.len())
            .ok()
            .filter(|&c| c > 0)
            .ok_or(EncodeError::SegmentTooLong(asns.len()))?;
        v.extend_from_slice(&[kind, count]);
        for &asn in asns {
            if four {
                v.extend_from_slice(&asn.to_be_bytes());
            } else {
                v.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
            }
        }
    }
    Ok(v)
}

fn aggregator_value(agg: &Aggregator, four: bool) -> Vec<u8> {
    let mut v = if four {
        agg.asn.to_be_bytes().to_vec()
    } else {
        u16::try_from(agg.asn)
            .unwrap_or(AS_TRANS)
            .to_be_bytes()
            .to_vec()
    };
    v.extend_from_slice(&agg.address.octets());
    v
}

/// Appends the path attributes of `update`, in type-code order.
pub(crate) fn encode_attributes(
    update: &Update,
    ctx: &Context,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let a = &update.attributes;
    let four = ctx.four_octet_as;
    let mut unknown: Vec<&RawAttribute> = a.unknown.iter().collect();
    unknown.sort_by_key(|u| u.type_code);
    let mut unknown = unknown.into_iter().peekable();
    let mut known: Vec<(u8, u8, Vec<u8>)> = Vec::new();
    if let Some(o) = a.origin {
        known.push((WELL_KNOWN, ORIGIN, vec![o as u8]));
    }
    if let Some(p) = &a.as_path {
        known.push((WELL_KNOWN, AS_PATH, as_path_value(p, four)?));
    }
    if let Some(nh) = a.next_hop {
        known.push((WELL_KNOWN, NEXT_HOP, nh.octets().to_vec()));
    }
    if let Some(m) = a.med {
        known.push((OPT_NON_TRANS, MED, m.to_be_bytes().to_vec()));
    }
    if let Some(lp) = a.local_pref {
        known.push((WELL_KNOWN, LOCAL_PREF, lp.to_be_bytes().to_vec()));
    }
    if a.atomic_aggregate {
        known.push((WELL_KNOWN, ATOMIC_AGGREGATE, vec![]));
    }
    if let Some(agg) = &a.aggregator {
        known.push((OPT_TRANS, AGGREGATOR, aggregator_value(agg, four)));
    }
    if !a.communities.is_empty() {
        known.push((
            OPT_TRANS,
            COMMUNITIES,
            a.communities.iter().flat_map(|c| c.to_be_bytes()).collect(),
        ));
    }
    if let Some(id) = a.originator_id {
        known.push((OPT_NON_TRANS, ORIGINATOR_ID, id.octets().to_vec()));
    }
    if !a.cluster_list.is_empty() {
        known.push((
            OPT_NON_TRANS,
            CLUSTER_LIST,
            a.cluster_list.iter().flat_map(|c| c.octets()).collect(),
        ));
    }
    if let Some(reach) = &update.mp_reach {
        let mut v = vec![0, 2, 1];
        v.push(if reach.link_local.is_some() { 32 } else { 16 });
        v.extend_from_slice(&reach.next_hop.octets());
        if let Some(ll) = reach.link_local {
            v.extend_from_slice(&ll.octets());
        }
        v.push(0);
        for n in &reach.nlri {
            put_prefix(&mut v, &n.network().octets(), n.prefix_len());
        }
        known.push((OPT_NON_TRANS, MP_REACH, v));
    }
    if let Some(unreach) = &update.mp_unreach {
        let mut v = vec![0, 2, 1];
        for n in &unreach.withdrawn {
            put_prefix(&mut v, &n.network().octets(), n.prefix_len());
        }
        known.push((OPT_NON_TRANS, MP_UNREACH, v));
    }
    if !four {
        // A 2-octet peer gets the real path in AS4_PATH (RFC 6793 §4.2.2).
        if let Some(p) = a.as_path.as_ref().filter(|p| p.has_four_octet()) {
            known.push((OPT_TRANS, AS4_PATH, as_path_value(p, true)?));
        }
        if let Some(agg) = a.aggregator.as_ref().filter(|g| g.asn > 0xffff) {
            known.push((OPT_TRANS, AS4_AGGREGATOR, aggregator_value(agg, true)));
        }
    }
    for (flags, type_code, value) in known {
        while let Some(u) = unknown.next_if(|u| u.type_code < type_code) {
            put_attr(out, u.flags, u.type_code, &u.value)?;
        }
        put_attr(out, flags, type_code, &value)?;
    }
    for u in unknown {
        put_attr(out, u.flags, u.type_code, &u.value)?;
    }
    Ok(())
}

pub(super) fn encode(update: &Update, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let wpos = out.len();
    out.extend_from_slice(&[0, 0]);
    for n in &update.withdrawn {
        put_prefix(out, &n.network().octets(), n.prefix_len());
    }
    let wlen = out.len() - wpos - 2;
    let apos = out.len();
    out.extend_from_slice(&[0, 0]);
    encode_attributes(update, ctx, out)?;
    let alen = out.len() - apos - 2;
    for n in &update.nlri {
        put_prefix(out, &n.network().octets(), n.prefix_len());
    }
    let too_long = |n: usize| EncodeError::TooLong(n);
    out[wpos..wpos + 2].copy_from_slice(
        &u16::try_from(wlen)
            .map_err(|_| too_long(wlen))?
            .to_be_bytes(),
    );
    out[apos..apos + 2].copy_from_slice(
        &u16::try_from(alen)
            .map_err(|_| too_long(alen))?
            .to_be_bytes(),
    );
    Ok(())
}
