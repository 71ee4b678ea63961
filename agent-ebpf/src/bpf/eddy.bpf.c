// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * Eddy kernel programs: per-connection TCP and per-peer UDP flow accounting.
 *
 * TCP: connection lifecycle from sock:inet_sock_set_state and
 * tcp:tcp_destroy_sock (tp_btf), retransmits from tcp:tcp_retransmit_skb,
 * payload bytes from the tcp_sock counters (at CLOSE, and read by the socket
 * iterator while open) or, where no iterator loads, per call:
 * sock:sock_{send,recv}_length (tp_btf), fexit or kprobes on tcp_sendmsg and
 * tcp_recvmsg. sockops + cgroup/sock_release is the lifecycle's fallback.
 * State lives in TCP_FLOWS keyed by socket cookie; when the socket is
 * destroyed its final record goes to the CLOSED ring buffer (or, if that is
 * full, stays in the map flagged CLOSED for userspace to collect), so no
 * short-lived connection is lost.
 *
 * UDP: one entry per (socket, local address, peer) taken from the packet, so
 * unconnected sockets are split by peer; counted where only UDP passes
 * (fentry on ip_send_skb, ip6_send_skb and __udp_enqueue_schedule_skb) where
 * the kernel has BPF trampolines, else by cgroup_skb ingress/egress on the
 * cgroup v2 root (TCP packets leave those after one field test). DNS (port 53)
 * is copied to DNS_EVENTS by the same programs; DNS over TCP by cgroup_skb.
 *
 * Every failure to track (map full, ring buffer full, unparsable packet) is
 * counted in COUNTERS.
 */
#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "eddy.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define ECONNRESET 104
#define TCP_LISTEN 10
#define MSG_PEEK 2
#define SOCK_DEAD 0 /* enum sock_flags */
#define SOCK_DONE 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
/* tcp_sock counters (segments, RTT, retransmits) are copied at most this often per connection. */
#define SNAPSHOT_INTERVAL_NS 250000000ULL

char LICENSE[] SEC("license") = "Dual BSD/GPL";


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct eddy_flow);
} TCP_FLOWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct eddy_udp_key);
	__type(value, struct eddy_flow);
} UDP_FLOWS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} CLOSED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EDDY_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} COUNTERS SEC(".maps");

/* Settings written by the agent after it has chosen its hooks (slot 0: EDDY_CFG_* bits). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} CONFIG SEC(".maps");

/* Connections that found TCP_FLOWS full when they opened: their later events
 * are counted as untracked instead of creating a partial entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} UNTRACKED SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&COUNTERS, &idx);
	if (v)
		*v += 1;
}

/*
 * Kernel structs are read by direct, CO-RE-relocated loads: every caller holds
 * a BTF-typed pointer (tp_btf and fentry arguments, bpf_skc_to_tcp_sock() in
 * sockops), which the verifier lets us walk without bpf_probe_read_kernel().
 */
/* Per-call byte accounting (two CPUs may update one connection at once). */
static __always_inline void add_bytes(struct eddy_flow *e, int n, bool sent)
{
	if (sent)
		__sync_fetch_and_add(&e->bytes_sent, n);
	else
		__sync_fetch_and_add(&e->bytes_received, n);
}

/*
 * Names the current task as the flow's process, unless one is known (process context only).
 * The cgroup too, where the socket did not name it: kernels whose sock_cgroup_data
 * is still the tagged union of 5.10 before the stable backport of the 5.15 layout
 * (5.10.223 has the union, 5.10.251 the `cgroup` member) leave sk_cgroup_id() at 0;
 * the task that reads or writes the socket is in the cgroup the socket was
 * created in, for containers.
 */
static __always_inline void fill_owner(struct eddy_flow *e)
{
	if (e->pid == 0) {
		e->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	if (e->cgroup_id == 0)
		e->cgroup_id = bpf_get_current_cgroup_id();
}

static __always_inline void read_tuple(struct sock *sk, struct eddy_tuple *t)
{
	__u16 family = sk->__sk_common.skc_family;

	t->family = family;
	t->protocol = IPPROTO_TCP;
	t->local_port = bpf_ntohs(((struct inet_sock *)sk)->inet_sport);
	t->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET6) {
		__builtin_memcpy(t->local_addr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(t->remote_addr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		__u32 s = sk->__sk_common.skc_rcv_saddr;
		__u32 d = sk->__sk_common.skc_daddr;
		__builtin_memcpy(t->local_addr, &s, 4);
		__builtin_memcpy(t->remote_addr, &d, 4);
	}
}

static __always_inline void snapshot(struct eddy_flow *e, struct sock *sk, __u64 now)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	e->packets_sent = tp->segs_out;
	e->packets_received = tp->segs_in;
	e->retransmits = tp->total_retrans;
	e->rtt_us = tp->srtt_us >> 3;
	e->rtt_var_us = tp->mdev_us >> 2;
	e->snapshot_ns = now;
}

static __always_inline __u64 sk_cgroup_id(struct sock *sk)
{
	if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup)) {
		struct cgroup *cg = sk->sk_cgrp_data.cgroup;
		if (cg)
			return cg->kn->id;
	}
	return 0;
}

/*
 * tp_btf and fentry arguments are typed `struct sock`: the verifier refuses
 * loads beyond it (inet_sock, tcp_sock). bpf_skc_to_tcp_sock() gives the same
 * socket typed as the full tcp_sock (NULL for non-TCP, request and timewait
 * sockets); every helper below takes that pointer, cast back to struct sock.
 */
static __always_inline struct sock *tcp_full(struct sock *sk)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return NULL;
	return (struct sock *)bpf_skc_to_tcp_sock(sk);
}

/* What tcp_add() did. */
#define TRACK_INSERTED 0
#define TRACK_EXISTS 1 /* an entry was there already (another CPU, or a second connect()): left as it is */
#define TRACK_FULL 2   /* the map is full: counted, and the cookie remembered as untracked */

/* Adds a new TCP entry: one insert, and a lookup only when that fails. */
static __always_inline int tcp_add(struct eddy_flow *f, __u64 cookie)
{
	__u8 one = 1;

	if (bpf_map_update_elem(&TCP_FLOWS, &cookie, f, BPF_NOEXIST) == 0) {
		count(EDDY_CTR_TCP_OPENED);
		return TRACK_INSERTED;
	}
	if (bpf_map_lookup_elem(&TCP_FLOWS, &cookie))
		return TRACK_EXISTS;
	count(EDDY_CTR_TCP_MAP_FULL);
	if (bpf_map_update_elem(&UNTRACKED, &cookie, &one, BPF_ANY) != 0)
		count(EDDY_CTR_UNTRACKED_FULL);
	return TRACK_FULL;
}

/* Inserts a new TCP entry and returns it; NULL when the map is full (see tcp_add()). */
static __always_inline struct eddy_flow *tcp_insert(struct eddy_flow *f, __u64 cookie)
{
	if (tcp_add(f, cookie) == TRACK_FULL)
		return NULL;
	return bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
}

