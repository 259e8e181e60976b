//! Netlink framing: encoding requests and reading the kernel's replies, without a socket.

use std::io;

use netlink_packet_core::{
    parse_i32, DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::Error;

/// Netlink header length (`struct nlmsghdr`).
const HEADER_LEN: usize = 16;
/// `NLMSGERR_ATTR_MSG` from <linux/netlink.h>: the extended ACK's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Receives each data message of a reply: (message type, payload).
pub(crate) type OnMessage<'a> = dyn FnMut(u16, &[u8]) -> Result<(), DecodeError> + 'a;

/// Why a request did not complete.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The kernel answered with an errno.
    Kernel { errno: i32, extack: Option<String> },
    /// send/recv failed.
    Io(io::Error),
    /// A reply could not be decoded.
    Malformed(String),
    /// A reply datagram was larger than the receive buffer (which has since been grown).
    Truncated { size: usize },
    /// The kernel flagged the dump as inconsistent (the table changed while it was dumped).
    DumpInterrupted,
}

impl From<DecodeError> for Failure {
    fn from(e: DecodeError) -> Self {
        Failure::Malformed(e.to_string())
    }
}

impl Failure {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn into_error(self, op: String) -> Error {
        match self {
            Failure::Kernel { errno, extack } => Error::Os {
                op,
                error: io::Error::from_raw_os_error(errno),
                extack,
            },
            Failure::Io(error) => Error::os(op, error),
            Failure::Malformed(reason) => {
                Error::invalid(op, format!("malformed netlink reply: {reason}"))
            }
            Failure::Truncated { size } => Error::invalid(
                op,
                format!("netlink reply of {size} bytes was larger than the receive buffer"),
            ),
            Failure::DumpInterrupted => Error::invalid(
                op,
                "the kernel's table kept changing while it was being dumped",
            ),
        }
    }
}

/// Encodes `msg` as one request with `NLM_F_REQUEST | flags` and sequence number `seq`.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Encodes a request whose payload netlink-packet-route cannot express: `payload` under
/// message type `kind`, with `NLM_F_REQUEST | flags` and sequence number `seq`.
pub(crate) fn encode_raw(kind: u16, payload: &[u8], flags: u16, seq: u32) -> Vec<u8> {
    let mut bytes = vec![0; HEADER_LEN + payload.len()];
    let mut buf = NetlinkBuffer::new(&mut bytes[..]);
    buf.set_length((HEADER_LEN + payload.len()) as u32);
    buf.set_message_type(kind);
    buf.set_flags(NLM_F_REQUEST | flags);
    buf.set_sequence_number(seq);
    bytes[HEADER_LEN..].copy_from_slice(payload);
    bytes
}

/// Rewrites the sequence number of an encoded request (to resend it).
pub(crate) fn set_seq(request: &mut [u8], seq: u32) {
    NetlinkBuffer::new(request).set_sequence_number(seq);
}

