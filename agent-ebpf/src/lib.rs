//! Eddy's kernel programs and the Rust mirror of their shared types.
//!
//! What: `src/bpf/eddy.bpf.c` (C with CO-RE, compiled by clang from `build.rs`)
//! holds the TCP lifecycle, byte-counting and UDP programs; this crate embeds the
//! object ([`object`]) and mirrors the structs of `src/bpf/eddy.h`, which is the
//! single source of truth for map keys and values.
//!
//! How: `build.rs` compiles the header for the host and emits its constants and
//! every struct's size and field offsets; the `const` assertions below fail the
//! build if a mirror drifts from the header.
//!
//! Limits: the mirrors are plain data; converting them to domain types
//! (`IpAddr`, times) is the agent's job, in one place (its collector).

#![no_std]

/// Constants and C layouts generated from `eddy.h` by `build.rs`.
pub mod shared {
    include!(concat!(env!("OUT_DIR"), "/shared.rs"));
}

/// Connection 5-tuple (`struct eddy_tuple`). Addresses in network byte order
/// (IPv4 in the first 4 bytes), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub protocol: u8,
    pub _pad0: u8,
}

/// Per-connection state and closed-connection record (`struct eddy_flow`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub tuple: Tuple,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub opened_ns: u64,
    pub closed_ns: u64,
    pub last_ns: u64,
    pub snapshot_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub retransmits: u32,
    pub rtt_us: u32,
    pub rtt_var_us: u32,
    pub pid: u32,
    pub netns_ino: u32,
    pub sk_err: i32,
    pub direction: u8,
    pub flags: u8,
    pub _pad1: [u8; 6],
    pub comm: [u8; 16],
}

/// Key of the UDP flow map (`struct eddy_udp_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpKey {
    pub cookie: u64,
    pub tuple: Tuple,
}

/// The process that last sent on a UDP socket (`struct eddy_owner`, value of `UDP_OWNERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub _pad0: u32,
    pub comm: [u8; 16],
}

/// One DNS packet seen by a socket (`struct eddy_dns_event`), from the `DNS_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub tuple: Tuple,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub netns_ino: u32,
    pub wire_len: u32,
    pub captured: u16,
    pub direction: u8,
    pub _pad0: u8,
    pub comm: [u8; 16],
    pub payload: [u8; shared::DNS_CAPTURE as usize],
}

macro_rules! check_layout {
    ($ty:ty, $size:ident, [$(($field:ident, $off:ident)),* $(,)?]) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == shared::$size);
        $(const _: () = assert!(core::mem::offset_of!($ty, $field) == shared::$off);)*
    };
}

check_layout!(
    Tuple,
    C_SIZEOF_EDDY_TUPLE,
    [
        (local_addr, C_OFFSETOF_EDDY_TUPLE_LOCAL_ADDR),
        (remote_addr, C_OFFSETOF_EDDY_TUPLE_REMOTE_ADDR),
        (local_port, C_OFFSETOF_EDDY_TUPLE_LOCAL_PORT),
        (remote_port, C_OFFSETOF_EDDY_TUPLE_REMOTE_PORT),
        (family, C_OFFSETOF_EDDY_TUPLE_FAMILY),
        (protocol, C_OFFSETOF_EDDY_TUPLE_PROTOCOL),
    ]
);
check_layout!(
    Flow,
    C_SIZEOF_EDDY_FLOW,
    [
        (tuple, C_OFFSETOF_EDDY_FLOW_TUPLE),
        (cookie, C_OFFSETOF_EDDY_FLOW_COOKIE),
        (cgroup_id, C_OFFSETOF_EDDY_FLOW_CGROUP_ID),
        (opened_ns, C_OFFSETOF_EDDY_FLOW_OPENED_NS),
        (closed_ns, C_OFFSETOF_EDDY_FLOW_CLOSED_NS),
        (last_ns, C_OFFSETOF_EDDY_FLOW_LAST_NS),
        (snapshot_ns, C_OFFSETOF_EDDY_FLOW_SNAPSHOT_NS),
        (bytes_sent, C_OFFSETOF_EDDY_FLOW_BYTES_SENT),
        (bytes_received, C_OFFSETOF_EDDY_FLOW_BYTES_RECEIVED),
        (packets_sent, C_OFFSETOF_EDDY_FLOW_PACKETS_SENT),
        (packets_received, C_OFFSETOF_EDDY_FLOW_PACKETS_RECEIVED),
        (retransmits, C_OFFSETOF_EDDY_FLOW_RETRANSMITS),
        (rtt_us, C_OFFSETOF_EDDY_FLOW_RTT_US),
        (rtt_var_us, C_OFFSETOF_EDDY_FLOW_RTT_VAR_US),
        (pid, C_OFFSETOF_EDDY_FLOW_PID),
        (netns_ino, C_OFFSETOF_EDDY_FLOW_NETNS_INO),
        (sk_err, C_OFFSETOF_EDDY_FLOW_SK_ERR),
        (direction, C_OFFSETOF_EDDY_FLOW_DIRECTION),
        (flags, C_OFFSETOF_EDDY_FLOW_FLAGS),
        (comm, C_OFFSETOF_EDDY_FLOW_COMM),
    ]
);
check_layout!(
    UdpKey,
    C_SIZEOF_EDDY_UDP_KEY,
    [(cookie, C_OFFSETOF_EDDY_UDP_KEY_COOKIE), (tuple, C_OFFSETOF_EDDY_UDP_KEY_TUPLE),]
);
check_layout!(
    Owner,
    C_SIZEOF_EDDY_OWNER,
    [(pid, C_OFFSETOF_EDDY_OWNER_PID), (comm, C_OFFSETOF_EDDY_OWNER_COMM),]
);

check_layout!(
    DnsEvent,
    C_SIZEOF_EDDY_DNS_EVENT,
    [
        (tuple, C_OFFSETOF_EDDY_DNS_EVENT_TUPLE),
        (ts_ns, C_OFFSETOF_EDDY_DNS_EVENT_TS_NS),
        (cgroup_id, C_OFFSETOF_EDDY_DNS_EVENT_CGROUP_ID),
        (pid, C_OFFSETOF_EDDY_DNS_EVENT_PID),
        (netns_ino, C_OFFSETOF_EDDY_DNS_EVENT_NETNS_INO),
        (wire_len, C_OFFSETOF_EDDY_DNS_EVENT_WIRE_LEN),
        (captured, C_OFFSETOF_EDDY_DNS_EVENT_CAPTURED),
        (direction, C_OFFSETOF_EDDY_DNS_EVENT_DIRECTION),
        (comm, C_OFFSETOF_EDDY_DNS_EVENT_COMM),
        (payload, C_OFFSETOF_EDDY_DNS_EVENT_PAYLOAD),
    ]
);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding
    // fields: every bit pattern is valid and there are no implicit gaps.
    unsafe impl aya::Pod for super::Tuple {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UdpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
}

/// The compiled kernel object (ELF, BTF, CO-RE relocations), 8-byte aligned.
#[cfg(feature = "user")]
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eddy.bpf.o"))
}