/* A new entry for a TCP connection. */
static __always_inline void new_flow(struct eddy_flow *f, struct sock *sk, __u64 cookie, __u8 dir, __u8 flags,
				     __u64 now, bool process_ctx)
{
	read_tuple(sk, &f->tuple);
	f->cookie = cookie;
	f->cgroup_id = sk_cgroup_id(sk);
	f->netns_ino = sk->__sk_common.skc_net.net->ns.inum;
	f->opened_ns = (flags & EDDY_FLAG_PREEXISTING) ? 0 : now;
	f->last_ns = now;
	f->direction = dir;
	f->flags = flags;
	if (process_ctx) {
		f->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(f->comm, sizeof(f->comm));
	}
}

/* Start tracking a TCP connection and return its entry; NULL when the map is full (counted). */
static __always_inline struct eddy_flow *tcp_track(struct sock *sk, __u64 cookie, __u8 dir,
						   __u8 flags, __u64 now, bool process_ctx)
{
	struct eddy_flow f = {};

	new_flow(&f, sk, cookie, dir, flags, now, process_ctx);
	return tcp_insert(&f, cookie);
}

/*
 * tcp_track() for the lifecycle's hot path, whose callers need no pointer to the entry:
 * one map operation where the entry is new. Returns TRACK_*.
 */
static __always_inline int tcp_track_new(struct sock *sk, __u64 cookie, __u8 dir, __u8 flags, __u64 now,
					 bool process_ctx)
{
	struct eddy_flow f = {};

	new_flow(&f, sk, cookie, dir, flags, now, process_ctx);
	return tcp_add(&f, cookie);
}

static __always_inline __u32 config_bits(void)
{
	__u32 zero = 0;
	__u32 *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	return cfg ? *cfg : 0;
}

static __always_inline bool bytes_from_tcp_sock(void)
{
	return config_bits() & EDDY_CFG_BYTES_FROM_TCP_SOCK;
}

/* sk->sk_flags; newer kernels keep it in sock_common (skc_flags). */
static __always_inline unsigned long sock_flags(struct sock *sk)
{
	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		return sk->__sk_common.skc_flags;
	return sk->sk_flags;
}

/*
 * Payload bytes from tcp_sock: data bytes sent minus retransmitted ones, and
 * bytes received minus the FIN, which bytes_received counts as one byte.
 * SOCK_DONE is set by tcp_fin() only (and cleared by tcp_disconnect()), so it
 * says whether a FIN was received; RCV_SHUTDOWN would not (close() sets it).
 * Counters only grow while the socket lives (tcp_disconnect() zeroes them,
 * after CLOSE): live reads keep the largest, and the end's read replaces them
 * (final_counts()).
 */
struct payload_bytes {
	__u64 sent;
	__u64 received;
};

static __always_inline struct payload_bytes tcp_sock_counts(struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct payload_bytes b = { .sent = tp->bytes_sent - tp->bytes_retrans, .received = tp->bytes_received };

	if (b.received > 0 && (sock_flags(sk) & (1UL << SOCK_DONE)))
		b.received -= 1;
	return b;
}

static __always_inline void keep_largest(struct eddy_flow *e, struct payload_bytes b)
{
	if (b.sent > e->bytes_sent)
		e->bytes_sent = b.sent;
	if (b.received > e->bytes_received)
		e->bytes_received = b.received;
}

static __always_inline void tcp_sock_bytes(struct eddy_flow *e, struct sock *sk)
{
	keep_largest(e, tcp_sock_counts(sk));
}

/* The counters as they are (the kprobe path, where nothing else adds to them). */
static __always_inline void set_counts(struct eddy_flow *e, struct payload_bytes b)
{
	e->bytes_sent = b.sent;
	e->bytes_received = b.received;
}

/*
 * The counters as the connection ends (read with the socket locked, so consistent): they
 * replace what the live reads kept, which can be a FIN or a retransmission ahead (read
 * without the lock, keep_largest() made that permanent: +1 byte, rarely). Both zero means
 * tcp_disconnect() ran first (an abort seen at destroy): the live reads stay.
 */
static __always_inline void final_counts(struct eddy_flow *e, struct payload_bytes b)
{
	if (b.sent || b.received)
		set_counts(e, b);
}

/* The connection reached CLOSE: keep the error (set before the state change,
 * cleared once the application reads it) and the final tcp_sock counters
 * (a failed connect() or an abort runs tcp_disconnect(), which zeroes them
 * before the socket is destroyed). */
static __always_inline void mark_closed(struct eddy_flow *e, struct sock *sk, __u64 now)
{
	e->sk_err = sk->sk_err;
	e->closed_ns = now;
	e->last_ns = now;
	if (e->tuple.local_port == 0)
		read_tuple(sk, &e->tuple);
	snapshot(e, sk, now);
	if (bytes_from_tcp_sock())
		final_counts(e, tcp_sock_counts(sk));
}

/* Final record: to the ring buffer, or (ring full) left in the map flagged CLOSED. */
static __always_inline void emit(struct eddy_flow *e, __u64 cookie)
{
	e->flags |= EDDY_FLAG_CLOSED;
	if (bpf_ringbuf_output(&CLOSED, e, sizeof(*e), BPF_RB_NO_WAKEUP) == 0) {
		count(EDDY_CTR_CLOSED_SENT);
		bpf_map_delete_elem(&TCP_FLOWS, &cookie);
	} else {
		/* Kept in the map, flagged CLOSED: userspace collects it on its next poll. */
		count(EDDY_CTR_RINGBUF_FULL);
	}
}

/* The socket is destroyed: nothing more can happen to it. */
static __always_inline void finish(struct eddy_flow *e, struct sock *sk, __u64 cookie, __u64 now)
{
	if (e->closed_ns == 0)
		mark_closed(e, sk, now); /* CLOSE was not seen (e.g. opened before the agent) */
	else if (e->sk_err == 0)
		e->sk_err = sk->sk_err; /* an abort (SO_LINGER 0) sets it after CLOSE */
	if (config_bits() & EDDY_CFG_COUNTERS_AT_CLOSE)
		tcp_sock_bytes(e, sk); /* the kprobe path: the counters, now that no byte can move */
	e->last_ns = now;
	emit(e, cookie);
}

/*
 * A socket that reaches CLOSE once its application has let go of it (SOCK_DEAD: an orphan,
 * in FIN_WAIT*, CLOSING, LAST_ACK or TIME_WAIT) is destroyed right away, in the same call
 * (tcp_done(), tcp_close()), with its counters intact: nothing can zero them in between
 * (tcp_disconnect() runs only on sockets still held). tcp_destroy_sock does the CLOSE
 * work for it, so the usual end of a connection costs one map lookup, not two.
 */
static __always_inline bool sock_dead(struct sock *sk)
{
	return sock_flags(sk) & (1UL << SOCK_DEAD);
}

