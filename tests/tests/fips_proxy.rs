//! The FIPS egress proxy end to end: the real `eddy-fips-proxy` binary between a plain-HTTP client
//! and real TLS servers (`openssl s_server`, nginx) on loopback, with throwaway certificates.
//!
//! Approved handshakes (TLS 1.3 and TLS 1.2 with AES-GCM on P-256) carry requests end to end with
//! `Host` rewritten; servers that only offer ChaCha20, X25519 or CBC, a TLS 1.2 server without the
//! extended master secret, a certificate for another name and one from an unknown CA are refused with 502 and counted in the status JSON; a
//! closed upstream is 503. Also: connection limit, non-loopback refusal, healthcheck, SIGTERM.
//! Needs the `openssl` command (skips with a reason otherwise; nginx cases skip without nginx).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use eddy_tests::fips_proxy::{Proxy, proxy_available, proxy_output, request};
use eddy_tests::skip;
use eddy_tests::tls_peer::{
    GOOD_NAME, TestPki, free_port, nginx, openssl_available, s_server, s_server_without_ems,
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
