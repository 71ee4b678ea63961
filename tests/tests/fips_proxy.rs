//! The FIPS egress proxy end to end: the real `eddy-fips-proxy` binary between a plain-HTTP client
//! and real TLS servers (`openssl s_server`, nginx) on loopback, with throwaway certificates.
//!
//! Approved handshakes (TLS 1.3 and TLS 1.2 with AES-GCM on P-256) carry requests end to end with
//! `Host` rewritten; servers that only offer ChaCha20, X25519 or CBC, a TLS 1.2 server without the
//! extended master secret, a certificate for another name and one from an unknown CA are refused with 502 and counted in the status JSON; a
//! closed upstream is 503. Also: connection limit, non-loopback refusal, healthcheck, SIGTERM;
//! slow clients cut by `min_bytes_per_second` and `request_timeout` (counted), hop-by-hop headers
//! (including those a `Connection` header names) not forwarded, the status-port connection cap.
//! Needs the `openssl` command (skips with a reason otherwise; nginx cases skip without nginx).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use eddy_tests::fips_proxy::{Proxy, proxy_available, proxy_output, request};
use eddy_tests::skip;
use eddy_tests::tls_peer::{
    GOOD_NAME, TestPki, free_port, nginx, nginx_reverse_proxy, nginx_with, openssl_available, s_server,
    s_server_without_ems,
};

const T: Duration = Duration::from_secs(10);

fn route(name: &str, addr: std::net::SocketAddr, server_name: &str, ca: &std::path::Path) -> String {
    format!("{name}=https://{addr}?server_name={server_name}&ca_file={}", ca.display())
}