static __always_inline int on_state(struct sock *arg, int oldstate, int newstate)
{
	struct eddy_flow *e;
	struct sock *sk;
	__u64 cookie, now;

	/* Most transitions (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, LISTEN...) need nothing. */
	if (newstate != TCP_SYN_SENT && newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
		return 0;
	if (newstate == TCP_CLOSE && sock_dead(arg))
		return 0; /* tcp_destroy_sock follows at once (see sock_dead()) */
	sk = tcp_full(arg);
	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		/* connect(): process context, the owner is current. One insert, no lookup: an
		 * entry already there (a second connect() on the socket) is kept. */
		tcp_track_new(sk, cookie, EDDY_DIR_OUTGOING, EDDY_FLAG_SYN_SENT, now, true);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED) {
		if (oldstate == TCP_SYN_RECV &&
		    tcp_track_new(sk, cookie, EDDY_DIR_INCOMING, EDDY_FLAG_ESTABLISHED, now, false) != TRACK_EXISTS)
			/* Passive open (softirq, the owner is not current): inserted established,
			 * or not tracked (map full, counted). */
			return 0;
		/* Active open (or a simultaneous one, already tracked from SYN_SENT). */
		e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
		if (!e)
			return 0;
		/* The local port is bound after SYN_SENT is set: read the tuple again. */
		read_tuple(sk, &e->tuple);
		e->flags |= EDDY_FLAG_ESTABLISHED;
		e->last_ns = now;
		return 0;
	}
	/* CLOSE of a socket the application still holds: it may still read what is queued,
	 * or connect() again (which zeroes the counters): keep them now. */
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (e)
		mark_closed(e, sk, now);
	return 0;
}

static __always_inline int on_destroy(struct sock *arg)
{
	struct sock *sk = tcp_full(arg);
	struct eddy_flow *e;
	__u64 cookie;

	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (!e) {
		bpf_map_delete_elem(&UNTRACKED, &cookie);
		return 0;
	}
	finish(e, sk, cookie, bpf_ktime_get_ns());
	return 0;
}

static __always_inline int on_bytes(struct sock *arg, int ret, int flags, bool sent)
{
	struct eddy_flow *e;
	struct sock *sk;
	__u64 cookie, now;

	if (ret <= 0 || (!sent && (flags & MSG_PEEK)))
		return 0;
	sk = tcp_full(arg);
	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (!e) {
		if (bpf_map_lookup_elem(&UNTRACKED, &cookie)) {
			count(EDDY_CTR_TCP_UNTRACKED);
			return 0;
		}
		/* Opened before the agent started. */
		e = tcp_track(sk, cookie, EDDY_DIR_UNKNOWN,
			      EDDY_FLAG_PREEXISTING | EDDY_FLAG_ESTABLISHED, now, true);
		if (!e)
			return 0;
	}
	add_bytes(e, ret, sent);
	/* Passive connections are opened in softirq: take the owner now. */
	fill_owner(e);
	e->last_ns = now;
	if (now - e->snapshot_ns > SNAPSHOT_INTERVAL_NS)
		snapshot(e, sk, now);
	return 0;
}

static __always_inline int on_retransmit(struct sock *arg)
{
	struct sock *sk = tcp_full(arg);
	struct eddy_flow *e;
	__u64 cookie;

	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (e)
		/* total_retrans is bumped after this tracepoint: count this one. */
		e->retransmits = ((struct tcp_sock *)sk)->total_retrans + 1;
	return 0;
}

/* ---- TCP lifecycle: tp_btf (no tracefs needed) ---- */

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(eddy_state, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(eddy_destroy, struct sock *sk)
{
	return on_destroy(sk);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(eddy_retransmit, struct sock *sk, struct sk_buff *skb)
{
	return on_retransmit(sk);
}

/* ---- TCP payload bytes: tracepoints (kernels >= 6.3, 5.10 backports vary) ---- */

SEC("tp_btf/sock_send_length")
int BPF_PROG(eddy_send_tp, struct sock *sk, int ret, int flags)
{
	return on_bytes(sk, ret, flags, true);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(eddy_recv_tp, struct sock *sk, int ret, int flags)
{
	return on_bytes(sk, ret, flags, false);
}

/* ---- TCP payload bytes: BPF trampolines, for kernels without the tracepoints ---- */

SEC("fexit/tcp_sendmsg")
int BPF_PROG(eddy_send_fexit, struct sock *sk, struct msghdr *msg, __u64 size, int ret)
{
	return on_bytes(sk, ret, 0, true);
}

/*
 * tcp_recvmsg() returns what the application read (tcp_cleanup_rbuf() would
 * not do: tcp_recvmsg() calls it with the running total on every wait, which
 * counts a read that waits twice). Its flags are argument 4 since 5.19
 * (`nonblock` was removed) and argument 5 before: the argument count says which.
 */
SEC("fexit/tcp_recvmsg")
int BPF_PROG(eddy_recv_fexit, struct sock *sk)
{
	__u64 ret = 0, flags = 0;

	if (bpf_get_func_ret(ctx, &ret) ||
	    bpf_get_func_arg(ctx, bpf_get_func_arg_cnt(ctx) >= 6 ? 4 : 3, &flags))
		return 0;
	return on_bytes(sk, (int)ret, (int)flags, false);
}

/* ---- TCP payload bytes: kprobes, for kernels without the tracepoints or trampolines ---- */

/*
 * kprobe arguments are raw pointers: no bpf_get_socket_cookie(), no direct
 * loads. The cookie is read from sk->__sk_common.skc_cookie, which the
 * lifecycle programs generated when the connection opened; connections opened
 * before the agent (cookie not generated, or no entry) are counted as untracked.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __u64); /* struct sock * */
} SENDMSG_ARGS SEC(".maps");

/* kprobe → kretprobe: the socket argument, kept by thread in `map` until the return. */
static __always_inline void stash_sock(void *map, struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ptr = (__u64)sk;

	bpf_map_update_elem(map, &id, &ptr, BPF_ANY);
}

static __always_inline struct sock *take_sock(void *map)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *ptr = bpf_map_lookup_elem(map, &id);
	struct sock *sk;

	if (!ptr)
		return NULL;
	sk = (struct sock *)*ptr;
	bpf_map_delete_elem(map, &id);
	return sk;
}

/* snapshot() through probe reads, for raw socket pointers (kprobes, the probe-read iterator). */
static __always_inline void snapshot_ro(struct eddy_flow *e, struct sock *sk, __u64 now)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	e->packets_sent = BPF_CORE_READ(tp, segs_out);
	e->packets_received = BPF_CORE_READ(tp, segs_in);
	e->retransmits = BPF_CORE_READ(tp, total_retrans);
	e->rtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	e->rtt_var_us = BPF_CORE_READ(tp, mdev_us) >> 2;
	e->snapshot_ns = now;
}

/* tcp_sock_counts() through probe reads. */
static __always_inline struct payload_bytes tcp_sock_counts_ro(struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct payload_bytes b = {
		.sent = BPF_CORE_READ(tp, bytes_sent) - BPF_CORE_READ(tp, bytes_retrans),
		.received = BPF_CORE_READ(tp, bytes_received),
	};
	unsigned long flags;

	if (bpf_core_field_exists(sk->__sk_common.skc_flags))
		flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	else
		flags = BPF_CORE_READ(sk, sk_flags);
	if (b.received > 0 && (flags & (1UL << SOCK_DONE)))
		b.received -= 1;
	return b;
}

