//! UDP flows, connected and unconnected sockets, IPv4 and IPv6, between two namespaces. Each (local, remote)
//! pair is one record with exact payload bytes and datagram counts, on both ends; an unconnected server socket
//! has one record per peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use eddy_tests::*;

const RECV_TIMEOUT: Duration = Duration::from_secs(3);

/// Echoes `count` datagrams back to their senders.
fn echo(socket: UdpSocket, count: usize) {
    socket.set_read_timeout(Some(RECV_TIMEOUT)).expect("set_read_timeout");
    let mut buf = vec![0u8; 2048];
    for i in 0..count {
        let (n, peer) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("echo server: datagram {i} of {count} not received: {e}"));
        socket.send_to(&buf[..n], peer).expect("echo send_to");
    }
}

/// Expected totals of one flow, (bytes, datagrams) each way (the echo makes both ways equal).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    bytes: u64,
    datagrams: u64,
}

/// UDP hook names as `/status` shows them: disabling the first selects the pid-only variant,
/// disabling both the variant without any process helper (kernels 6.12, and 6.1 / 5.10).
const UDP_OWNER_FULL: &str = "cgroup_skb/ingress+egress";
const UDP_OWNER_PID: &str = "cgroup_skb/ingress+egress (pid only)";

fn run(ipv6: bool) {
    run_with(ipv6, &[]);
}

/// Every record names this process (each socket sent datagrams) wherever the kernel loaded a hook
/// that can name it, with its comm; elsewhere nobody, never another process.
fn run_with(ipv6: bool, disabled: &[&str]) {
    if !require_privileges() {
        return;
    }
    let client_ns = NetNs::new("udp-c");
    let server_ns = NetNs::new("udp-s");
    let link = veth_link(&client_ns, &server_ns);
    let (client_ip, server_ip): (IpAddr, IpAddr) =
        if ipv6 { (link.a_v6.into(), link.b_v6.into()) } else { (link.a_v4.into(), link.b_v4.into()) };

    let (server1, server2) = server_ns.run(move || {
        (
            UdpSocket::bind((server_ip, 0)).expect("bind server 1"),
            UdpSocket::bind((server_ip, 0)).expect("bind server 2"),
        )
    });
    let s1 = server1.local_addr().expect("server 1 address");
    let s2 = server2.local_addr().expect("server 2 address");
    let (cookie_s1, cookie_s2) = (socket_cookie(&server1), socket_cookie(&server2));
    // Client A: connected to server 1; client B: unconnected, talks to both servers.
    let (client_a, client_b) = client_ns.run(move || {
        let a = UdpSocket::bind((client_ip, 0)).expect("bind client A");
        a.connect(s1).expect("connect client A");
        (a, UdpSocket::bind((client_ip, 0)).expect("bind client B"))
    });
    let a = client_a.local_addr().expect("client A address");
    let b = client_b.local_addr().expect("client B address");
    let (cookie_a, cookie_b) = (socket_cookie(&client_a), socket_cookie(&client_b));
    let a_sizes = [100usize, 200, 300];
    let b_plan = [(s1, 150usize), (s1, 250), (s2, 50)];

    let capture = Capture::start_with(CaptureOptions::with_disabled_hooks(Duration::from_secs(5), disabled));
    // All I/O runs on threads inside the sockets' namespaces, like a containerised process would do it.
    let echo1 = server_ns.spawn(move || echo(server1, 3 + 2));
    let echo2 = server_ns.spawn(move || echo(server2, 1));
    client_ns.run(move || {
        client_a.set_read_timeout(Some(RECV_TIMEOUT)).expect("set_read_timeout");
        client_b.set_read_timeout(Some(RECV_TIMEOUT)).expect("set_read_timeout");
        let mut buf = vec![0u8; 2048];
        for &size in &a_sizes {
            client_a.send(&payload(size, 4)).expect("client A send");
            let n =
                client_a.recv(&mut buf).unwrap_or_else(|e| panic!("client A: echo of {size} B lost: {e}"));
            assert_eq!(n, size);
        }
        for &(server, size) in &b_plan {
            client_b.send_to(&payload(size, 6), server).expect("client B send_to");
            let (n, from) = client_b
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("client B: echo of {size} B lost: {e}"));
            assert_eq!((n, from), (size, server));
        }
    });
    join(echo1);
    join(echo2);
    capture.assert_window_open("the datagrams");
    // Whether this kernel lets some program name the sender (in cgroup_skb, or at udp_sendmsg).
    let process_hook = capture.chosen_hook("udp_process");
    eprintln!(
        "disabled {disabled:?}: udp is {:?}, udp_process is {process_hook:?}",
        capture.chosen_hook("udp")
    );
    let named_expected = process_hook.as_deref().is_some_and(|h| h != "none");
    let records = capture.finish();

    // (local, remote) -> (totals, cookie, netns)
    let mut expected: HashMap<(SocketAddr, SocketAddr), (Totals, u64, u64)> = HashMap::new();
    let a_totals = Totals { bytes: a_sizes.iter().sum::<usize>() as u64, datagrams: a_sizes.len() as u64 };
    expected.insert((a, s1), (a_totals, cookie_a, client_ns.inode()));
    expected.insert((s1, a), (a_totals, cookie_s1, server_ns.inode()));
    for &(server, size) in &b_plan {
        let server_cookie = if server == s1 { cookie_s1 } else { cookie_s2 };
        for (key, cookie, ns) in
            [((b, server), cookie_b, client_ns.inode()), ((server, b), server_cookie, server_ns.inode())]
        {
            let entry = expected.entry(key).or_insert((Totals::default(), cookie, ns));
            entry.0.bytes += size as u64;
            entry.0.datagrams += 1;
        }
    }

    let family = if ipv6 { "ipv6" } else { "ipv4" };
    let own_comm = std::fs::read_to_string("/proc/self/comm").expect("own comm").trim_end().to_string();
    let mut c = Checker::new();
    let mut keys: Vec<_> = expected.keys().copied().collect();
    keys.sort();
    for (local, remote) in keys {
        let (totals, cookie, netns) = expected[&(local, remote)];
        let ctx = format!("udp {local} -> {remote}");
        match find_records(&records, "udp", local, remote).as_slice() {
            [r] => {
                c.eq(&ctx, "family", r.family.as_str(), family);
                // The side that sent first is the client; "unknown" is allowed for UDP.
                let direction = if netns == client_ns.inode() { "outgoing" } else { "incoming" };
                c.check(
                    r.direction == direction || r.direction == "unknown",
                    &ctx,
                    format!("direction {:?}, expected {direction:?} or \"unknown\"", r.direction),
                );
                c.eq(&ctx, "bytes_sent", r.bytes_sent, totals.bytes);
                c.eq(&ctx, "bytes_received", r.bytes_received, totals.bytes);
                c.eq(&ctx, "packets_sent", r.packets_sent, totals.datagrams);
                c.eq(&ctx, "packets_received", r.packets_received, totals.datagrams);
                c.eq(&ctx, "netns", r.netns, Some(netns));
                c.eq(&ctx, "cookie", r.cookie, Some(cookie));
                c.eq(&ctx, "rtt_us", r.rtt_us, None);
                c.eq(&ctx, "failure", r.failure.as_deref(), None);
                if named_expected || r.pid.is_some() {
                    c.eq(&ctx, "pid", r.pid, Some(std::process::id()));
                    // The sending thread's name (from the program; the namespace helpers name their
                    // threads "in-<namespace>") or, where the comm comes from /proc, the process's.
                    c.check(
                        r.comm.as_deref().is_some_and(|n| n == own_comm || n.starts_with("in-eddy-udp-")),
                        &ctx,
                        format!(
                            "comm {:?}: neither this process ({own_comm:?}) nor one of its threads",
                            r.comm
                        ),
                    );
                }
            }
            found => c.fail(format!("{ctx}: {} records, expected 1", found.len())),
        }
    }
    c.finish(&format!("records of this test:\n{}", describe_records(&records, &[a, b, s1, s2])));
}

