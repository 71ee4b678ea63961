/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0) */
/*
 * The few kernel types Eddy reads, declared for CO-RE: field offsets are
 * relocated at load time against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux), so only names and types matter here, not layout.
 */
#ifndef EDDY_VMLINUX_SUBSET_H
#define EDDY_VMLINUX_SUBSET_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h> /* struct pt_regs, for kprobes (bpf_tracing.h) */

typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__u32 u6_addr32[4];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	atomic64_t skc_cookie;
	unsigned long skc_flags; /* 6.13+: sk_flags moved here */
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	unsigned long sk_flags;
	__u16 sk_protocol;
	int sk_err;
	int sk_err_soft;
	struct sock_cgroup_data sk_cgrp_data;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 segs_in;
	__u32 segs_out;
	__u32 srtt_us;
	__u32 mdev_us;
	__u32 total_retrans;
	__u64 bytes_received;
	__u64 bytes_acked;
	__u64 bytes_sent;
	__u64 bytes_retrans;
} __attribute__((preserve_access_index));

struct file;

struct socket {
	struct sock *sk;
	struct file *file;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));
struct bpf_iter_meta;

struct task_struct {
	int tgid;
	char comm[16];
} __attribute__((preserve_access_index));

/* Context of iter/task_file programs: every open file of every process. */
struct bpf_iter__task_file {
	union {
		struct bpf_iter_meta *meta;
	};
	union {
		struct task_struct *task;
	};
	__u32 fd;
	union {
		struct file *file;
	};
} __attribute__((preserve_access_index));

struct msghdr;

/* The parts of a packet the UDP function hooks read (64-bit: `end` is an offset from `head`). */
struct skb_shared_info {
	unsigned short gso_segs;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct sock *sk;
	unsigned int len;
	unsigned int data_len;
	__u16 transport_header;
	__u16 network_header;
	unsigned int end;
	unsigned char *head;
	unsigned char *data;
} __attribute__((preserve_access_index));

#endif /* EDDY_VMLINUX_SUBSET_H */