/*
 * The kprobe path's byte source: the tcp_sock counters, read at each call's entry and
 * return. Not per-call sums: a kretprobe has few instances (on kernels without
 * CONFIG_PREEMPTION, 5.10's default: one per CPU), held from entry to return, so while
 * that many calls block (readers waiting for data, writers for buffer space) every other
 * call returns unseen, and sums would lose those calls. The entry needs no return value:
 * it takes the owner and the counters as of the call; what a missed return moved shows at
 * the socket's next call, and the final ones are read at CLOSE (EDDY_CFG_COUNTERS_AT_CLOSE).
 * Returns whether the socket is tracked.
 */
static __always_inline bool refresh_raw(struct sock *sk)
{
	__u64 cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	struct eddy_flow *e = cookie ? bpf_map_lookup_elem(&TCP_FLOWS, &cookie) : NULL;
	__u64 now;

	if (!e)
		return false;
	fill_owner(e);
	/* Set, not the largest: two fields read without the socket lock can be a FIN apart
	 * (bytes_received counts it before SOCK_DONE is set); the next read mends that. */
	if (!e->closed_ns)
		set_counts(e, tcp_sock_counts_ro(sk));
	now = bpf_ktime_get_ns();
	e->last_ns = now;
	if (now - e->snapshot_ns > SNAPSHOT_INTERVAL_NS)
		snapshot_ro(e, sk, now);
	return true;
}

static __always_inline int on_bytes_raw(struct sock *sk, int ret)
{
	if (ret > 0 && !refresh_raw(sk))
		count(EDDY_CTR_TCP_UNTRACKED);
	return 0;
}

SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(eddy_send_kprobe, struct sock *sk)
{
	stash_sock(&SENDMSG_ARGS, sk);
	refresh_raw(sk);
	return 0;
}

SEC("kretprobe/tcp_sendmsg")
int BPF_KRETPROBE(eddy_send_kretprobe, int ret)
{
	struct sock *sk = take_sock(&SENDMSG_ARGS);

	return sk ? on_bytes_raw(sk, ret) : 0;
}

/* tcp_recvmsg's socket, from entry to return. A MSG_PEEK read needs no exception here: it
 * moves no counter. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __u64); /* struct sock * */
} RECVMSG_ARGS SEC(".maps");

SEC("kprobe/tcp_recvmsg")
int BPF_KPROBE(eddy_recv_kprobe, struct sock *sk)
{
	stash_sock(&RECVMSG_ARGS, sk);
	refresh_raw(sk);
	return 0;
}

SEC("kretprobe/tcp_recvmsg")
int BPF_KRETPROBE(eddy_recv_kretprobe, int ret)
{
	struct sock *sk = take_sock(&RECVMSG_ARGS);

	return sk ? on_bytes_raw(sk, ret) : 0;
}

/* ---- Live TCP counters: an iterator over every process's sockets ---- */

/*
 * A variant of the iterator (eddy_iter_sockets_ro, below) for kernels whose
 * verifier treats the socket reached from bpf_sock_from_file() as untrusted
 * (6.18: `R1 type=untrusted_ptr_` at bpf_skc_to_tcp_sock), so that no helper
 * may take it. Everything is read through probe reads, and the cookie from
 * skc_cookie: the lifecycle programs generated it when the connection opened,
 * and the agent's start-up sweep (one INET_DIAG dump per namespace) for older
 * ones. A socket still without one cannot be keyed: it is counted
 * (ITER_NO_COOKIE) and picked up when a hook sees it.
 */
static __always_inline void read_tuple_ro(struct sock *sk, struct eddy_tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	t->family = family;
	t->protocol = IPPROTO_TCP;
	t->local_port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	t->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&t->local_addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&t->remote_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(t->local_addr, &s, 4);
		__builtin_memcpy(t->remote_addr, &d, 4);
	}
}


/* tcp_sock_bytes() through probe reads. */
static __always_inline void tcp_sock_bytes_ro(struct eddy_flow *e, struct sock *sk)
{
	keep_largest(e, tcp_sock_counts_ro(sk));
}

/*
 * What both iterators do with a tracked, open socket: name the holder of an
 * incoming connection and copy the live tcp_sock counters (directly, or through
 * probe reads). `probe_reads` is a constant: the other branch is compiled out.
 */
static __always_inline void iter_refresh(struct eddy_flow *e, struct sock *sk, struct task_struct *task,
					 __u64 now, bool probe_reads)
{
	__u64 before;

	if (e->closed_ns)
		return;
	if (e->pid == 0 && task) {
		/* Incoming connections open in softirq: the holder of the socket is the owner. */
		e->pid = task->tgid;
		bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), task->comm);
	}
	before = e->bytes_sent + e->bytes_received + e->packets_sent + e->packets_received;
	if (probe_reads) {
		if (bytes_from_tcp_sock())
			tcp_sock_bytes_ro(e, sk);
		snapshot_ro(e, sk, now);
	} else {
		if (bytes_from_tcp_sock())
			tcp_sock_bytes(e, sk);
		snapshot(e, sk, now);
	}
	if (e->bytes_sent + e->bytes_received + e->packets_sent + e->packets_received != before)
		e->last_ns = now;
}

/*
 * The states in which the iterators take a socket: opened (or closing), not
 * listening, not closed, and not mid-handshake. A connect() in progress sets
 * SYN_SENT before the sockops lifecycle sees TCP_CONNECT_CB: an entry made by
 * the iterator in that window would be taken for a connection opened before the
 * agent (direction unknown). Handshakes are the lifecycle hooks' to record.
 */
static __always_inline bool iter_open_state(int state)
{
	return state != TCP_CLOSE && state != TCP_LISTEN && state != TCP_SYN_SENT && state != TCP_SYN_RECV;
}

/*
 * Run by the agent once per scan (reading an iterator fd runs it to the end).
 * For every TCP socket held by a process, in any network namespace, copies
 * tcp_sock's segments, RTT, retransmits and (when bytes come from tcp_sock)
 * payload bytes into its TCP_FLOWS entry. Sockets without an entry that were
 * not refused one (UNTRACKED) were opened before the agent: they get one.
 * Entries without a process get the one that holds the socket. Prints nothing.
 */
