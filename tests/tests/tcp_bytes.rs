//! Exact TCP byte and segment accounting, both ends, across two network namespaces joined by a veth pair.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use eddy_tests::*;

/// (client→server, server→client) payload bytes per connection.
const PLAN: [(usize, usize); 4] = [(0, 0), (1, 1), (65_536, 1_000), (10 << 20, 64 << 10)];

struct Conn {
    local: SocketAddr,
    cookie: u64,
    received: usize,
    /// Final segment counts from tcp_info (segs_out, segs_in).
    segs: (u32, u32),
}

/// When the client record must name the process.
#[derive(Clone, Copy, PartialEq)]
enum Pid {
    /// Always: the connect() hook saw it.
    Always,
    /// Once a byte moved: only the byte hooks see the process.
    WithBytes,
    /// Never: neither the lifecycle nor the byte source runs in the process's context.
    Never,
}

/// Which hooks the agent runs with.
#[derive(Clone, Copy)]
struct Mode {
    disabled: &'static [&'static str],
    pid: Pid,
    /// The socket iterator the agent must have chosen, where the test forces one.
    live: Option<&'static str>,
}

const PREFERRED: Mode = Mode { disabled: &[], pid: Pid::Always, live: None };

fn run(ipv6: bool) {
    run_mode(ipv6, PREFERRED);
}

fn run_mode(ipv6: bool, mode: Mode) {
    if !require_privileges() {
        return;
    }
    let client_ns = NetNs::new("bytes-c");
    let server_ns = NetNs::new("bytes-s");
    let link = veth_link(&client_ns, &server_ns);
    let (client_ip, server_ip): (IpAddr, IpAddr) =
        if ipv6 { (link.a_v6.into(), link.b_v6.into()) } else { (link.a_v4.into(), link.b_v4.into()) };
    let listener = server_ns.run(move || TcpListener::bind((server_ip, 0)).expect("bind server"));
    let server_addr = listener.local_addr().expect("server address");

    let capture =
        Capture::start_with(CaptureOptions::with_disabled_hooks(Duration::from_secs(8), mode.disabled));
    let server = server_ns.spawn(move || {
        PLAN.iter()
            .map(|&(_, to_client)| {
                let (stream, peer) = listener.accept().expect("accept");
                let cookie = socket_cookie(&stream);
                let x = tcp_exchange(stream, to_client);
                Conn {
                    local: peer,
                    cookie,
                    received: x.received,
                    segs: (x.info.tcpi_segs_out, x.info.tcpi_segs_in),
                }
            })
            .collect::<Vec<_>>()
    });
    let clients = client_ns.run(move || {
        PLAN.iter()
            .map(|&(to_server, _)| {
                let stream = TcpStream::connect(server_addr).expect("connect");
                let local = stream.local_addr().expect("local address");
                assert_eq!(local.ip(), client_ip);
                let cookie = socket_cookie(&stream);
                let x = tcp_exchange(stream, to_server);
                Conn {
                    local,
                    cookie,
                    received: x.received,
                    segs: (x.info.tcpi_segs_out, x.info.tcpi_segs_in),
                }
            })
            .collect::<Vec<_>>()
    });
    let servers = join(server);
    capture.assert_window_open("the traffic");
    if let Some(want) = mode.live {
        assert_eq!(capture.chosen_hook("tcp_live_counters").as_deref(), Some(want), "the socket iterator");
    }
    let records = capture.finish();

    let family = if ipv6 { "ipv6" } else { "ipv4" };
    let own_cgroup = own_cgroup_id();
    let mut c = Checker::new();
    for (i, ((&(up, down), client), server)) in PLAN.iter().zip(&clients).zip(&servers).enumerate() {
        // The test's own view first: the server's i-th accept is the client's i-th connect.
        assert_eq!(
            (client.received, server.received),
            (down, up),
            "connection {i}: payload lost in the test"
        );
        assert_eq!(server.local, client.local, "connection {i}: accept order");

        let ctx = format!("conn {i} ({up}↑ {down}↓) client {} -> {server_addr}", client.local);
        match find_records(&records, "tcp", client.local, server_addr).as_slice() {
            [r] => {
                c.eq(&ctx, "family", r.family.as_str(), family);
                c.eq(&ctx, "direction", r.direction.as_str(), "outgoing");
                c.eq(&ctx, "bytes_sent", r.bytes_sent, up as u64);
                c.eq(&ctx, "bytes_received", r.bytes_received, down as u64);
                c.check(r.packets_sent > 0, &ctx, "packets_sent is 0");
                c.check(r.packets_received > 0, &ctx, "packets_received is 0");
                c.eq(&ctx, "packets_sent (vs tcpi_segs_out)", r.packets_sent, u64::from(client.segs.0));
                c.eq(
                    &ctx,
                    "packets_received (vs tcpi_segs_in)",
                    r.packets_received,
                    u64::from(client.segs.1),
                );
                c.eq(&ctx, "failure", r.failure.as_deref(), None);
                c.check(r.opened_at.is_some(), &ctx, "opened_at is null");
                c.check(r.closed_at.is_some(), &ctx, "closed_at is null");
                c.eq(&ctx, "netns", r.netns, Some(client_ns.inode()));
                if mode.pid == Pid::Always || (mode.pid == Pid::WithBytes && up + down > 0) {
                    c.eq(&ctx, "pid", r.pid, Some(std::process::id()));
                    c.check(r.comm.is_some(), &ctx, "comm is null");
                }
                c.eq(&ctx, "cookie", r.cookie, Some(client.cookie));
                if let (Some(got), Some(own)) = (r.cgroup_id, own_cgroup) {
                    c.eq(&ctx, "cgroup_id", got, own);
                }
            }
            found => c.fail(format!("{ctx}: {} client-side records, expected 1", found.len())),
        }

        let ctx = format!("conn {i} ({up}↑ {down}↓) server {server_addr} <- {}", client.local);
        match find_records(&records, "tcp", server_addr, client.local).as_slice() {
            [r] => {
                c.eq(&ctx, "family", r.family.as_str(), family);
                c.eq(&ctx, "direction", r.direction.as_str(), "incoming");
                c.eq(&ctx, "bytes_sent", r.bytes_sent, down as u64);
                c.eq(&ctx, "bytes_received", r.bytes_received, up as u64);
                c.check(r.packets_sent > 0, &ctx, "packets_sent is 0");
                c.check(r.packets_received > 0, &ctx, "packets_received is 0");
                c.eq(&ctx, "packets_sent (vs tcpi_segs_out)", r.packets_sent, u64::from(server.segs.0));
                c.eq(
                    &ctx,
                    "packets_received (vs tcpi_segs_in)",
                    r.packets_received,
                    u64::from(server.segs.1),
                );
                c.eq(&ctx, "failure", r.failure.as_deref(), None);
                c.check(r.opened_at.is_some(), &ctx, "opened_at is null");
                c.check(r.closed_at.is_some(), &ctx, "closed_at is null");
                c.eq(&ctx, "netns", r.netns, Some(server_ns.inode()));
                c.check(r.netns != Some(client_ns.inode()), &ctx, "server netns equals the client's");
                c.eq(&ctx, "cookie", r.cookie, Some(server.cookie));
            }
            found => c.fail(format!("{ctx}: {} server-side records, expected 1", found.len())),
        }
    }
    let endpoints: Vec<SocketAddr> =
        std::iter::once(server_addr).chain(clients.iter().map(|c| c.local)).collect();
    c.finish(&format!("records of this test:\n{}", describe_records(&records, &endpoints)));
}