fn get(addr: std::net::SocketAddr) -> eddy_tests::HttpResponse {
    request(addr, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n", T)
        .unwrap_or_else(|e| panic!("request to {addr}: {e}"))
}

fn counter(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no counter {key} in {v}"))
}

#[test]
fn approved_handshakes_carry_requests_end_to_end() {
    if !proxy_available() {
        return;
    }
    if !openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = TestPki::generate("ok");
    let ca = pki.path("ca.pem");
    let tls13 =
        s_server(&pki, "server", &["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256", "-groups", "P-256"]);
    let tls12 = s_server(
        &pki,
        "server",
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384", "-groups", "P-384"],
    );
    let web = nginx(&pki);
    let mut routes =
        vec![route("tls13", tls13.addr, GOOD_NAME, &ca), route("tls12", tls12.addr, GOOD_NAME, &ca)];
    if let Some(w) = &web {
        routes.push(route("web", w.addr, GOOD_NAME, &ca));
    }
    let proxy = Proxy::start(&routes.join(";"), &[]);
    // The startup probe (a handshake, no request) reports the upstream up before any client comes.
    eddy_tests::poll_until(T, Duration::from_millis(20), "the probe to mark tls13 up", || {
        let st = proxy.route_status("tls13");
        if st["health"] == "up" && counter(&st, "connections") == 0 { Ok(()) } else { Err(st.to_string()) }
    });

    for (i, (name, cipher)) in
        [("tls13", "TLS_AES_128_GCM_SHA256"), ("tls12", "ECDHE-ECDSA-AES256-GCM-SHA384")]
            .into_iter()
            .enumerate()
    {
        let r = get(proxy.route_addr(i as u16));
        let body = r.text();
        assert_eq!(r.status, 200, "{name}: {body}\nproxy log:\n{}", proxy.log());
        assert!(body.contains(cipher), "{name}: s_server did not report cipher {cipher}:\n{body}");
        let st = proxy.route_status(name);
        assert_eq!(st["health"], "up", "{st}");
        assert_eq!(counter(&st, "connections"), 1, "{st}");
        assert_eq!(counter(&st, "handshake_failures"), 0, "{st}");
        assert!(counter(&st, "bytes_from_upstream") >= body.len() as u64, "{st}");
        assert!(counter(&st, "bytes_to_upstream") > 0, "{st}");
        // rustls reports the key exchange group of TLS 1.3 sessions only.
        let expected =
            if name == "tls13" { "TLSv1_3 TLS13_AES_128_GCM_SHA256 secp256r1" } else { "TLSv1_2 " };
        let negotiated = st["last_handshake"].as_str().unwrap_or_default();
        assert!(negotiated.starts_with(expected) && negotiated.contains("GCM"), "{name}: {st}");
    }

    let Some(web) = web else {
        return skip("nginx is not installed: Host rewrite and request body checked only without nginx");
    };
    let raw = "POST http://127.0.0.1/v1/metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9804\r\n\
               Content-Type: application/x-protobuf\r\nContent-Length: 5\r\n\r\nhello";
    let r = request(proxy.route_addr(2), raw, T).expect("POST through the proxy");
    assert_eq!(r.status, 200, "{}\nnginx: {}", r.text(), web.output());
    let port = web.addr.port();
    assert_eq!(r.text(), format!("host={GOOD_NAME}:{port} method=POST uri=/v1/metrics?x=1 len=5\n"));
    let st = proxy.route_status("web");
    assert!(counter(&st, "bytes_to_upstream") > 5, "{st}");
}

#[test]
fn unapproved_or_untrusted_servers_are_refused_with_502_and_counted() {
    if !proxy_available() {
        return;
    }
    if !openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = TestPki::generate("refused");
    let ca = pki.path("ca.pem");
    let other_ca = pki.path("other-ca.pem");
    // (route, server, the route's trusted CA, what the 502 body must say)
    let cases = [
        (
            "chacha",
            s_server(
                &pki,
                "server",
                &[
                    "-ciphersuites",
                    "TLS_CHACHA20_POLY1305_SHA256",
                    "-cipher",
                    "ECDHE-ECDSA-CHACHA20-POLY1305",
                ],
            ),
            &ca,
            "TLS handshake",
        ),
        ("x25519", s_server(&pki, "server", &["-groups", "X25519"]), &ca, "TLS handshake"),
        (
            "cbc",
            s_server(&pki, "server", &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]),
            &ca,
            "TLS handshake",
        ),
        ("wrongname", s_server(&pki, "wrong", &[]), &ca, "certificate"),
        ("unknownca", s_server(&pki, "server", &[]), &other_ca, "certificate"),
        ("noems", s_server_without_ems(&pki), &ca, "ExtendedMasterSecret"),
    ];
    let routes: Vec<String> = cases.iter().map(|(n, srv, ca, _)| route(n, srv.addr, GOOD_NAME, ca)).collect();
    let proxy = Proxy::start(&routes.join(";"), &[]);

    for (i, (name, server, _, needle)) in cases.iter().enumerate() {
        let r = get(proxy.route_addr(i as u16));
        let body = r.text();
        assert_eq!(
            r.status,
            502,
            "{name}: expected 502, got {}: {body}\nserver:\n{}",
            r.status,
            server.output()
        );
        assert!(body.contains(needle) && body.contains(name), "{name}: body lacks {needle:?}: {body}");
        assert_eq!(r.header("x-eddy-fips-proxy"), Some("error"));
        let st = proxy.route_status(name);
        assert_eq!(counter(&st, "handshake_failures"), 1, "{name}: {st}");
        assert_eq!(counter(&st, "bytes_from_upstream"), 0, "{name}: {st}");
        assert_eq!(st["health"], "tls_error", "{name}: {st}");
        assert!(st["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{name}: {st}");
    }
}

#[test]
fn closed_upstream_is_503_and_unconfigured_default_route_is_503() {
    if !proxy_available() {
        return;
    }
    let closed = free_port();
    let proxy = Proxy::start(&format!("down=https://127.0.0.1:{closed}?server_name={GOOD_NAME}"), &[]);
    let r = get(proxy.route_addr(0));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("cannot connect"), "{}", r.text());
    let st = proxy.route_status("down");
    assert_eq!((counter(&st, "upstream_errors"), st["health"].as_str()), (1, Some("down")), "{st}");

    let default = Proxy::start("", &[]);
    let r = get(default.route_addr(0));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no upstream configured"), "{}", r.text());
    let st = default.route_status("otlp");
    assert_eq!(st["health"], "unconfigured", "{st}");
    let s = default.status();
    assert_eq!(
        (s["service"].as_str(), s["fips_mode"].as_bool()),
        (Some("eddy-fips-proxy"), Some(true)),
        "{s}"
    );
    assert!(s["crypto_module"].as_str().is_some_and(|m| m.starts_with("AWS-LC FIPS")), "{s}");
}