SEC("iter/task_file")
int eddy_iter_sockets(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct eddy_flow *e;
	struct socket *sock;
	struct sock *sk;
	__u64 cookie, now;

	if (!file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = sock->sk;
	if (!sk)
		return 0;
	sk = tcp_full(sk);
	if (!sk)
		return 0;
	if (!iter_open_state(sk->__sk_common.skc_state))
		return 0;
	count(EDDY_CTR_ITER_SOCKETS);
	cookie = bpf_get_socket_cookie(sk);
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (!e) {
		if (bpf_map_lookup_elem(&UNTRACKED, &cookie))
			return 0;
		e = tcp_track(sk, cookie, EDDY_DIR_UNKNOWN, EDDY_FLAG_PREEXISTING | EDDY_FLAG_ESTABLISHED, now,
			      false);
		if (!e)
			return 0;
	}
	iter_refresh(e, sk, task, now, false);
	return 0;
}

/* The probe-read iterators' work on a socket held by `task`. */
static __always_inline int iter_socket_ro(struct socket *sock, struct task_struct *task)
{
	struct eddy_flow *e;
	struct sock *sk;
	__u64 cookie, now;
	__u8 state;

	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (!iter_open_state(state))
		return 0;
	count(EDDY_CTR_ITER_SOCKETS);
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (cookie == 0) {
		count(EDDY_CTR_ITER_NO_COOKIE);
		return 0;
	}
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (!e) {
		struct eddy_flow f = {};

		if (bpf_map_lookup_elem(&UNTRACKED, &cookie))
			return 0;
		read_tuple_ro(sk, &f.tuple);
		f.cookie = cookie;
		if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
			f.cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
		f.netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		f.last_ns = now;
		f.direction = EDDY_DIR_UNKNOWN;
		f.flags = EDDY_FLAG_PREEXISTING | EDDY_FLAG_ESTABLISHED;
		e = tcp_insert(&f, cookie);
		if (!e)
			return 0;
	}
	iter_refresh(e, sk, task, now, true);
	return 0;
}

SEC("iter/task_file")
int eddy_iter_sockets_ro(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct socket *sock;

	if (!file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	return iter_socket_ro(sock, ctx->task);
}

/*
 * The same for kernels without bpf_sock_from_file() (before 5.11: 5.10, the ECS AL2 and
 * Bottlerocket aws-ecs-1 kernel): a socket's file has a sockfs inode (S_IFSOCK) and its
 * struct socket in private_data, whose `file` points back at it; the back-pointer is
 * checked, so a file of any other kind (an O_PATH descriptor of a socket node has no
 * private data) is never read as a socket.
 */
SEC("iter/task_file")
int eddy_iter_sockets_inode(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct socket *sock;

	if (!file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return 0;
	return iter_socket_ro(sock, ctx->task);
}

/* ---- The owner of each connection where the lifecycle cannot name it (sockops) ---- */

/*
 * sockops programs may not ask for the current task, and with the tcp_sock counters as
 * the byte source no per-call hook runs: the owner (pid, comm, and the cgroup where the
 * socket does not name it) is taken once per connection, in the owner's context, at the
 * end of tcp_connect() (which runs sockops' TCP_CONNECT_CB first, so the entry exists)
 * and of inet_accept() (the accepted socket, IPv4 and IPv6). The cookie is the one the
 * lifecycle generated (read, not made: 5.10 has no cookie helper for tracing programs).
 */
static __always_inline void owner_of(struct sock *sk)
{
	__u64 cookie;
	struct eddy_flow *e;

	if (!sk)
		return;
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!cookie)
		return;
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (e)
		fill_owner(e);
}

SEC("fexit/tcp_connect")
int BPF_PROG(eddy_connect_owner, struct sock *sk)
{
	owner_of(sk);
	return 0;
}

SEC("fexit/inet_accept")
int BPF_PROG(eddy_accept_owner, struct socket *sock, struct socket *newsock)
{
	owner_of(BPF_CORE_READ(newsock, sk));
	return 0;
}

/* ---- TCP lifecycle fallback: sockops on the cgroup v2 root ---- */

/*
 * For kernels where the tp_btf lifecycle programs cannot attach. Tracks
 * connections from TCP_CONNECT_CB (outgoing) and PASSIVE_ESTABLISHED_CB
 * (incoming) and asks for state callbacks. The record is final once the
 * socket has reached CLOSE *and* the application has released it
 * (cgroup/sock_release): a half-closed socket reaches CLOSE while the
 * application still reads what is queued. The process is filled by the byte
 * hooks.
 */
SEC("sockops")
int eddy_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	struct eddy_flow *e;
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	struct sock *sk;
	__u64 cookie, now;

	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	/* Of the state changes only CLOSE needs work: leave before any helper call. */
	if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] != TCP_CLOSE)
		return 1;
	bsk = skops->sk;
	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	sk = (struct sock *)tp;
	cookie = bpf_get_socket_cookie(skops);
	now = bpf_ktime_get_ns();

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (tcp_track_new(sk, cookie, EDDY_DIR_OUTGOING, EDDY_FLAG_SYN_SENT, now, false) != TRACK_FULL)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
		if (e) {
			read_tuple(sk, &e->tuple);
			e->flags |= EDDY_FLAG_ESTABLISHED;
			e->last_ns = now;
		}
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (tcp_track_new(sk, cookie, EDDY_DIR_INCOMING, EDDY_FLAG_ESTABLISHED, now, false) != TRACK_FULL)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	case BPF_SOCK_OPS_STATE_CB: /* to CLOSE */
		e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
		if (!e) {
			bpf_map_delete_elem(&UNTRACKED, &cookie);
			break;
		}
		mark_closed(e, sk, now);
		/*
		 * An established connection that the application has released and that goes
		 * straight to CLOSE was aborted by this end (SO_LINGER 0, or unread data): the
		 * kernel sends a RST and sets ECONNRESET only after this callback, so the error
		 * the tp_btf path reads at destroy is not there yet.
		 */
		if (e->sk_err == 0 && (e->flags & EDDY_FLAG_RELEASED) &&
		    (skops->args[0] == TCP_ESTABLISHED || skops->args[0] == TCP_CLOSE_WAIT))
			e->sk_err = ECONNRESET;
		/* The kprobe path's final bytes: the counters at CLOSE (consistent here, and not yet
		 * zeroed by tcp_disconnect()); its live reads stop at closed_ns (refresh_raw()). */
		if (config_bits() & EDDY_CFG_COUNTERS_AT_CLOSE)
			set_counts(e, tcp_sock_counts(sk));
		if (e->flags & EDDY_FLAG_RELEASED)
			emit(e, cookie);
		break;
	}
	return 1;
}

SEC("cgroup/sock_release")
int eddy_sock_release(struct bpf_sock *ctx)
{
	struct eddy_flow *e;
	__u64 cookie;

	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	e = bpf_map_lookup_elem(&TCP_FLOWS, &cookie);
	if (!e) {
		bpf_map_delete_elem(&UNTRACKED, &cookie);
		return 1;
	}
	e->flags |= EDDY_FLAG_RELEASED;
	if (e->closed_ns)
		emit(e, cookie);
	return 1;
}

/* ---- UDP: per packet, peer from the packet ---- */