#[test]
fn udp_flows_exact_ipv4() {
    run(false);
}

#[test]
fn udp_flows_exact_ipv6() {
    run(true);
}

/// The UDP program variant for kernels that refuse `bpf_get_current_comm` in cgroup_skb (6.12):
/// the comm comes from `/proc/<pid>/comm`.
#[test]
fn udp_flows_exact_pid_only_variant() {
    run_with(false, &[UDP_OWNER_FULL]);
}

/// The variant without any task helper (6.1, 5.10): exact counts; the process comes from the
/// `udp_sendmsg` hook where the kernel allows one, else it is null.
#[test]
fn udp_flows_exact_no_process_variant_ipv6() {
    run_with(true, &[UDP_OWNER_FULL, UDP_OWNER_PID]);
}

/// A socket belongs to the namespace it was created in, whichever thread uses it: a UDP socket created in a
/// namespace and then used from a thread of the host namespace must still be reported in its own namespace.
#[test]
fn udp_netns_is_the_sockets_not_the_senders() {
    if !require_privileges() {
        return;
    }
    let ns = NetNs::new("udp-nsowner");
    let (server, client) = ns.run(|| {
        (
            UdpSocket::bind("127.0.0.1:0").expect("bind server"),
            UdpSocket::bind("127.0.0.1:0").expect("bind client"),
        )
    });
    let (s, c_addr) =
        (server.local_addr().expect("server address"), client.local_addr().expect("client address"));
    let capture = Capture::start(Duration::from_secs(3));
    // Used from this (host-namespace) thread.
    client.send_to(&payload(77, 1), s).expect("send_to");
    server.set_read_timeout(Some(RECV_TIMEOUT)).expect("set_read_timeout");
    let mut buf = [0u8; 128];
    let (n, from) = server.recv_from(&mut buf).expect("recv_from");
    assert_eq!((n, from), (77, c_addr));
    capture.assert_window_open("the datagram");
    let records = capture.finish();
    let mut c = Checker::new();
    for (local, remote) in [(c_addr, s), (s, c_addr)] {
        let ctx = format!(
            "udp {local} -> {remote} (sockets in netns {}, used from netns {})",
            ns.inode(),
            current_netns_inode()
        );
        match find_records(&records, "udp", local, remote).as_slice() {
            [r] => {
                if remote == s {
                    c.eq(&ctx, "netns", r.netns, Some(ns.inode()));
                } else if let Some(netns) = r.netns {
                    // A receive-only flow may have no namespace (null is allowed), but never a wrong one.
                    c.eq(&ctx, "netns", netns, ns.inode());
                }
                c.eq(&ctx, "bytes", r.bytes_sent + r.bytes_received, 77);
            }
            found => c.fail(format!("{ctx}: {} records, expected 1", found.len())),
        }
    }
    c.finish(&format!("records of this test:\n{}", describe_records(&records, &[s, c_addr])));
}
