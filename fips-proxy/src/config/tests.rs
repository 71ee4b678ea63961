use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_give_the_unconfigured_otlp_route_on_loopback() {
    let cfg = Config::load(None, env(&[("AWS_USE_FIPS_ENDPOINT", "true")]), &[]).expect("defaults");
    assert_eq!(cfg.status_addr().to_string(), "127.0.0.1:9803");
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].name, "otlp");
    assert_eq!(cfg.routes[0].upstream, None);
    assert_eq!(cfg.route_addr(0).port(), 9804);
}

#[test]
fn env_routes_and_flags_override() {
    let cfg = Config::load(
        None,
        env(&[
            ("EDDY_FIPS_ROUTES", "otlp=https://collector.example:4318?ca_file=/ca.pem;logs=tls://[::1]:6514?server_name=logs.example"),
            ("EDDY_FIPS_PORT_RANGE_START", "20000"),
        ]),
        &[("idle_timeout".into(), "500ms".into())],
    )
    .expect("config");
    let a = cfg.routes[0].parse_upstream().expect("parse").expect("some");
    assert_eq!(
        (a.kind, a.authority(), a.server_name.as_str()),
        (RouteKind::Http, "collector.example:4318".into(), "collector.example")
    );
    assert_eq!(a.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(a.host_header(), "collector.example:4318");
    let b = cfg.routes[1].parse_upstream().expect("parse").expect("some");
    assert_eq!(
        (b.kind, b.authority(), b.server_name.as_str()),
        (RouteKind::Tcp, "[::1]:6514".into(), "logs.example")
    );
    assert_eq!(cfg.route_addr(1).port(), 20002);
    assert_eq!(cfg.idle_timeout, Duration::from_millis(500));
}

#[test]
fn otlp_upstream_fills_the_default_route() {
    let cfg =
        Config::load(None, env(&[("EDDY_FIPS_OTLP_UPSTREAM", "https://otlp.example")]), &[]).expect("cfg");
    let u = cfg.routes[0].parse_upstream().expect("parse").expect("some");
    assert_eq!(u.authority(), "otlp.example:443");
    // The agent's own OTLP URL works too: the path is the agent's to send.
    let cfg = Config::load(
        None,
        env(&[(
            "EDDY_FIPS_OTLP_UPSTREAM",
            "https://otlp.example:4318/v1/metrics?server_name=intake.example",
        )]),
        &[],
    )
    .expect("cfg");
    let u = cfg.routes[0].parse_upstream().expect("parse").expect("some");
    assert_eq!(u.authority(), "otlp.example:4318");
    assert_eq!(cfg.routes[0].server_name.as_deref(), Some("intake.example"));
}

#[test]
fn file_layer_and_unknown_keys() {
    let dir = std::env::temp_dir().join(format!("eddy-fips-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        "idle_timeout = \"2s\"\n[[routes]]\nname = \"a\"\nupstream = \"https://a.example\"\n",
    )
    .expect("write");
    let cfg = Config::load(Some(&file), env(&[]), &[]).expect("file");
    assert_eq!((cfg.idle_timeout, cfg.routes[0].name.as_str()), (Duration::from_secs(2), "a"));
    std::fs::write(&file, "bogus = 1\n").expect("write");
    assert!(matches!(Config::load(Some(&file), env(&[]), &[]), Err(ConfigError::Parse { .. })));
    let e = Config::load(None, env(&[("EDDY_FIPS_BOGUS", "1")]), &[]).expect_err("unknown env");
    assert!(e.to_string().contains("EDDY_FIPS_BOGUS"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validation_refuses_bad_values() {
    let bad = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &[]).expect_err("invalid").to_string();
    assert!(bad(&[("EDDY_FIPS_LOCAL_ADDRESS", "0.0.0.0")]).contains("EDDY_FIPS_ALLOW_NON_LOCAL"));
    assert!(
        Config::load(
            None,
            env(&[("EDDY_FIPS_LOCAL_ADDRESS", "0.0.0.0"), ("EDDY_FIPS_ALLOW_NON_LOCAL", "true")]),
            &[]
        )
        .is_ok()
    );
    assert!(bad(&[("EDDY_FIPS_ROUTES", "x=http://plain.example")]).contains("https://"));
    assert!(bad(&[("EDDY_FIPS_ROUTES", "x=https://a.example/path")]).contains("no path"));
    assert!(bad(&[("EDDY_FIPS_ROUTES", "x=https://a.example;x=https://b.example")]).contains("twice"));
    assert!(bad(&[("EDDY_FIPS_ROUTES", "x=https://a.example?sni=b")]).contains("unknown option"));
    assert!(bad(&[("EDDY_FIPS_PORT_RANGE_START", "65535")]).contains("port_range_start"));
    assert!(bad(&[("EDDY_FIPS_MAX_CONNECTIONS_PER_ROUTE", "0")]).contains("at least 1"));
    assert!(bad(&[("EDDY_FIPS_IDLE_TIMEOUT", "5h")]).contains("unit"));
}

#[test]
fn durations_overflow_or_out_of_range_are_errors_naming_the_key() {
    assert!(parse_duration("999999999999999999m").expect_err("overflow").contains("too large"));
    assert!(parse_duration("99999999999999999999s").is_err(), "u64 overflow");
    for (key, v) in [
        ("idle_timeout", "999999999999999999m"),
        ("idle_timeout", "25h"),
        ("connect_timeout", "50ms"),
        ("connect_timeout", "6m"),
        ("probe_interval", "500ms"),
        ("shutdown_grace", "11m"),
    ] {
        let e = Config::load(None, env(&[]), &[(key.into(), v.into())]).expect_err(v);
        assert!(e.to_string().contains(key), "{key}={v}: {e}");
    }
    let c = Config::load(None, env(&[]), &[("probe_interval".into(), "0s".into())]).expect("0s: off");
    assert!(c.probe_interval.is_zero());
}