struct ipv4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct ipv6_hdr {
	__u32 ver_tc_flow;
	__u16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* A packet's addresses from the socket's point of view (egress: source is local). */
static __always_inline void addrs_v4(struct eddy_tuple *t, struct ipv4_hdr *ip, bool egress)
{
	t->family = AF_INET;
	__builtin_memcpy(t->local_addr, egress ? &ip->saddr : &ip->daddr, 4);
	__builtin_memcpy(t->remote_addr, egress ? &ip->daddr : &ip->saddr, 4);
}

static __always_inline void addrs_v6(struct eddy_tuple *t, struct ipv6_hdr *ip6, bool egress)
{
	t->family = AF_INET6;
	__builtin_memcpy(t->local_addr, egress ? ip6->saddr : ip6->daddr, 16);
	__builtin_memcpy(t->remote_addr, egress ? ip6->daddr : ip6->saddr, 16);
}

/*
 * Network namespace of the socket behind a cgroup_skb packet. cgroup_skb
 * cannot walk kernel structs, but it may read kernel memory: copy the socket
 * pointer's value out of the stack (no pointer arithmetic on the socket
 * itself), then read sk->__sk_common.skc_net.net->ns.inum with CO-RE offsets.
 */
static __always_inline __u32 skb_sock_netns(struct bpf_sock *sk)
{
	struct bpf_sock *ptr = sk;
	__u64 addr = 0;
	struct net *net = NULL;

	if (bpf_probe_read_kernel(&addr, sizeof(addr), &ptr) || !addr)
		return 0;
	if (bpf_probe_read_kernel(&net, sizeof(net),
				  (void *)(addr + bpf_core_field_offset(struct sock, __sk_common.skc_net.net))))
		return 0;
	return net ? BPF_CORE_READ(net, ns.inum) : 0;
}

/* 512 KiB: about 870 packets, 43,000 packets/s between two drains (20 ms). Mapped twice
 * into the agent (the wrap-around mapping): 1 MiB of its resident set. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 19);
} DNS_EVENTS SEC(".maps");

/*
 * What a cgroup_skb program may ask about the current task differs by kernel:
 * 6.18 allows bpf_get_current_pid_tgid() and bpf_get_current_comm(), 6.12 the
 * pid only, 6.1 and 5.10 neither. Each cgroup_skb program is built once per
 * mode (a constant argument: the calls a mode does not make are compiled out)
 * and the agent attaches the first that the kernel accepts. Where the program
 * cannot name the sender, userspace fills in the comm from the pid (OWNER_PID)
 * or reports both as unknown (OWNER_NONE).
 */
#define OWNER_NONE 0
#define OWNER_PID 1
#define OWNER_FULL 2

static __always_inline void current_owner(__u32 *pid, char *comm, int owner)
{
	if (owner >= OWNER_PID)
		*pid = bpf_get_current_pid_tgid() >> 32;
	if (owner >= OWNER_FULL)
		bpf_get_current_comm(comm, EDDY_COMM_LEN);
}

/* n in [1, EDDY_DNS_CAPTURE] for `avail` >= 1 bytes, in a form the verifier can bound (the barrier
 * keeps clang from folding the mask away). */
static __always_inline __u32 dns_capture_len(__u32 avail)
{
	__u32 n = avail - 1;

	if (n > EDDY_DNS_CAPTURE - 1)
		n = EDDY_DNS_CAPTURE - 1;
	asm volatile("" : "+r"(n));
	n &= EDDY_DNS_CAPTURE - 1;
	return n + 1;
}

/* Everything of a DNS event but its payload. */
static __always_inline void dns_fill(struct eddy_dns_event *ev, struct eddy_tuple *t, __u64 cgroup_id,
				     __u32 netns, __u32 wire_len, __u32 n, bool egress, int owner)
{
	ev->tuple = *t;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cgroup_id = cgroup_id;
	ev->pid = 0;
	__builtin_memset(ev->comm, 0, sizeof(ev->comm));
	if (egress)
		current_owner(&ev->pid, ev->comm, owner);
	ev->netns_ino = netns;
	ev->wire_len = wire_len;
	ev->captured = n;
	ev->direction = egress ? EDDY_DIR_OUTGOING : EDDY_DIR_INCOMING;
	ev->_pad0 = 0;
}

/* Copies the L4 payload at `off` (a DNS message, or its TCP length prefix) to DNS_EVENTS. */
static __always_inline void dns_emit(struct __sk_buff *skb, struct eddy_tuple *t, __u32 off, bool egress,
				     struct bpf_sock *sk, int owner)
{
	struct eddy_dns_event *ev;
	__u32 len = skb->len;
	__u32 n;

	if (len <= off)
		return; /* no payload (a pure TCP ACK) */
	n = dns_capture_len(len - off);
	ev = bpf_ringbuf_reserve(&DNS_EVENTS, sizeof(*ev), 0);
	if (!ev) {
		count(EDDY_CTR_DNS_RINGBUF_FULL);
		return;
	}
	if (bpf_skb_load_bytes(skb, off, ev->payload, n)) {
		bpf_ringbuf_discard(ev, 0);
		count(EDDY_CTR_DNS_UNPARSED);
		return;
	}
	dns_fill(ev, t, bpf_skb_cgroup_id(skb), skb_sock_netns(sk), len - off, n, egress, owner);
	bpf_ringbuf_submit(ev, 0);
	count(EDDY_CTR_DNS_CAPTURED);
}

/* Addresses of a packet from the socket's point of view; returns the L3 header length, 0 if unparsed. */
static __always_inline __u32 skb_addrs(struct __sk_buff *skb, struct eddy_tuple *t, __u8 want_proto, bool egress)
{
	__u8 first;

	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		return 0;
	if ((first >> 4) == 4) {
		struct ipv4_hdr ip;
		__u32 l3len;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) || ip.protocol != want_proto)
			return 0;
		l3len = (ip.ver_ihl & 0x0f) * 4;
		if (l3len < sizeof(ip))
			return 0;
		addrs_v4(t, &ip, egress);
		return l3len;
	}
	if ((first >> 4) == 6) {
		struct ipv6_hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != want_proto)
			return 0;
		addrs_v6(t, &ip6, egress);
		return sizeof(ip6);
	}
	return 0;
}

/* DNS over TCP: the socket's ports say it is DNS; copy the segment's payload. */
static __always_inline void dns_tcp(struct __sk_buff *skb, struct bpf_sock *sk, bool egress, int owner)
{
	struct eddy_tuple t = {};
	__u32 l3len, off;
	__u16 ports[2];
	__u8 doff;

	l3len = skb_addrs(skb, &t, IPPROTO_TCP, egress);
	if (!l3len || bpf_skb_load_bytes(skb, l3len, ports, sizeof(ports)) ||
	    bpf_skb_load_bytes(skb, l3len + 12, &doff, 1)) {
		count(EDDY_CTR_DNS_UNPARSED);
		return;
	}
	t.protocol = IPPROTO_TCP;
	t.local_port = bpf_ntohs(egress ? ports[0] : ports[1]);
	t.remote_port = bpf_ntohs(egress ? ports[1] : ports[0]);
	off = l3len + (doff >> 4) * 4;
	dns_emit(skb, &t, off, egress, sk, owner);
}

/* Inserts a new UDP entry (or finds the one another CPU inserted first); NULL when the map is full (counted). */
static __always_inline struct eddy_flow *udp_insert(struct eddy_udp_key *key, struct eddy_flow *f)
{
	struct eddy_flow *e;

	if (bpf_map_update_elem(&UDP_FLOWS, key, f, BPF_NOEXIST) == 0)
		return bpf_map_lookup_elem(&UDP_FLOWS, key);
	e = bpf_map_lookup_elem(&UDP_FLOWS, key);
	if (!e)
		count(EDDY_CTR_UDP_MAP_FULL);
	return e;
}