#[test]
fn connection_limit_refuses_and_counts_excess() {
    if !proxy_available() {
        return;
    }
    let proxy = Proxy::start(
        &format!("limited=https://127.0.0.1:{}?server_name={GOOD_NAME}", free_port()),
        &[("EDDY_FIPS_MAX_CONNECTIONS_PER_ROUTE", "1".to_string())],
    );
    // The first connection holds the only permit while the proxy waits for its request head.
    let held = TcpStream::connect(proxy.route_addr(0)).expect("first connection");
    eddy_tests::poll_until(T, Duration::from_millis(20), "the first connection to be active", || {
        let st = proxy.route_status("limited");
        if counter(&st, "active") == 1 { Ok(()) } else { Err(st.to_string()) }
    });
    let r = get(proxy.route_addr(0));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connection limit"), "{}", r.text());
    let st = proxy.route_status("limited");
    assert_eq!((counter(&st, "refused"), counter(&st, "connections")), (1, 1), "{st}");
    drop(held);
}

#[test]
fn healthcheck_and_graceful_sigterm() {
    if !proxy_available() {
        return;
    }
    let mut proxy = Proxy::start("", &[]);
    let env = [("EDDY_FIPS_PORT_RANGE_START", proxy.start.to_string())];
    let ok = proxy_output(&["healthcheck"], &env);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let log = proxy.log();
    assert!(log.contains("AWS-LC FIPS") && log.contains("FIPS mode on"), "startup line missing:\n{log}");
    assert_eq!(proxy.terminate(T), Some(0), "exit after SIGTERM:\n{}", proxy.log());
    assert!(proxy.log().contains("SIGTERM received"), "{}", proxy.log());
    let down = proxy_output(&["healthcheck"], &env);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach"), "{down:?}");
}