/// Reads one datagram of replies to request `seq`, handing each data message (type, payload)
/// to `on_msg`. Returns true once the reply is complete: an ACK or error, `NLMSG_DONE`, or —
/// for a request without `NLM_F_ACK` (`acked` false) — its single non-multipart answer.
/// Messages with another sequence number are left-overs of an abandoned request and skipped.
pub(crate) fn read_datagram(
    data: &[u8],
    seq: u32,
    acked: bool,
    interrupted: &mut bool,
    on_msg: &mut OnMessage<'_>,
) -> Result<bool, Failure> {
    let mut rest = data;
    while !rest.is_empty() {
        let msg = NetlinkBuffer::new_checked(rest)?;
        let len = msg.length() as usize;
        let (flags, payload) = (msg.flags(), msg.payload());
        if msg.sequence_number() == seq {
            *interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match msg.message_type() {
                NLMSG_NOOP => {}
                NLMSG_ERROR => {
                    return match status(payload)? {
                        0 => Ok(true),
                        code => Err(Failure::Kernel {
                            errno: -code,
                            extack: extack(flags, payload, true),
                        }),
                    };
                }
                NLMSG_DONE => {
                    // Dumps report errors in NLMSG_DONE; old kernels send it without a status.
                    return match status(payload).unwrap_or(0) {
                        code if code < 0 => Err(Failure::Kernel {
                            errno: -code,
                            extack: extack(flags, payload, false),
                        }),
                        _ => Ok(true),
                    };
                }
                NLMSG_OVERRUN => return Err(Failure::Malformed("NLMSG_OVERRUN".into())),
                kind => {
                    on_msg(kind, payload)?;
                    if !acked && flags & NLM_F_MULTIPART == 0 {
                        return Ok(true);
                    }
                }
            }
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// Hands each data message of a multicast datagram (type, payload) to `on_msg`. Unlike
/// [`read_datagram`], sequence numbers are not checked: a notification carries the number of
/// whichever request, from whichever socket, caused it.
pub(crate) fn read_notifications(data: &[u8], on_msg: &mut OnMessage<'_>) -> Result<(), Failure> {
    let mut rest = data;
    while !rest.is_empty() {
        let msg = NetlinkBuffer::new_checked(rest)?;
        match msg.message_type() {
            NLMSG_NOOP | NLMSG_DONE | NLMSG_ERROR => {}
            NLMSG_OVERRUN => return Err(Failure::Malformed("NLMSG_OVERRUN".into())),
            kind => on_msg(kind, msg.payload())?,
        }
        rest = rest
            .get((msg.length() as usize).next_multiple_of(4)..)
            .unwrap_or_default();
    }
    Ok(())
}

fn status(payload: &[u8]) -> Result<i32, DecodeError> {
    parse_i32(payload.get(..4).ok_or("short NLMSG_ERROR/NLMSG_DONE")?)
}

/// The kernel's text explanation from an `NLMSG_ERROR` / `NLMSG_DONE` payload, if any.
/// In `NLMSG_ERROR` the TLVs follow the echoed request: just its header when `NLM_F_CAPPED`,
/// else the whole request.
fn extack(flags: u16, payload: &[u8], echoes_request: bool) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut skip = 4;
    if echoes_request {
        let echoed_len = NetlinkBuffer::new_checked(payload.get(4..)?).ok()?.length() as usize;
        skip += if flags & NLM_F_CAPPED != 0 {
            HEADER_LEN
        } else {
            echoed_len.next_multiple_of(4)
        };
    }
    NlasIterator::new(payload.get(skip..)?)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .and_then(|nla| netlink_packet_core::parse_string(nla.value()).ok())
        .filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
    use netlink_packet_route::link::LinkMessage;
    use nix::libc;

    /// One netlink message: header + payload, padded to 4 bytes.
    fn msg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((HEADER_LEN + payload.len()) as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(flags.to_ne_bytes());
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((4 + value.len()) as u16).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn collect(data: &[u8], seq: u32, acked: bool) -> (Result<bool, Failure>, Vec<u16>, bool) {
        let mut seen = Vec::new();
        let mut interrupted = false;
        let result = read_datagram(data, seq, acked, &mut interrupted, &mut |kind, _| {
            seen.push(kind);
            Ok(())
        });
        (result, seen, interrupted)
    }

    #[test]
    fn encode_sets_header_fields() {
        let bytes = encode(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_ACK,
            7,
        );
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.length() as usize, bytes.len());
        assert_eq!(buf.message_type(), libc::RTM_GETLINK);
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(buf.sequence_number(), 7);
        let mut bytes = bytes;
        set_seq(&mut bytes, 8);
        assert_eq!(NetlinkBuffer::new(&bytes[..]).sequence_number(), 8);
    }

    #[test]
    fn encode_raw_frames_any_payload() {
        let bytes = encode_raw(libc::RTM_GETNEIGH, &[7; 16], NLM_F_DUMP, 3);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.length(), 32);
        assert_eq!(buf.message_type(), libc::RTM_GETNEIGH);
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(buf.sequence_number(), 3);
        assert_eq!(buf.payload(), &[7; 16]);
    }

    #[test]
    fn notifications_of_any_sequence_number_are_read() {
        let mut data = msg(libc::RTM_NEWROUTE, 0, 0, &[1; 12]);
        data.extend(msg(libc::RTM_DELROUTE, 0, 42, &[2; 12]));
        let mut seen = Vec::new();
        read_notifications(&data, &mut |kind, payload| {
            seen.push((kind, payload[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(libc::RTM_NEWROUTE, 1), (libc::RTM_DELROUTE, 2)]);
        let overrun = msg(NLMSG_OVERRUN, 0, 0, &[]);
        assert!(matches!(
            read_notifications(&overrun, &mut |_, _| Ok(())),
            Err(Failure::Malformed(_))
        ));
    }

    #[test]
    fn multipart_dump_spans_datagrams_and_skips_stale_messages() {
        let mut first = msg(libc::RTM_NEWLINK, NLM_F_MULTIPART, 5, &[0; 16]);
        first.extend(msg(libc::RTM_NEWLINK, NLM_F_MULTIPART, 4, &[0; 16])); // stale
        first.extend(msg(libc::RTM_NEWROUTE, NLM_F_MULTIPART, 5, &[0; 12]));
        assert!(
            matches!(collect(&first, 5, false), (Ok(false), ref k, false) if k == &[libc::RTM_NEWLINK, libc::RTM_NEWROUTE])
        );
        let last = msg(NLMSG_DONE, NLM_F_MULTIPART, 5, &0i32.to_ne_bytes());
        assert!(matches!(collect(&last, 5, false), (Ok(true), ref k, false) if k.is_empty()));
    }

    #[test]
    fn interrupted_dump_is_flagged() {
        let mut data = msg(
            libc::RTM_NEWADDR,
            NLM_F_MULTIPART | NLM_F_DUMP_INTR,
            1,
            &[0; 8],
        );
        data.extend(msg(NLMSG_DONE, NLM_F_MULTIPART, 1, &0i32.to_ne_bytes()));
        let (result, _, interrupted) = collect(&data, 1, false);
        assert!(matches!(result, Ok(true)) && interrupted);
    }

    #[test]
    fn ack_completes_and_unacked_get_completes_on_its_answer() {
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend(msg(libc::RTM_NEWLINK, 0, 3, &[]));
        // An echoed message before the ACK does not complete an acked request.
        let echo = msg(libc::RTM_NEWLINK, 0, 3, &[0; 16]);
        assert!(matches!(collect(&echo, 3, true), (Ok(false), ref k, _) if k.len() == 1));
        assert!(matches!(
            collect(&msg(NLMSG_ERROR, 0, 3, &ack), 3, true),
            (Ok(true), ..)
        ));
        assert!(matches!(collect(&echo, 3, false), (Ok(true), ..)));
    }

    #[test]
    fn error_carries_errno_and_extended_ack() {
        let request = msg(libc::RTM_NEWROUTE, NLM_F_REQUEST, 9, &[0; 12]);
        let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
        payload.extend(&request);
        payload.extend(nla(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0"));
        let (result, ..) = collect(&msg(NLMSG_ERROR, NLM_F_ACK_TLVS, 9, &payload), 9, true);
        let error = result
            .unwrap_err()
            .into_error("adding route 10.0.0.0/8".into());
        assert_eq!(
            error.to_string(),
            "adding route 10.0.0.0/8: Invalid argument (os error 22): Nexthop has invalid gateway"
        );

        // Capped: only the request's header is echoed.
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend(&request[..HEADER_LEN]);
        payload.extend(nla(NLMSGERR_ATTR_MSG, b"exists\0"));
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        let (result, ..) = collect(&msg(NLMSG_ERROR, flags, 9, &payload), 9, true);
        assert!(
            matches!(result, Err(Failure::Kernel { errno, extack: Some(ref m) }) if errno == libc::EEXIST && m == "exists")
        );
    }

    #[test]
    fn dump_error_arrives_in_done() {
        let (result, ..) = collect(
            &msg(
                NLMSG_DONE,
                NLM_F_MULTIPART,
                2,
                &(-libc::ENODEV).to_ne_bytes(),
            ),
            2,
            false,
        );
        assert_eq!(result.unwrap_err().errno(), Some(libc::ENODEV));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut data = msg(libc::RTM_NEWLINK, NLM_F_MULTIPART, 1, &[0; 16]);
        data[0] = 200; // length beyond the datagram
        assert!(matches!(
            collect(&data, 1, false).0,
            Err(Failure::Malformed(_))
        ));
        assert!(matches!(
            collect(&data[..10], 1, false).0,
            Err(Failure::Malformed(_))
        ));
        let short_error = msg(NLMSG_ERROR, 0, 1, &[]);
        assert!(matches!(
            collect(&short_error, 1, true).0,
            Err(Failure::Malformed(_))
        ));
    }
}