/*
 * Adds a datagram (or a GSO batch of `segs`) to its flow, creating the entry on the flow's
 * first packet. The new entry's cgroup and network namespace come from the packet program's
 * context (`skb`, `bsk`) or from the socket (`sk`, the function hooks): one of the two is NULL.
 */
static __always_inline void udp_account(struct eddy_udp_key *key, __u64 payload, __u32 segs, bool egress,
					int owner, struct __sk_buff *skb, struct bpf_sock *bsk, struct sock *sk)
{
	__u64 now = bpf_ktime_get_ns();
	struct eddy_flow *e = bpf_map_lookup_elem(&UDP_FLOWS, key);

	if (!e) {
		struct eddy_flow f = {};
		f.tuple = key->tuple;
		f.cookie = key->cookie;
		f.opened_ns = now;
		f.direction = egress ? EDDY_DIR_OUTGOING : EDDY_DIR_INCOMING;
		if (egress)
			/* Egress runs in the sender's context. */
			current_owner(&f.pid, f.comm, owner);
		if (skb) {
			f.cgroup_id = bpf_skb_cgroup_id(skb);
			f.netns_ino = skb_sock_netns(bsk);
		} else if (sk) {
			f.cgroup_id = sk_cgroup_id(sk);
			f.netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		}
		e = udp_insert(key, &f);
		if (!e)
			return;
	}
	if (egress) {
		__sync_fetch_and_add(&e->bytes_sent, payload);
		__sync_fetch_and_add(&e->packets_sent, segs);
		if (e->pid == 0)
			current_owner(&e->pid, e->comm, owner);
	} else {
		__sync_fetch_and_add(&e->bytes_received, payload);
		__sync_fetch_and_add(&e->packets_received, segs);
	}
	e->last_ns = now;
}

/* Whether a UDP packet's flow is counted (and its DNS copied) under the configuration. */
#define UDP_COUNT 1
#define UDP_DNS 2
static __always_inline int udp_wanted(struct eddy_tuple *t)
{
	__u32 bits = config_bits();
	int want = (bits & EDDY_CFG_NO_UDP_FLOWS) ? 0 : UDP_COUNT;

	if ((t->local_port == EDDY_DNS_PORT || t->remote_port == EDDY_DNS_PORT) && (bits & EDDY_CFG_DNS))
		want |= UDP_DNS;
	return want;
}

static __always_inline int udp_count(struct __sk_buff *skb, bool egress, int owner)
{
	struct eddy_udp_key key = {};
	struct bpf_sock *sk;
	__u32 l3len, segs, len;
	__u16 ports[2];
	__u8 first;
	__u64 payload;
	int want;

	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 1;
	if (sk->protocol == IPPROTO_TCP) {
		/* Only DNS over TCP: the socket's ports decide, no packet read otherwise. */
		if ((sk->src_port == EDDY_DNS_PORT || sk->dst_port == bpf_htons(EDDY_DNS_PORT)) &&
		    (config_bits() & (EDDY_CFG_DNS | EDDY_CFG_NO_TCP_DNS)) == EDDY_CFG_DNS)
			dns_tcp(skb, sk, egress, owner);
		return 1;
	}
	if (sk->protocol != IPPROTO_UDP)
		return 1;
	if (config_bits() & EDDY_CFG_SKB_TCP_ONLY)
		return 1; /* UDP is counted by the UDP function hooks */

	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		goto unparsed;
	if ((first >> 4) == 4) {
		struct ipv4_hdr ip;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			goto unparsed;
		if (ip.protocol != IPPROTO_UDP)
			return 1; /* e.g. an ICMP error delivered to the socket */
		l3len = (ip.ver_ihl & 0x0f) * 4;
		if (l3len < sizeof(ip))
			goto unparsed;
		addrs_v4(&key.tuple, &ip, egress);
	} else if ((first >> 4) == 6) {
		struct ipv6_hdr ip6;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			goto unparsed;
		if (ip6.nexthdr != IPPROTO_UDP)
			goto unparsed; /* extension headers are not walked */
		l3len = sizeof(ip6);
		addrs_v6(&key.tuple, &ip6, egress);
	} else {
		goto unparsed;
	}
	if (bpf_skb_load_bytes(skb, l3len, ports, sizeof(ports)))
		goto unparsed;
	key.tuple.protocol = IPPROTO_UDP;
	key.tuple.local_port = bpf_ntohs(egress ? ports[0] : ports[1]);
	key.tuple.remote_port = bpf_ntohs(egress ? ports[1] : ports[0]);
	want = udp_wanted(&key.tuple);
	if (want & UDP_DNS)
		dns_emit(skb, &key.tuple, l3len + 8, egress, sk, owner);
	if (!(want & UDP_COUNT))
		return 1;
	key.cookie = bpf_get_socket_cookie(skb);

	segs = skb->gso_segs;
	if (segs == 0)
		segs = 1;
	len = skb->len;
	if (len < l3len + 8 * segs)
		goto unparsed;
	payload = len - l3len - 8 * segs;
	udp_account(&key, payload, segs, egress, owner, skb, sk, NULL);
	return 1;

unparsed:
	count(EDDY_CTR_UDP_UNPARSED);
	return 1;
}

/* ---- UDP from the UDP functions (BPF trampolines): no program on TCP packets ---- */

/*
 * Where BPF trampolines and the tracing programs' socket cookie helper (5.12) exist,
 * datagrams are counted where only UDP passes: ip_send_skb()/ip6_send_skb() (every UDP
 * datagram, built, in the sender's context; also ICMP, raw and ping sockets', left out
 * by the socket's protocol) and __udp_enqueue_schedule_skb() (every datagram queued to
 * a UDP socket, IPv4 and IPv6, after the socket filter, where cgroup_skb ingress runs).
 * The headers are read from the packet's buffer (skb->head at the network and
 * transport header offsets) through probe reads; the counts are those of the
 * cgroup_skb programs: UDP payload bytes (every segment's header off for GSO) and
 * datagrams. A DNS payload is copied from the linear part of the packet.
 */
static __always_inline void dns_emit_fn(struct eddy_tuple *t, unsigned char *src, __u32 wire_len, __u32 avail,
					struct sock *sk, bool egress)
{
	struct eddy_dns_event *ev;
	__u32 n;

	if (wire_len == 0)
		return;
	if (avail == 0) {
		count(EDDY_CTR_DNS_UNPARSED); /* all of it in page fragments */
		return;
	}
	n = dns_capture_len(avail < wire_len ? avail : wire_len);
	ev = bpf_ringbuf_reserve(&DNS_EVENTS, sizeof(*ev), 0);
	if (!ev) {
		count(EDDY_CTR_DNS_RINGBUF_FULL);
		return;
	}
	if (bpf_probe_read_kernel(ev->payload, n, src)) {
		bpf_ringbuf_discard(ev, 0);
		count(EDDY_CTR_DNS_UNPARSED);
		return;
	}
	dns_fill(ev, t, sk_cgroup_id(sk), BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum), wire_len, n, egress,
		 OWNER_FULL);
	bpf_ringbuf_submit(ev, 0);
	count(EDDY_CTR_DNS_CAPTURED);
}

