//! One INET_DIAG dump over a `NETLINK_SOCK_DIAG` socket (rust-netlink crates), turned
//! into plain [`Sample`]s: the one place where netlink types are read.
//!
//! [`open`] creates a `NETLINK_SOCK_DIAG` socket, which stays bound to the network
//! namespace of the thread that created it (wherever it is used afterwards). A dump
//! over it covers every TCP socket of that namespace for one address family, with the
//! `INET_DIAG_INFO` extension (`struct tcp_info`). It needs no privileges. Messages
//! that do not decode are counted and skipped; messages of another request (a stale
//! answer) are skipped; a netlink error ends the dump with an error, after which the
//! socket may hold the rest of that answer: callers close it and open a new one.

use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla as InetNla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use super::SockDiagError;

/// `INET_DIAG_CGROUP_ID` (Linux 5.7+): the socket's cgroup v2 id, sent unasked.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// Receive buffer: the kernel fills dump datagrams up to about 32 KiB.
const RECV_BUFFER: usize = 64 << 10;

/// Counters of a TCP socket, from `struct tcp_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `tcpi_bytes_sent`: data bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// `tcpi_bytes_retrans`.
    pub bytes_retrans: u64,
    /// `tcpi_bytes_received`: data bytes received, plus one for a received FIN.
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub total_retrans: u32,
    pub rtt_us: u32,
    pub rttvar_us: u32,
}

/// One socket of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub cookie: u64,
    /// TCP state (`TCP_ESTABLISHED` = 1 … `TCP_CLOSING` = 11).
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `None` for sockets without `tcp_info` (TIME_WAIT and request sockets).
    pub info: Option<TcpCounters>,
    pub cgroup_id: Option<u64>,
}

/// What one dump returned. With `undecodable > 0` it is incomplete: sockets missing from
/// it may still exist.
#[derive(Debug, Default)]
pub struct Dump {
    pub samples: Vec<Sample>,
    /// Messages that did not decode (skipped).
    pub undecodable: u64,
    /// Sockets beyond the dump's limit (not kept).
    pub over_limit: u64,
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> SockDiagError {
    move |source| SockDiagError::Io { op, source }
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub fn open() -> Result<Socket, SockDiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(io("socket(NETLINK_SOCK_DIAG)"))?;
    socket.bind_auto().map_err(io("bind"))?;
    socket.connect(&NlAddr::new(0, 0)).map_err(io("connect"))?;
    Ok(socket)
}

/// Dumps TCP sockets of one family (`AF_INET` or `AF_INET6`) of `socket`'s namespace
/// into `out`, keeping at most `limit` samples in it (the rest is read and counted).
/// `seq` tells this request's answer from a stale one.
pub fn dump_tcp(
    socket: &Socket,
    seq: u32,
    ipv6: bool,
    out: &mut Dump,
    limit: usize,
) -> Result<(), SockDiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let request = InetRequest {
        family: if ipv6 { AF_INET6 } else { AF_INET },
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::all(),
        socket_id: if ipv6 { SocketId::new_v6() } else { SocketId::new_v4() },
    };
    let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io("send"))?;

    let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
    loop {
        rx.clear();
        let n = socket.recv(&mut rx, 0).map_err(io("recv"))?;
        if n == 0 {
            return Err(SockDiagError::Truncated);
        }
        let mut offset = 0;
        while offset < rx.len() {
            let msg = match NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..]) {
                Ok(m) => m,
                Err(_) => {
                    // Skip this message when its header is sound, else the rest of the datagram.
                    out.undecodable += 1;
                    match NetlinkBuffer::new_checked(&rx[offset..]) {
                        Ok(b) if b.length() > 0 => {
                            offset += b.length() as usize;
                            continue;
                        }
                        _ => break,
                    }
                }
            };
            let len = msg.header.length as usize;
            if msg.header.sequence_number != seq {
                // The rest of an answer to an earlier request: not this dump.
                if len == 0 {
                    break;
                }
                offset += len;
                continue;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    if out.samples.len() < limit {
                        out.samples.push(sample(&r));
                    } else {
                        out.over_limit += 1;
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(SockDiagError::Kernel(std::io::Error::from_raw_os_error(-code.get())));
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Plain values of one response.
pub fn sample(r: &InetResponse) -> Sample {
    let id = &r.header.socket_id;
    let mut info = None;
    let mut cgroup_id = None;
    for nla in &r.nlas {
        match nla {
            InetNla::TcpInfo(t) => {
                info = Some(TcpCounters {
                    bytes_sent: t.bytes_sent,
                    bytes_retrans: t.bytes_retrans,
                    bytes_received: t.bytes_received,
                    segs_out: t.segs_out,
                    segs_in: t.segs_in,
                    total_retrans: t.total_retrans,
                    rtt_us: t.rtt,
                    rttvar_us: t.rttvar,
                })
            }
            InetNla::Other(o) if o.kind() == INET_DIAG_CGROUP_ID && o.value_len() == 8 => {
                let mut v = [0u8; 8];
                o.emit_value(&mut v);
                cgroup_id = Some(u64::from_ne_bytes(v)).filter(|&c| c != 0);
            }
            _ => {}
        }
    }
    Sample {
        cookie: u64::from_ne_bytes(id.cookie),
        state: r.header.state,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        info,
        cgroup_id,
    }
}
