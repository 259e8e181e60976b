//! Decode errors, each mapped to the NOTIFICATION of RFC 4271 §6 it calls for.

use super::Notification;

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
}

/// Cease subcodes (RFC 4486).
pub mod cease {
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMIN_SHUTDOWN: u8 = 2;
    pub const CONNECTION_COLLISION: u8 = 7;
}

/// A malformed message. [`DecodeError::notification`] gives what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message header: {0}")]
    Header(#[from] HeaderError),
    #[error("OPEN: {0}")]
    Open(#[from] OpenError),
    #[error("UPDATE: {0}")]
    Update(#[from] UpdateError),
}

/// Message header errors (code 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("marker is not all ones")]
    ConnectionNotSynchronized,
    #[error("bad message length {0}")]
    BadLength(u16),
    #[error("bad message type {0}")]
    BadType(u8),
}

/// OPEN message errors (code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A malformed OPEN that no specific subcode covers (subcode 0).
    #[error("malformed OPEN")]
    Malformed,
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("bad peer AS {0}")]
    BadPeerAs(u32),
    #[error("bad BGP identifier {0}")]
    BadBgpIdentifier(std::net::Ipv4Addr),
    #[error("unsupported optional parameter {0}")]
    UnsupportedOptionalParameter(u8),
    #[error("unacceptable hold time {0}")]
    UnacceptableHoldTime(u16),
    /// Data: the capabilities we need and the peer lacks, encoded.
    #[error("unsupported capability")]
    UnsupportedCapability(Vec<u8>),
}

/// UPDATE message errors (code 3). Attribute variants carry the whole
/// offending attribute (flags, type, length, value) as the NOTIFICATION data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("malformed attribute list")]
    MalformedAttributeList,
    #[error("unrecognized well-known attribute")]
    UnrecognizedWellKnown(Vec<u8>),
    #[error("missing well-known attribute {0}")]
    MissingWellKnown(u8),
    #[error("attribute flags error")]
    AttributeFlags(Vec<u8>),
    #[error("attribute length error")]
    AttributeLength(Vec<u8>),
    #[error("invalid ORIGIN")]
    InvalidOrigin(Vec<u8>),
    #[error("invalid NEXT_HOP")]
    InvalidNextHop(Vec<u8>),
    #[error("optional attribute error")]
    OptionalAttribute(Vec<u8>),
    #[error("invalid network field")]
    InvalidNetworkField,
    #[error("malformed AS_PATH")]
    MalformedAsPath,
}

impl DecodeError {
    /// The NOTIFICATION that reports this error to the peer.
    pub fn notification(&self) -> Notification {
        let (code, subcode, data) = match self {
            DecodeError::Header(e) => match e {
                HeaderError::ConnectionNotSynchronized => (code::MESSAGE_HEADER, 1, vec![]),
                HeaderError::BadLength(len) => {
                    (code::MESSAGE_HEADER, 2, len.to_be_bytes().to_vec())
                }
                HeaderError::BadType(t) => (code::MESSAGE_HEADER, 3, vec![*t]),
            },
            DecodeError::Open(e) => match e {
                OpenError::Malformed => (code::OPEN_MESSAGE, 0, vec![]),
                // Data: the largest version we support.
                OpenError::UnsupportedVersion(_) => (code::OPEN_MESSAGE, 1, vec![0, 4]),
                OpenError::BadPeerAs(_) => (code::OPEN_MESSAGE, 2, vec![]),
                OpenError::BadBgpIdentifier(_) => (code::OPEN_MESSAGE, 3, vec![]),
                OpenError::UnsupportedOptionalParameter(_) => (code::OPEN_MESSAGE, 4, vec![]),
                OpenError::UnacceptableHoldTime(_) => (code::OPEN_MESSAGE, 6, vec![]),
                OpenError::UnsupportedCapability(caps) => (code::OPEN_MESSAGE, 7, caps.clone()),
            },
            DecodeError::Update(e) => {
                let (sub, data) = match e {
                    UpdateError::MalformedAttributeList => (1, vec![]),
                    UpdateError::UnrecognizedWellKnown(a) => (2, a.clone()),
                    UpdateError::MissingWellKnown(t) => (3, vec![*t]),
                    UpdateError::AttributeFlags(a) => (4, a.clone()),
                    UpdateError::AttributeLength(a) => (5, a.clone()),
                    UpdateError::InvalidOrigin(a) => (6, a.clone()),
                    UpdateError::InvalidNextHop(a) => (8, a.clone()),
                    UpdateError::OptionalAttribute(a) => (9, a.clone()),
                    UpdateError::InvalidNetworkField => (10, vec![]),
                    UpdateError::MalformedAsPath => (11, vec![]),
                };
                (code::UPDATE_MESSAGE, sub, data)
            }
        };
        Notification {
            code,
            subcode,
            data,
        }
    }
}

/// The message could not be encoded within the limits of the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {0} bytes exceeds the maximum message size")]
    TooLong(usize),
    #[error("AS_PATH segment of {0} ASNs exceeds 255")]
    SegmentTooLong(usize),
}