static __always_inline int udp_fn(struct sock *sk, struct sk_buff *skb, bool egress)
{
	struct eddy_udp_key key = {};
	unsigned char *head, *data;
	__u32 nh, th, off, linear, total, segs;
	__u16 ports[2], gso_segs = 0;
	__u8 first;
	__u64 payload;
	int want;

	if (!sk || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	head = skb->head;
	data = skb->data;
	nh = skb->network_header;
	th = skb->transport_header;
	if (bpf_probe_read_kernel(&first, 1, head + nh))
		goto unparsed;
	if ((first >> 4) == 4) {
		struct ipv4_hdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.protocol != IPPROTO_UDP)
			goto unparsed;
		addrs_v4(&key.tuple, &ip, egress);
	} else if ((first >> 4) == 6) {
		struct ipv6_hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			goto unparsed;
		addrs_v6(&key.tuple, &ip6, egress);
	} else {
		goto unparsed;
	}
	if (bpf_probe_read_kernel(ports, sizeof(ports), head + th))
		goto unparsed;
	key.tuple.protocol = IPPROTO_UDP;
	key.tuple.local_port = bpf_ntohs(egress ? ports[0] : ports[1]);
	key.tuple.remote_port = bpf_ntohs(egress ? ports[1] : ports[0]);

	/* Bytes from the UDP header to the end, wherever skb->data points (ingress has pulled
	 * the UDP header by now, egress points at the IP header). */
	off = data - head;
	total = skb->len + off - th;
	if (total < 8 || total > 0x10000 * 64)
		goto unparsed;
	want = udp_wanted(&key.tuple);
	if (want & UDP_DNS) {
		/* The linear part ends at off + len - data_len. */
		linear = off + skb->len - skb->data_len;
		dns_emit_fn(&key.tuple, head + th + 8, total - 8, linear > th + 8 ? linear - th - 8 : 0, sk, egress);
	}
	if (!(want & UDP_COUNT))
		return 0;
	bpf_probe_read_kernel(&gso_segs, sizeof(gso_segs),
			      head + skb->end + bpf_core_field_offset(struct skb_shared_info, gso_segs));
	segs = gso_segs ? gso_segs : 1;
	if (total < 8 * segs)
		goto unparsed;
	payload = total - 8 * segs;
	key.cookie = bpf_get_socket_cookie(sk);
	udp_account(&key, payload, segs, egress, OWNER_FULL, NULL, NULL, sk);
	return 0;

unparsed:
	count(EDDY_CTR_UDP_UNPARSED);
	return 0;
}

SEC("fentry/ip_send_skb")
int BPF_PROG(eddy_udp_send_fn, struct net *net, struct sk_buff *skb)
{
	return udp_fn(skb->sk, skb, true);
}

SEC("fentry/ip6_send_skb")
int BPF_PROG(eddy_udp6_send_fn, struct sk_buff *skb)
{
	return udp_fn(skb->sk, skb, true);
}

SEC("fentry/__udp_enqueue_schedule_skb")
int BPF_PROG(eddy_udp_recv_fn, struct sock *sk, struct sk_buff *skb)
{
	return udp_fn(sk, skb, false);
}

/* ---- UDP senders on kernels whose cgroup_skb programs cannot name them ---- */

/*
 * Where the UDP programs run without task helpers (OWNER_NONE: 5.10, 6.1),
 * the sender is taken at the end of udp_sendmsg()/udpv6_sendmsg(), in the
 * sender's context: by then the egress program has generated the socket's
 * cookie, which keys UDP_OWNERS. The agent joins it to the UDP flows by cookie.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* socket cookie */
	__type(value, struct eddy_owner);
} UDP_OWNERS SEC(".maps");

static __always_inline void note_udp_sender(__u64 cookie, int ret)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct eddy_owner *cur, o = {};

	if (ret < 0 || cookie == 0)
		return;
	cur = bpf_map_lookup_elem(&UDP_OWNERS, &cookie);
	if (cur && cur->pid == pid)
		return;
	o.pid = pid;
	bpf_get_current_comm(o.comm, sizeof(o.comm));
	bpf_map_update_elem(&UDP_OWNERS, &cookie, &o, BPF_ANY);
}

SEC("fexit/udp_sendmsg")
int BPF_PROG(eddy_udp_send_fexit, struct sock *sk, struct msghdr *msg, __u64 len, int ret)
{
	note_udp_sender(sk->__sk_common.skc_cookie.counter, ret);
	return 0;
}

SEC("fexit/udpv6_sendmsg")
int BPF_PROG(eddy_udp6_send_fexit, struct sock *sk, struct msghdr *msg, __u64 len, int ret)
{
	note_udp_sender(sk->__sk_common.skc_cookie.counter, ret);
	return 0;
}

/* The same with kprobes (kernels without BPF trampolines): the socket from entry to return. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __u64); /* struct sock * */
} UDP_SEND_ARGS SEC(".maps");

static __always_inline int udp_send_returned(int ret)
{
	struct sock *sk = take_sock(&UDP_SEND_ARGS);

	if (sk)
		note_udp_sender(BPF_CORE_READ(sk, __sk_common.skc_cookie.counter), ret);
	return 0;
}

SEC("kprobe/udp_sendmsg")
int BPF_KPROBE(eddy_udp_send_kprobe, struct sock *sk)
{
	stash_sock(&UDP_SEND_ARGS, sk);
	return 0;
}

SEC("kretprobe/udp_sendmsg")
int BPF_KRETPROBE(eddy_udp_send_kretprobe, int ret)
{
	return udp_send_returned(ret);
}

SEC("kprobe/udpv6_sendmsg")
int BPF_KPROBE(eddy_udp6_send_kprobe, struct sock *sk)
{
	stash_sock(&UDP_SEND_ARGS, sk);
	return 0;
}

SEC("kretprobe/udpv6_sendmsg")
int BPF_KRETPROBE(eddy_udp6_send_kretprobe, int ret)
{
	return udp_send_returned(ret);
}

/* One egress/ingress pair per owner mode (see current_owner()). */
#define UDP_PROGRAMS(suffix, owner)                                    \
	SEC("cgroup_skb/egress")                                       \
	int eddy_udp_egress##suffix(struct __sk_buff *skb)             \
	{                                                              \
		return udp_count(skb, true, owner);                    \
	}                                                              \
	SEC("cgroup_skb/ingress")                                      \
	int eddy_udp_ingress##suffix(struct __sk_buff *skb)            \
	{                                                              \
		return udp_count(skb, false, owner);                   \
	}

UDP_PROGRAMS(, OWNER_FULL)
UDP_PROGRAMS(_pid, OWNER_PID)
UDP_PROGRAMS(_noowner, OWNER_NONE)