#[test]
fn non_loopback_address_and_bad_routes_refuse_to_start() {
    if !proxy_available() {
        return;
    }
    let o = proxy_output(&[], &[("EDDY_FIPS_LOCAL_ADDRESS", "0.0.0.0".to_string())]);
    assert_eq!(o.status.code(), Some(2), "invalid configuration");
    assert!(String::from_utf8_lossy(&o.stderr).contains("EDDY_FIPS_ALLOW_NON_LOCAL"), "{o:?}");
    let o = proxy_output(&[], &[("EDDY_FIPS_ROUTES", "otlp=http://collector.example".to_string())]);
    assert_eq!(o.status.code(), Some(2), "invalid configuration");
    assert!(String::from_utf8_lossy(&o.stderr).contains("https://"), "{o:?}");
    let o = proxy_output(
        &[],
        &[("EDDY_FIPS_ROUTES", "a=https://a.example?ca_file=/nonexistent.pem".to_string())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.pem"), "{o:?}");
}

#[test]
fn out_of_range_durations_exit_2_naming_the_key() {
    if !proxy_available() {
        return;
    }
    for (key, v) in [
        ("IDLE_TIMEOUT", "999999999999999999m"),
        ("CONNECT_TIMEOUT", "0s"),
        ("PROBE_INTERVAL", "48h"),
        ("SHUTDOWN_GRACE", "1h"),
        ("REQUEST_TIMEOUT", "500ms"),
        ("REQUEST_TIMEOUT", "25h"),
        ("MIN_BYTES_PER_SECOND", "2000000"),
        ("MAX_STATUS_CONNECTIONS", "0"),
        ("MAX_STATUS_CONNECTIONS", "1025"),
    ] {
        let o = proxy_output(&[], &[(&*format!("EDDY_FIPS_{key}"), v.to_string())]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{key}={v}: {err}");
        assert!(err.contains(&key.to_ascii_lowercase()), "{key}={v}: {err}");
    }
}

#[test]
fn raw_tcp_route_relays_bytes_and_closes_on_refusal() {
    if !proxy_available() {
        return;
    }
    if !openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = TestPki::generate("tcp");
    let ca = pki.path("ca.pem").display().to_string();
    let good = s_server(&pki, "server", &[]);
    let chacha = s_server(&pki, "server", &["-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256", "-no_tls1_2"]);
    let routes = format!(
        "raw=tls://{}?server_name={GOOD_NAME}&ca_file={ca};rawbad=tls://{}?server_name={GOOD_NAME}&ca_file={ca}",
        good.addr, chacha.addr
    );
    let proxy = Proxy::start(&routes, &[]);
    // Untouched bytes: s_server -www sees exactly this request line (no Host rewrite on raw routes).
    let mut s = TcpStream::connect(proxy.route_addr(0)).expect("connect raw route");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.0 200 ok") && out.contains("TLS_AES"), "{out}");
    let st = proxy.route_status("raw");
    assert_eq!(st["kind"], "tcp", "{st}");
    assert_eq!(counter(&st, "bytes_from_upstream"), out.len() as u64, "{st}");
    assert_eq!(counter(&st, "bytes_to_upstream"), 18, "{st}");

    let mut s = TcpStream::connect(proxy.route_addr(1)).expect("connect rawbad route");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "a refused raw route must close without data: {out:?}");
    let st = proxy.route_status("rawbad");
    assert_eq!((counter(&st, "handshake_failures"), st["health"].as_str()), (1, Some("tls_error")), "{st}");
}

/// Sends a complete head announcing a 1000-byte body, then the body one byte every 300 ms; returns
/// how long until the proxy closed the connection (panics if it is still open after `limit`).
fn slow_body_client(addr: std::net::SocketAddr, limit: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut writer = s.try_clone().expect("clone");
    let began = Instant::now();
    writer
        .write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        .expect("head");
    std::thread::spawn(move || {
        for _ in 0..1000 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("slow client still connected after {:?}: {e}", began.elapsed()),
    }
    assert!(out.is_empty(), "a cut connection gets no answer: {}", String::from_utf8_lossy(&out));
    began.elapsed()
}

#[test]
fn slow_clients_are_cut_by_min_rate_and_request_timeout_and_counted() {
    if !proxy_available() {
        return;
    }
    if !openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = TestPki::generate("slow");
    let ca = pki.path("ca.pem");
    // nginx buffers the whole request body before passing it on, so it waits for the slow client
    // as long as the proxy lets it; its plain upstream (never reached) only has to exist.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let Some(web) = nginx_reverse_proxy(&pki, silent.local_addr().expect("addr")) else {
        return skip("nginx is not installed: slow-client limits not checked");
    };
    let fast = s_server(&pki, "server", &[]);
    let routes =
        format!("{};{}", route("slow", web.addr, GOOD_NAME, &ca), route("fast", fast.addr, GOOD_NAME, &ca));
    for (key, value, counter_name, at_least, at_most) in [
        // 50 bytes per 1 s window; the client moves ~3: cut after the first or second window.
        ("EDDY_FIPS_MIN_BYTES_PER_SECOND", "50", "closed_too_slow", 900, 3500),
        // Rate rule off, idle timeout 60 s: only the 2 s lifetime cuts it.
        ("EDDY_FIPS_REQUEST_TIMEOUT", "2s", "closed_request_timeout", 1900, 4500),
    ] {
        let mut env = vec![(key, value.to_string())];
        if counter_name == "closed_too_slow" {
            env.push(("EDDY_FIPS_IDLE_TIMEOUT", "1s".to_string()));
        } else {
            env.push(("EDDY_FIPS_MIN_BYTES_PER_SECOND", "0".to_string()));
        }
        let proxy = Proxy::start(&routes, &env);
        let took = slow_body_client(proxy.route_addr(0), Duration::from_secs(10));
        assert!(
            (Duration::from_millis(at_least)..=Duration::from_millis(at_most)).contains(&took),
            "{key}: closed after {took:?}\nproxy log:\n{}",
            proxy.log()
        );
        eddy_tests::poll_until(T, Duration::from_millis(20), "the cut to be counted", || {
            let st = proxy.route_status("slow");
            if counter(&st, counter_name) == 1 && counter(&st, "active") == 0 {
                Ok(())
            } else {
                Err(st.to_string())
            }
        });
        let other =
            if counter_name == "closed_too_slow" { "closed_request_timeout" } else { "closed_too_slow" };
        assert_eq!(counter(&proxy.route_status("slow"), other), 0);
        // A normal request on the same proxy still succeeds.
        let r = get(proxy.route_addr(1));
        assert_eq!(r.status, 200, "{key}: {}\nproxy log:\n{}", r.text(), proxy.log());
        let st = proxy.route_status("fast");
        assert_eq!((counter(&st, "closed_too_slow"), counter(&st, "closed_request_timeout")), (0, 0), "{st}");
    }
    drop(silent);
}

#[test]
fn hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded() {
    if !proxy_available() {
        return;
    }
    if !openssl_available() {
        return skip("the openssl command is not installed (apt-get install openssl)");
    }
    let pki = TestPki::generate("hop");
    let echo = "default_type text/plain;\n\
                return 200 \"secret=[$http_x_secret_hop] keep=[$http_x_keep] auth=[$http_proxy_authorization] \
                te=[$http_te] upgrade=[$http_upgrade] len=[$http_content_length]\\n\";";
    let Some(web) = nginx_with(&pki, echo) else {
        return skip("nginx is not installed: hop-by-hop stripping not checked end to end");
    };
    let proxy = Proxy::start(&route("web", web.addr, GOOD_NAME, &pki.path("ca.pem")), &[]);
    let raw = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close, X-Secret-Hop, Content-Length\r\n\
               X-Secret-Hop: 1\r\nX-Keep: 2\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n\
               Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhi";
    let r = request(proxy.route_addr(0), raw, T).expect("request through the proxy");
    assert_eq!(r.status, 200, "{}\nnginx: {}", r.text(), web.output());
    assert_eq!(r.text(), "secret=[] keep=[2] auth=[] te=[] upgrade=[] len=[2]\n");
}

#[test]
fn status_port_connection_cap_refuses_and_counts_excess() {
    if !proxy_available() {
        return;
    }
    let proxy = Proxy::start("", &[("EDDY_FIPS_MAX_STATUS_CONNECTIONS", "3".to_string())]);
    // Three connections with an unfinished request head hold every permit (for up to 5 s each).
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.status_addr()).expect("status connection");
            s.write_all(b"GET / HT").expect("partial head");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = request(proxy.status_addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", T).expect("fourth connection");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("connection limit (3)"), "{}", r.text());
    drop(held);
    // Polls made before the proxy saw the held connections close are refused (and counted) too.
    let mut refused_polls = 0;
    let v = eddy_tests::poll_until(T, Duration::from_millis(50), "a status answer after the release", || {
        match eddy_tests::http_get(proxy.status_addr(), "/", Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => {
                serde_json::from_slice::<serde_json::Value>(&r.body).map_err(|e| e.to_string())
            }
            Ok(r) => {
                refused_polls += u64::from(r.status == 503);
                Err(format!("{} {}", r.status, r.text()))
            }
            Err(e) => Err(e.to_string()),
        }
    });
    assert_eq!(v["status_connections_refused"].as_u64(), Some(1 + refused_polls), "{v}");
}
