/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0) */
/*
 * Eddy: the single source of truth for every structure shared between the
 * kernel programs (eddy.bpf.c) and the agent (agent-ebpf/src/lib.rs).
 *
 * Rules: fixed-width types only, no bool, no implicit padding (every gap is an
 * explicit _pad field), 8-byte aligned sizes. build.rs parses this header
 * (agent-ebpf/build/header.rs: a strict parser that accepts only the constructs
 * used here, and fails the build naming the line of anything else) and
 * generates from it the Rust constants and #[repr(C)] mirrors, with these
 * comments as their docs, plus compile-time checks of every size, alignment
 * and offset against the host C compiler's layout of this file. A comment
 * just above a struct documents it; a comment at the end of a line documents
 * that field or constant; a comment above a group of constants is added to
 * each one's doc.
 */
#ifndef EDDY_H
#define EDDY_H

/* Map names, shared with Rust (`eddy_ebpf::shared::MAP_*`). */
#define EDDY_MAP_TCP_FLOWS "TCP_FLOWS"
#define EDDY_MAP_UDP_FLOWS "UDP_FLOWS"
#define EDDY_MAP_CLOSED "CLOSED"
#define EDDY_MAP_COUNTERS "COUNTERS"
#define EDDY_MAP_UNTRACKED "UNTRACKED"
#define EDDY_MAP_CONFIG "CONFIG"
#define EDDY_MAP_DNS "DNS_EVENTS"
#define EDDY_MAP_UDP_OWNERS "UDP_OWNERS"

/* Bits of CONFIG[0]. */
#define EDDY_CFG_BYTES_FROM_TCP_SOCK 0x01 /* bytes from tcp_sock counters (at close and by the iterator), not per call */
#define EDDY_CFG_DNS 0x02                /* copy DNS packets (port 53) to DNS_EVENTS */
#define EDDY_CFG_NO_UDP_FLOWS 0x04       /* cgroup_skb programs attached for DNS only: count no UDP flows */
/* 0x08: unused (was tcp_recvmsg's flags position for the kprobe path) */
#define EDDY_CFG_COUNTERS_AT_CLOSE 0x10 /* kprobe bytes: tcp_sock counters at calls, final ones set at CLOSE */
#define EDDY_CFG_SKB_TCP_ONLY 0x20  /* cgroup_skb programs attached for DNS over TCP only: UDP is counted by the function hooks */
#define EDDY_CFG_NO_TCP_DNS 0x40    /* DNS over TCP is not copied (dns.tcp = off) */

/* DNS capture: bytes of each DNS message copied (after the UDP header / TCP header). */
#define EDDY_DNS_CAPTURE 512
#define EDDY_DNS_PORT 53

#define EDDY_COMM_LEN 16

/* struct eddy_flow.direction */
#define EDDY_DIR_UNKNOWN 0
#define EDDY_DIR_OUTGOING 1
#define EDDY_DIR_INCOMING 2

/* struct eddy_flow.flags */
#define EDDY_FLAG_ESTABLISHED 0x01 /* reached TCP_ESTABLISHED while tracked */
#define EDDY_FLAG_CLOSED 0x02      /* the socket is gone; the record is final */
#define EDDY_FLAG_PREEXISTING 0x04 /* first seen after it was opened (agent started later) */
#define EDDY_FLAG_SYN_SENT 0x08    /* active open seen */
#define EDDY_FLAG_RELEASED 0x10    /* the application closed the socket (sockops mode) */

