//! BGP-4 message format (RFC 4271 §4) with the extensions Margay speaks:
//! multiprotocol IPv6 unicast (RFC 4760), route refresh (RFC 2918), 4-octet
//! ASNs (RFC 6793), graceful restart (RFC 4724), communities (RFC 1997) and
//! route reflection (RFC 4456). UPDATE errors follow RFC 7606.

mod error;
mod open;
mod update;

use std::fmt;

pub use error::{cease, code, DecodeError, EncodeError, HeaderError, OpenError, UpdateError};
pub(crate) use open::{encode_capability, validate as validate_open};
pub use open::{Capability, GracefulRestart, Open};
pub(crate) use update::{encode_attributes, prefix_len_on_wire};
pub use update::{
    Aggregator, AsPath, AsSegment, MpReach, MpUnreach, Origin, PathAttributes, RawAttribute, Update,
};

/// Length of the fixed message header.
pub const HEADER_LEN: usize = 19;
/// The largest message RFC 4271 allows.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Stands in for a 4-octet ASN in 2-octet fields (RFC 6793).
pub const AS_TRANS: u16 = 23456;

const TYPE_OPEN: u8 = 1;
const TYPE_UPDATE: u8 = 2;
const TYPE_NOTIFICATION: u8 = 3;
const TYPE_KEEPALIVE: u8 = 4;
const TYPE_ROUTE_REFRESH: u8 = 5;

/// What the session negotiated that changes the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Both sides advertised the 4-octet ASN capability.
    pub four_octet_as: bool,
    /// Largest message accepted or produced.
    pub max_message_len: usize,
}

impl Default for Context {
    /// The context before OPENs are exchanged: 2-octet ASNs, 4096 bytes.
    fn default() -> Self {
        Context {
            four_octet_as: false,
            max_message_len: MAX_MESSAGE_LEN,
        }
    }
}

/// The address families Margay carries (both SAFI 1, unicast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl AddressFamily {
    /// The (AFI, SAFI) numbers on the wire.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            AddressFamily::Ipv4Unicast => (1, 1),
            AddressFamily::Ipv6Unicast => (2, 1),
        }
    }

    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Self> {
        match (afi, safi) {
            (1, 1) => Some(AddressFamily::Ipv4Unicast),
            (2, 1) => Some(AddressFamily::Ipv6Unicast),
            _ => None,
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressFamily::Ipv4Unicast => "ipv4-unicast",
            AddressFamily::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// A BGP message.
// UPDATEs dominate the traffic; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// NOTIFICATION: an error that closes the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// ROUTE-REFRESH (RFC 2918). The AFI/SAFI are kept raw: a request for a
/// family we do not carry is ignored, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub safi: u8,
}

impl RouteRefresh {
    pub fn new(family: AddressFamily) -> Self {
        let (afi, safi) = family.afi_safi();
        RouteRefresh { afi, safi }
    }

    pub fn family(&self) -> Option<AddressFamily> {
        AddressFamily::from_afi_safi(self.afi, self.safi)
    }
}

/// One message decoded from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub message: Message,
    /// Bytes consumed from the buffer.
    pub len: usize,
    /// UPDATE errors that RFC 7606 handles without a NOTIFICATION: the
    /// attribute was discarded, or the UPDATE's routes were turned into
    /// withdrawals ("treat-as-withdraw"). For logging.
    pub recovered: Vec<UpdateError>,
}

/// Decodes the first message in `buf`. `Ok(None)` means more bytes are
/// needed; header errors are reported as soon as the header is complete.
pub fn decode(buf: &[u8], ctx: &Context) -> Result<Option<Decoded>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(HeaderError::ConnectionNotSynchronized.into());
    }
    let len_field = u16::from_be_bytes([buf[16], buf[17]]);
    let len = usize::from(len_field);
    let msg_type = buf[18];
    let min = match msg_type {
        TYPE_OPEN => 29,
        TYPE_UPDATE => 23,
        TYPE_NOTIFICATION => 21,
        TYPE_KEEPALIVE => HEADER_LEN,
        TYPE_ROUTE_REFRESH => 23,
        t => return Err(HeaderError::BadType(t).into()),
    };
    let fixed = matches!(msg_type, TYPE_KEEPALIVE | TYPE_ROUTE_REFRESH);
    if len < min || len > ctx.max_message_len || (fixed && len != min) {
        return Err(HeaderError::BadLength(len_field).into());
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..len];
    let mut recovered = Vec::new();
    let message = match msg_type {
        TYPE_OPEN => Message::Open(open::decode(body)?),
        TYPE_UPDATE => Message::Update(update::decode(body, ctx, &mut recovered)?),
        TYPE_NOTIFICATION => Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        TYPE_KEEPALIVE => Message::Keepalive,
        _ => Message::RouteRefresh(RouteRefresh {
            afi: u16::from_be_bytes([body[0], body[1]]),
            safi: body[3],
        }),
    };
    Ok(Some(Decoded {
        message,
        len,
        recovered,
    }))
}

/// Appends the encoding of `msg` to `out`. On error `out` is unchanged.
pub fn encode(msg: &Message, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0xff; 16]);
    out.extend_from_slice(&[0, 0]);
    let result = match msg {
        Message::Open(o) => {
            out.push(TYPE_OPEN);
            open::encode(o, out)
        }
        Message::Update(u) => {
            out.push(TYPE_UPDATE);
            update::encode(u, ctx, out)
        }
        Message::Notification(n) => {
            out.push(TYPE_NOTIFICATION);
            out.extend_from_slice(&[n.code, n.subcode]);
            out.extend_from_slice(&n.data);
            Ok(())
        }
        Message::Keepalive => {
            out.push(TYPE_KEEPALIVE);
            Ok(())
        }
        Message::RouteRefresh(r) => {
            out.push(TYPE_ROUTE_REFRESH);
            out.extend_from_slice(&r.afi.to_be_bytes());
            out.extend_from_slice(&[0, r.safi]);
            Ok(())
        }
    };
    let len = out.len() - start;
    let result = result.and_then(|()| match u16::try_from(len) {
        Ok(len16) if len <= ctx.max_message_len => Ok(len16),
        _ => Err(EncodeError::TooLong(len)),
    });
    match result {
        Ok(len16) => {
            out[start + 16..start + 18].copy_from_slice(&len16.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Bounds-checked reader: every read returns `None` past the end instead of
/// panicking, and callers turn that into the right protocol error.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}