#[test]
fn tcp_bytes_exact_ipv4() {
    run(false);
}

#[test]
fn tcp_bytes_exact_ipv6() {
    run(true);
}

/// Per-call byte counting (what the application wrote and read).
#[test]
fn tcp_bytes_exact_per_call_hooks() {
    run_mode(false, Mode { disabled: &[hooks::BYTES_COUNTERS], pid: Pid::Always, live: None });
}

/// The socket iterator that finds sockets by their inode (5.10 has no `bpf_sock_from_file`).
#[test]
fn tcp_bytes_exact_inode_iterator() {
    let live = Some("iter/task_file (probe reads, sockets by inode)");
    run_mode(false, Mode { disabled: &[hooks::ITER_SOCK_FROM_FILE], pid: Pid::Always, live });
}

/// The sockops lifecycle fallback (for kernels where the tp_btf programs cannot attach). sockops
/// cannot name a connection's process and this kernel refuses the owner hooks (fexit), so the
/// per-call byte hooks are chosen over the counters: they name it once a byte moved.
#[test]
fn tcp_bytes_exact_sockops_lifecycle() {
    run_mode(false, Mode { disabled: &[hooks::LIFECYCLE_TP_BTF], pid: Pid::WithBytes, live: None });
}

/// sockops with per-call byte hooks, over IPv6: the byte hooks name the process.
#[test]
fn tcp_bytes_exact_sockops_per_call_ipv6() {
    run_mode(
        true,
        Mode { disabled: &[hooks::LIFECYCLE_TP_BTF, hooks::BYTES_COUNTERS], pid: Pid::WithBytes, live: None },
    );
}

/// The last-resort byte source: tcp_sock counters at close, without the iterator or per-call hooks
/// (fentry and kprobes are refused here).
#[test]
fn tcp_bytes_exact_close_time_counters() {
    run_mode(
        false,
        Mode { disabled: &[hooks::BYTES_COUNTERS, hooks::BYTES_TP_BTF], pid: Pid::Always, live: None },
    );
}

/// Both fallbacks at once, over IPv6.
#[test]
fn tcp_bytes_exact_sockops_and_close_time_counters_ipv6() {
    run_mode(
        true,
        Mode {
            disabled: &[hooks::LIFECYCLE_TP_BTF, hooks::BYTES_COUNTERS, hooks::BYTES_TP_BTF],
            pid: Pid::Never,
            live: None,
        },
    );
}
