//! OTLP/HTTP export: a receiver built on the same proto types gets exactly the traffic's data points
//! with semantic-convention attributes and the configured header; when it fails (503 + Retry-After) or
//! is gone, the agent backs off, its queue stays bounded and drops are counted; restarted, delivery
//! resumes.

use std::time::Duration;

use eddy_tests::otlp_receiver::{OtlpReceiver, attr_int, attr_str, io_sum, sum_points};
use eddy_tests::*;

/// Sum of the latest `eddy.network.io` points for one server port, direction and io direction.
fn latest_io(rx: &OtlpReceiver, port: u16, flow_direction: &str, io: &str) -> Option<i64> {
    let last = rx.received().into_iter().last()?;
    Some(io_sum(&last.request, port, flow_direction, io))
}

#[test]
fn receiver_gets_exact_points_attributes_and_headers() {
    if !require_privileges() {
        return;
    }
    let rx = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let agent = RunAgent::start(&[
        "--poll-interval",
        "200ms",
        "--export-interval",
        "1s",
        "--otlp-endpoint",
        &rx.endpoint(),
        "--otlp-headers",
        "authorization=Bearer test-token",
        "--tags",
        "env:test",
    ]);
    const PLAN: &[(usize, usize)] = &[(1_000, 2_000), (3_333, 7)];
    let server = exchanges_between_namespaces("otlp", PLAN);
    let up: i64 = PLAN.iter().map(|p| p.0 as i64).sum();
    let down: i64 = PLAN.iter().map(|p| p.1 as i64).sum();
    let port = server.port();
    let want = [
        ("outgoing", "transmit", up),
        ("outgoing", "receive", down),
        ("incoming", "transmit", down),
        ("incoming", "receive", up),
    ];
    poll_until(Duration::from_secs(20), Duration::from_millis(250), "exact OTLP points", || {
        for (dir, io, v) in want {
            match latest_io(&rx, port, dir, io) {
                Some(got) if got == v => {}
                got => return Err(format!("{dir}/{io}: {got:?}, want {v}")),
            }
        }
        Ok(())
    });
    let last = rx.received().into_iter().last().expect("a request");
    assert!(
        last.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer test-token"),
        "configured header missing: {:?}",
        last.headers
    );
    assert!(last.headers.iter().any(|(k, v)| k == "content-type" && v == "application/x-protobuf"));
    let resource = last.request.resource_metrics[0].resource.clone().expect("resource");
    assert_eq!(attr_str(&resource.attributes, "service.name").as_deref(), Some("eddy-agent"));
    assert_eq!(attr_str(&resource.attributes, "env").as_deref(), Some("test"), "static tags");
    let points = sum_points(&last.request, "eddy.network.io");
    let (attrs, _) =
        points.iter().find(|(a, _)| attr_int(a, "server.port") == Some(i64::from(port))).expect("point");
    assert_eq!(attr_str(attrs, "network.transport").as_deref(), Some("tcp"));
    assert_eq!(attr_str(attrs, "network.type").as_deref(), Some("ipv4"));
    let peer = attr_str(attrs, "network.peer.address").expect("network.peer.address");
    assert!(
        peer == server.ip().to_string()
            || attr_str(attrs, "network.local.address") == Some(server.ip().to_string())
    );
    let closed: i64 = sum_points(&last.request, "eddy.connections.closed")
        .into_iter()
        .filter(|(a, _)| attr_int(a, "server.port") == Some(i64::from(port)))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(closed, 2 * PLAN.len() as i64, "both ends of each connection");
    assert!(agent.status()["otlp"]["batches_sent"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn outage_backs_off_keeps_the_queue_bounded_and_resumes() {
    if !require_privileges() {
        return;
    }
    let rx = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let addr = rx.addr();
    let agent = RunAgent::start(&[
        "--poll-interval",
        "100ms",
        "--export-interval",
        "100ms",
        "--otlp-endpoint",
        &rx.endpoint(),
        "--otlp-queue-batches",
        "2",
        "--otlp-max-backoff",
        "2s",
    ]);
    poll_until(Duration::from_secs(10), Duration::from_millis(100), "first delivery", || {
        if rx.received().is_empty() { Err("nothing yet".into()) } else { Ok(()) }
    });

    // 503 with Retry-After: 1 for 3 s: ~30 batches are produced, few requests may be made.
    rx.answer(503);
    let before = rx.requests();
    std::thread::sleep(Duration::from_secs(3));
    let during = rx.requests() - before;
    assert!(during <= 6, "{during} requests in 3 s despite Retry-After: 1");
    let status = agent.status();
    let otlp = &status["otlp"];
    assert!(otlp["attempts_failed"].as_u64().is_some_and(|n| n >= 2), "{otlp}");
    assert!(otlp["batches_dropped"].as_u64().is_some_and(|n| n > 10), "queue of 2 must overflow: {otlp}");
    assert!(otlp["queued"].as_u64().is_some_and(|n| n <= 2), "queue bounded: {otlp}");
    assert!(status["drops"]["otlp_batches_dropped"].as_u64().is_some_and(|n| n > 10));

    // Gone: connections refused.
    rx.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.status()["otlp"]["attempts_failed"].as_u64().is_some_and(|n| n >= 3),
        "refused attempts count"
    );

    // Back on the same port: delivery resumes (backoff is at most 2 s) with fresh totals.
    let rx = OtlpReceiver::start(addr);
    let sent_before = agent.status()["otlp"]["batches_sent"].as_u64().unwrap_or(0);
    const PLAN: &[(usize, usize)] = &[(4_321, 1_234)];
    let server = exchanges_between_namespaces("otlp", PLAN);
    poll_until(Duration::from_secs(15), Duration::from_millis(200), "delivery after the restart", || {
        match latest_io(&rx, server.port(), "outgoing", "transmit") {
            Some(4_321) => Ok(()),
            got => Err(format!("{got:?}")),
        }
    });
    assert!(agent.status()["otlp"]["batches_sent"].as_u64().is_some_and(|n| n > sent_before));
}

#[test]
fn redirects_are_refused_counted_and_logged_redacted() {
    if !require_privileges() {
        return;
    }
    let first = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let second = OtlpReceiver::start("127.0.0.1:0".parse().expect("addr"));
    let location = format!("{}?token=redirsecret", second.endpoint());
    first.redirect(307, &location);
    let agent = RunAgent::start(&[
        "--poll-interval",
        "100ms",
        "--export-interval",
        "200ms",
        "--otlp-endpoint",
        &first.endpoint(),
        "--otlp-headers",
        "authorization=Bearer hdrsecret",
    ]);
    poll_until(Duration::from_secs(10), Duration::from_millis(100), "redirects counted", || {
        let otlp = agent.status()["otlp"].clone();
        match otlp["redirects_refused"].as_u64() {
            Some(n) if n >= 3 => Ok(()),
            _ => Err(format!("{otlp}")),
        }
    });
    assert!(first.requests() >= 3);
    assert_eq!(second.requests(), 0, "the redirect target must never be contacted");
    let status = agent.status();
    assert!(status["otlp"]["batches_rejected"].as_u64().is_some_and(|n| n >= 3), "{status}");
    let metrics = agent.get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("eddy_agent_otlp_redirects_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let log = agent.log_tail(400);
    let warn =
        log.lines().find(|l| l.contains("redirect")).unwrap_or_else(|| panic!("no redirect WARN:\n{log}"));
    let shown = format!("{}?token=***", second.endpoint());
    assert!(warn.contains("WARN") && warn.contains(&shown), "Location, redacted: {warn}");
    assert!(!log.contains("redirsecret") && !log.contains("hdrsecret"), "{log}");
}

#[test]
fn credentials_in_the_endpoint_never_show() {
    if !require_privileges() {
        return;
    }
    let agent = RunAgent::start(&[
        "--poll-interval",
        "100ms",
        "--export-interval",
        "200ms",
        "--otlp-endpoint",
        "https://u:secret@127.0.0.1:1/v1/metrics?api_key=secret2",
    ]);
    poll_until(Duration::from_secs(10), Duration::from_millis(100), "failed attempts", || {
        let otlp = agent.status()["otlp"].clone();
        match otlp["attempts_failed"].as_u64() {
            Some(n) if n >= 2 => Ok(()),
            _ => Err(format!("{otlp}")),
        }
    });
    let status = agent.get("/status").text();
    let metrics = agent.get("/metrics").text();
    let log = agent.log_tail(400);
    for (what, text) in [("/status", &status), ("/metrics", &metrics), ("stderr", &log)] {
        assert!(!text.contains("secret"), "{what} shows a credential:\n{text}");
    }
    assert!(log.contains("https://u:***@127.0.0.1:1/v1/metrics?api_key=***"), "redacted form logged:\n{log}");
}