/* Counter slots of the per-CPU COUNTERS array. */
#define EDDY_CTR_TCP_MAP_FULL 0    /* a TCP connection could not be tracked: map full */
#define EDDY_CTR_UDP_MAP_FULL 1    /* a UDP packet could not be counted: map full */
#define EDDY_CTR_RINGBUF_FULL 2    /* a closed record did not fit the ring buffer (kept in the map instead) */
#define EDDY_CTR_UDP_UNPARSED 3    /* a UDP packet whose headers could not be parsed */
#define EDDY_CTR_TCP_UNTRACKED 4   /* byte updates for connections the map had no room for */
#define EDDY_CTR_CLOSED_SENT 5     /* closed records delivered through the ring buffer */
#define EDDY_CTR_TCP_OPENED 6      /* TCP connections that got an entry */
#define EDDY_CTR_UNTRACKED_FULL 7  /* the untracked-connection set itself was full */
#define EDDY_CTR_ITER_SOCKETS 8    /* TCP sockets visited by the refresh iterator */
#define EDDY_CTR_DNS_CAPTURED 9    /* DNS packets copied to DNS_EVENTS */
#define EDDY_CTR_DNS_RINGBUF_FULL 10 /* DNS packets lost: DNS_EVENTS full */
#define EDDY_CTR_DNS_UNPARSED 11   /* DNS packets whose headers could not be read */
#define EDDY_CTR_ITER_NO_COOKIE 12 /* sockets the iterator could not key: cookie never generated (see eddy_iter_sockets_ro) */
#define EDDY_CTR_MAX 13

/*
 * Connection 5-tuple. Addresses in network byte order (IPv4 in the first 4
 * bytes), ports in host byte order. family is AF_INET (2) or AF_INET6 (10).
 */
struct eddy_tuple {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u16 family;
	__u8 protocol; /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
	__u8 _pad0;
};

/*
 * Per-connection state: the value of TCP_FLOWS and UDP_FLOWS, and the record
 * pushed through the CLOSED ring buffer when a TCP connection ends.
 * Counters are totals since the connection was first seen.
 */
struct eddy_flow {
	struct eddy_tuple tuple;
	__u64 cookie;           /* socket cookie */
	__u64 cgroup_id;        /* cgroup v2 id of the socket (0 = unknown) */
	__u64 opened_ns;        /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 closed_ns;        /* 0 while open */
	__u64 last_ns;          /* last update */
	__u64 snapshot_ns;      /* last time tcp_sock counters were copied */
	__u64 bytes_sent;       /* payload bytes */
	__u64 bytes_received;   /* payload bytes */
	__u64 packets_sent;     /* TCP: segs_out; UDP: datagrams */
	__u64 packets_received; /* TCP: segs_in; UDP: datagrams */
	__u32 retransmits;      /* TCP: total_retrans */
	__u32 rtt_us;           /* smoothed RTT */
	__u32 rtt_var_us;       /* RTT mean deviation */
	__u32 pid;              /* owning process (tgid), 0 = unknown */
	__u32 netns_ino;        /* network namespace inode, 0 = unknown */
	__s32 sk_err;           /* socket error at close (errno), 0 = none */
	__u8 direction;         /* EDDY_DIR_* */
	__u8 flags;             /* EDDY_FLAG_* */
	__u8 _pad1[6];
	char comm[EDDY_COMM_LEN];
};

/* Key of UDP_FLOWS: one socket talking to one peer from one local address. */
struct eddy_udp_key {
	__u64 cookie;
	struct eddy_tuple tuple;
};

/*
 * One DNS packet (UDP or TCP, port 53 on either side), as seen by the socket
 * that sent or received it: the record of the DNS_EVENTS ring buffer.
 */
struct eddy_dns_event {
	struct eddy_tuple tuple; /* local = the socket's end */
	__u64 ts_ns;             /* CLOCK_MONOTONIC */
	__u64 cgroup_id;         /* cgroup v2 id of the socket */
	__u32 pid;               /* sender's tgid on egress, 0 on ingress */
	__u32 netns_ino;         /* network namespace inode, 0 = unknown */
	__u32 wire_len;          /* L4 payload length of the packet */
	__u16 captured;          /* bytes valid in payload (<= EDDY_DNS_CAPTURE) */
	__u8 direction;          /* EDDY_DIR_OUTGOING (egress) or EDDY_DIR_INCOMING (ingress) */
	__u8 _pad0;
	char comm[EDDY_COMM_LEN]; /* sender's command on egress, empty on ingress */
	__u8 payload[EDDY_DNS_CAPTURE];
};

/*
 * The process that last sent on a UDP socket (value of UDP_OWNERS, keyed by
 * socket cookie), where the UDP programs themselves cannot name it.
 */
struct eddy_owner {
	__u32 pid; /* tgid */
	__u32 _pad0;
	char comm[EDDY_COMM_LEN];
};

#endif /* EDDY_H */
