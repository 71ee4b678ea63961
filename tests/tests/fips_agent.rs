//! The agent in FIPS mode: its OTLP export reaches the intake only through `eddy-fips-proxy`
//! (agent → plain HTTP on loopback → proxy → TLS from the AWS-LC FIPS module → nginx → the OTLP
//! receiver), with the traffic's exact bytes, and the proxy's status counts the route; a
//! configuration that would leave the FIPS path refuses to start.
//!
//! Needs root (eBPF, namespaces), the proxy binary, `openssl` and nginx, and an agent built with
//! `--features fips` (skips with a reason otherwise).

use std::time::Duration;

use eddy_tests::fips_proxy::{Proxy, proxy_available};
use eddy_tests::otlp_receiver::{OtlpReceiver, io_sum};
use eddy_tests::tls_peer::{GOOD_NAME, TestPki, nginx_reverse_proxy, openssl_available};
use eddy_tests::*;

/// The agent binary under test was built with the FIPS TLS client.
fn agent_has_fips() -> bool {
    let out = agent_command(&["--version".to_string()]).output().expect("eddy-agent --version");
    String::from_utf8_lossy(&out.stdout).contains("features: fips")
}

fn requirements_or_skip() -> bool {
    if !require_privileges() || !proxy_available() {
        return false;
    }
    if !openssl_available() {
        skip("the openssl command is not installed (apt-get install openssl)");
        return false;
    }
    if !agent_has_fips() {
        skip("eddy-agent was built without --features fips (scripts/test.sh builds it with)");
        return false;
    }
    true
}

#[test]
fn otlp_export_goes_through_the_proxy_with_exact_bytes() {
    if !requirements_or_skip() {
        return;
    }
    let rx = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let pki = TestPki::generate("agent");
    let Some(intake) = nginx_reverse_proxy(&pki, rx.addr()) else {
        return skip("nginx is not installed (apt-get install nginx-light)");
    };
    let route = format!(
        "otlp=https://127.0.0.1:{}?server_name={GOOD_NAME}&ca_file={}",
        intake.addr.port(),
        pki.path("ca.pem").display()
    );
    let proxy = Proxy::start(&route, &[]);
    let start = proxy.start.to_string();
    // The intake's name does not resolve anywhere: only the proxy may carry the batches.
    let agent = RunAgent::start_with_env(
        &[
            "--poll-interval",
            "200ms",
            "--export-interval",
            "1s",
            "--otlp-endpoint",
            "https://intake.invalid:4318/v1/metrics",
        ],
        &[("EDDY_FIPS_ENABLED", "true"), ("EDDY_FIPS_PORT_RANGE_START", &start)],
    );
    let status = agent.status();
    let want_via = format!("http://127.0.0.1:{}/v1/metrics", proxy.start + 1);
    assert_eq!(status["fips"]["otlp_via"], want_via.as_str(), "{}", status["fips"]);
    assert_eq!(status["fips"]["aws_sdk_use_fips"], true);

    const PLAN: &[(usize, usize)] = &[(1_234, 4_321), (70_000, 3)];
    let server = exchanges_between_namespaces("fipsagent", PLAN);
    let port = server.port();
    let up: i64 = PLAN.iter().map(|p| p.0 as i64).sum();
    let down: i64 = PLAN.iter().map(|p| p.1 as i64).sum();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(250),
        "exact OTLP points via the proxy",
        || {
            let last = rx.received().into_iter().last().ok_or("nothing received")?;
            for (dir, io, v) in
                [("outgoing", "transmit", up), ("incoming", "receive", up), ("outgoing", "receive", down)]
            {
                let got = io_sum(&last.request, port, dir, io);
                if got != v {
                    return Err(format!("{dir}/{io}: {got}, want {v}"));
                }
            }
            Ok(())
        },
    );

    // Every request the intake got came through the route; the handshake was approved.
    let st = proxy.route_status("otlp");
    let sent = agent.status()["otlp"]["batches_sent"].as_u64().expect("batches_sent");
    let connections = st["connections"].as_u64().expect("connections");
    assert!(sent > 0 && connections >= rx.requests() && rx.requests() >= 1, "sent {sent}, {st}");
    assert_eq!(st["handshake_failures"], 0, "{st}");
    assert_eq!(st["upstream_errors"], 0, "{st}");
    assert_eq!(st["health"], "up", "{st}");
    let hs = st["last_handshake"].as_str().unwrap_or_default();
    assert!(hs.contains("AES") && hs.contains("GCM"), "approved suite: {hs}");
    assert!(st["bytes_to_upstream"].as_u64().is_some_and(|b| b > 0), "{st}");
    assert!(st["bytes_from_upstream"].as_u64().is_some_and(|b| b > 0), "{st}");
    let otlp = &agent.status()["otlp"];
    assert_eq!((&otlp["batches_dropped"], &otlp["attempts_failed"]), (&0.into(), &0.into()), "{otlp}");
}

#[test]
fn configurations_that_would_leave_the_fips_path_refuse_to_start() {
    let run = |env: &[(&str, &str)]| {
        let mut cmd = agent_command(&["run".to_string()]);
        cmd.env("EDDY_FIPS_ENABLED", "true");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run eddy-agent")
    };
    for (env, needle) in [
        (&[("EDDY_FIPS_LOCAL_ADDRESS", "192.0.2.10")][..], "not a loopback address"),
        (&[("EDDY_FIPS_HTTPS", "true")][..], "EDDY_FIPS_HTTPS=false"),
        (&[("EDDY_FIPS_PORT_RANGE_START", "65535")][..], "fips_port_range_start"),
    ] {
        let out = run(env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert!(err.contains(needle), "{env:?}: stderr lacks {needle:?}: {err}");
    }
    if !agent_has_fips() {
        // A build without the module refuses FIPS mode outright.
        let out = run(&[("EDDY_LISTEN", "127.0.0.1:0")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--features fips"), "{err}");
    }
}
