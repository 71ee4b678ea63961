//! ctnetlink over `netlink-sys`, messages decoded by `netlink-packet-netfilter`: a dump of the
//! table and a socket subscribed to new and destroyed entries.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use super::ConntrackError;

/// NFNLGRP_CONNTRACK_NEW and NFNLGRP_CONNTRACK_DESTROY.
const GROUP_NEW: u32 = 1;
const GROUP_DESTROY: u32 = 3;
const RECV_BUFFER: usize = 256 << 10;
/// Kernel receive buffer of the event socket: bursts of short connections.
const EVENT_SOCKET_BUFFER: usize = 4 << 20;

/// One conntrack entry: the original direction and the reply direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// IANA protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    pub reply_src: SocketAddr,
    pub reply_dst: SocketAddr,
}

impl Entry {
    /// NAT applied: the reply does not come back from where the original went, or does not go
    /// back to where it came from.
    pub fn translated(&self) -> bool {
        self.reply_src != self.orig_dst || self.reply_dst != self.orig_src
    }
}

/// What one message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    New(Entry),
    Destroy(Entry),
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> ConntrackError {
    move |source| ConntrackError::Io { op, source }
}

/// A socket that receives new and destroyed entries.
pub fn subscribe() -> Result<Socket, ConntrackError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(io("socket(NETLINK_NETFILTER)"))?;
    s.bind_auto().map_err(io("bind"))?;
    let _ = s.set_rx_buf_sz(EVENT_SOCKET_BUFFER);
    s.add_membership(GROUP_NEW).map_err(io("join NFNLGRP_CONNTRACK_NEW"))?;
    s.add_membership(GROUP_DESTROY).map_err(io("join NFNLGRP_CONNTRACK_DESTROY"))?;
    Ok(s)
}

/// Every entry in the table (all families); undecodable messages are counted in `bad`.
pub fn dump(bad: &mut u64) -> Result<Vec<Entry>, ConntrackError> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(io("socket(NETLINK_NETFILTER)"))?;
    s.bind_auto().map_err(io("bind"))?;
    s.connect(&NlAddr::new(0, 0)).map_err(io("connect"))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        ConntrackMessage::Get(Vec::new()),
    );
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    s.send(&buf, 0).map_err(io("send"))?;
    let mut out = Vec::new();
    let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
    loop {
        rx.clear();
        let n = s.recv(&mut rx, 0).map_err(io("recv"))?;
        if n == 0 {
            return Err(ConntrackError::Truncated);
        }
        if read(&rx, &mut |e| out.push(e), bad)? {
            return Ok(out);
        }
    }
}

/// Decodes every message of one datagram; `true` at the end of a dump.
pub fn read(rx: &[u8], sink: &mut dyn FnMut(Entry), bad: &mut u64) -> Result<bool, ConntrackError> {
    let mut offset = 0;
    while offset < rx.len() {
        let len = match NetlinkBuffer::new_checked(&rx[offset..]) {
            Ok(b) if b.length() > 0 => b.length() as usize,
            _ => {
                *bad += 1;
                return Ok(false);
            }
        };
        match NetlinkMessage::<NetfilterMessage>::deserialize(&rx[offset..]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(ConntrackError::Kernel(std::io::Error::from_raw_os_error(-code.get())));
                    }
                }
                NetlinkPayload::InnerMessage(m) => match event(&m) {
                    Ok(Some(Event::New(e) | Event::Destroy(e))) => sink(e),
                    Ok(None) => {}
                    Err(()) => *bad += 1,
                },
                _ => {}
            },
            Err(_) => *bad += 1,
        }
        offset += len;
    }
    Ok(false)
}

/// Decodes events (new and destroyed entries) of one datagram.
pub fn read_events(rx: &[u8], sink: &mut dyn FnMut(Event), bad: &mut u64) {
    let mut offset = 0;
    while offset < rx.len() {
        let len = match NetlinkBuffer::new_checked(&rx[offset..]) {
            Ok(b) if b.length() > 0 => b.length() as usize,
            _ => {
                *bad += 1;
                return;
            }
        };
        match NetlinkMessage::<NetfilterMessage>::deserialize(&rx[offset..]) {
            Ok(NetlinkMessage { payload: NetlinkPayload::InnerMessage(m), .. }) => match event(&m) {
                Ok(Some(e)) => sink(e),
                Ok(None) => {}
                Err(()) => *bad += 1,
            },
            Ok(_) => {}
            Err(_) => *bad += 1,
        }
        offset += len;
    }
}

/// The event of a message: `Ok(None)` for what is not a TCP or UDP entry (ICMP, other
/// subsystems), `Err` for a TCP/UDP entry without its tuples.
fn event(m: &NetfilterMessage) -> Result<Option<Event>, ()> {
    match &m.inner {
        NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) => Ok(entry(a)?.map(Event::New)),
        NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(a)) => Ok(entry(a)?.map(Event::Destroy)),
        _ => Ok(None),
    }
}

fn entry(attrs: &[ConntrackAttribute]) -> Result<Option<Entry>, ()> {
    let mut orig = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            _ => {}
        }
    }
    let (orig, reply) = (orig.ok_or(())?, reply.ok_or(())?);
    if !ports(orig) {
        return Ok(None);
    }
    let ((p, orig_src, orig_dst), (_, reply_src, reply_dst)) =
        (tuple(orig).ok_or(())?, tuple(reply).ok_or(())?);
    Ok(Some(Entry { protocol: p, orig_src, orig_dst, reply_src, reply_dst }))
}

/// A TCP or UDP tuple (the protocols with ports).
fn ports(t: &[Tuple]) -> bool {
    t.iter().any(|part| match part {
        Tuple::Proto(ps) => {
            ps.iter().any(|p| matches!(p, ProtoTuple::Protocol(Protocol::Tcp | Protocol::Udp)))
        }
        _ => false,
    })
}

/// (protocol, source, destination) of a TCP or UDP tuple.
fn tuple(t: &[Tuple]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut src, mut dst, mut sport, mut dport, mut proto): (Option<IpAddr>, Option<IpAddr>, _, _, _) =
        (None, None, None, None, None);
    for part in t {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(Protocol::Tcp) => proto = Some(6),
                        ProtoTuple::Protocol(Protocol::Udp) => proto = Some(17),
                        ProtoTuple::SourcePort(v) => sport = Some(*v),
                        ProtoTuple::DestinationPort(v) => dport = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, SocketAddr::new(src?, sport?), SocketAddr::new(dst?, dport?)))
}
