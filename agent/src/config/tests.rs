use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_are_valid_and_local() {
    let c = Config::load(None, env(&[]), &[]).expect("defaults");
    assert_eq!(c.listen, "127.0.0.1:9780".parse().expect("addr"));
    assert_eq!(c.output, Output::None);
    assert!(c.flow_map_entries >= 16 << 10);
}

#[test]
fn layers_override_in_order() {
    let dir = std::env::temp_dir().join(format!("eddy-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("eddy.toml");
    std::fs::write(&file, "poll_interval = \"3s\"\nexport_interval = \"7s\"\nudp = false\n").expect("write");
    let c = Config::load(
        Some(&file),
        env(&[("EDDY_POLL_INTERVAL", "2s"), ("PATH", "/bin")]),
        &[("flow_map_entries", "64".into())],
    )
    .expect("load");
    assert_eq!(c.poll_interval, Duration::from_secs(2), "env beats file");
    assert_eq!(c.export_interval, Duration::from_secs(7), "file beats default");
    assert!(!c.udp.enabled);
    assert_eq!(c.flow_map_entries, 64, "flag");
    let c =
        Config::load(Some(&file), env(&[("EDDY_POLL_INTERVAL", "2s")]), &[("poll_interval", "5s".into())])
            .expect("load");
    assert_eq!(c.poll_interval, Duration::from_secs(5), "flag beats env");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn rejects_unknown_file_keys_and_env() {
    let dir = std::env::temp_dir().join(format!("eddy-cfg-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("eddy.toml");
    std::fs::write(&file, "pol_interval = \"3s\"\n").expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("unknown key");
    assert!(e.to_string().contains("pol_interval"), "{e}");
    let e = Config::load(None, env(&[("EDDY_POLL_INTERVALL", "1s")]), &[]).expect_err("unknown env");
    assert!(e.to_string().contains("EDDY_POLL_INTERVALL"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn rejects_bad_values_with_origin() {
    let e = Config::load(None, env(&[("EDDY_OUTPUT", "xml")]), &[]).expect_err("bad output");
    assert!(e.to_string().contains("environment EDDY_OUTPUT"), "{e}");
    let e = Config::load(None, env(&[]), &[("ring_buffer_bytes", "100000".into())]).expect_err("not pow2");
    assert!(e.to_string().contains("power of two"), "{e}");
    let e = Config::load(None, env(&[]), &[("poll_interval", "1ms".into())]).expect_err("too fast");
    assert!(e.to_string().contains("poll_interval"), "{e}");
    let e = Config::load(None, env(&[]), &[("flow_map_entries", "3".into())]).expect_err("tiny");
    assert!(e.to_string().contains("flow_map_entries"), "{e}");
    let e = Config::load(None, env(&[("EDDY_CGROUP_SCOPE", "ecs")]), &[]).expect_err("relative");
    assert!(e.to_string().contains("cgroup_scope \"ecs\" must be an absolute path"), "{e}");
    let c = Config::load(None, env(&[("EDDY_CGROUP_SCOPE", "/sys/fs/cgroup/ecs")]), &[]).expect("absolute");
    assert_eq!(c.cgroup_scope.as_deref(), Some(std::path::Path::new("/sys/fs/cgroup/ecs")));
}

#[test]
fn series_labels_and_prices_are_validated_naming_the_key() {
    let e = Config::load(None, env(&[("EDDY_SERIES_LABELS", "workloads,pods")]), &[]).expect_err("unknown");
    let msg = e.to_string();
    assert!(
        msg.contains("series_labels") && msg.contains("\"pods\"") && msg.contains("unnamed_addresses"),
        "{msg}"
    );
    let c = Config::load(None, env(&[("EDDY_SERIES_LABELS", "addresses, scope")]), &[]).expect("groups");
    assert_eq!(c.series_labels, ["addresses", "scope"]);
    let g = c.label_groups();
    assert!(g.addresses && g.scope && !g.workloads && !g.az);
    let d = Config::load(None, env(&[]), &[]).expect("defaults");
    assert_eq!(d.label_groups(), crate::aggregate::LabelGroups::default());
    assert_eq!(d.prices(), crate::aggregate::Prices::default());
    assert_eq!(d.prices().inter_az_nano_usd_per_gb, 10_000_000);
    let e = Config::load(None, env(&[]), &[("cost_inter_az_usd_per_gb", "11".into())]).expect_err("range");
    assert!(e.to_string().contains("cost_inter_az_usd_per_gb"), "{e}");
}

#[test]
fn every_key_round_trips_through_the_file_format() {
    let c = Config::load(None, env(&[("EDDY_OTLP_ENDPOINT", "http://127.0.0.1:4318/v1/metrics")]), &[])
        .expect("load");
    let text = toml::to_string(&c).expect("encode");
    let back: Config = toml::from_str(&text).expect("decode");
    assert_eq!(back, c);
    assert!(
        text.contains("[otlp]") && text.contains("endpoint = \"http://127.0.0.1:4318/v1/metrics\""),
        "{text}"
    );
}

#[test]
fn sections_and_flat_names_in_the_file_and_the_short_names_everywhere() {
    let dir = std::env::temp_dir().join(format!("eddy-cfg-sections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("eddy.toml");
    std::fs::write(
        &file,
        "otlp_queue_batches = 3\n[otlp]\ntimeout = \"2s\"\n[dns]\nenabled = false\n[conntrack]\nmax_entries = 100\n",
    )
    .expect("write");
    let c = Config::load(Some(&file), env(&[("EDDY_UDP", "false")]), &[("conntrack", "false".into())])
        .expect("load");
    assert_eq!((c.otlp.queue_batches, c.otlp.timeout), (3, Duration::from_secs(2)));
    assert!(!c.dns.enabled && !c.udp.enabled && !c.conntrack.enabled);
    assert_eq!(c.conntrack.max_entries, 100);
    std::fs::write(&file, "[otlp]\ntimeot = \"2s\"\n").expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("unknown key in a section");
    assert!(e.to_string().contains("timeot") && e.to_string().contains("otlp"), "{e}");
    std::fs::write(&file, "[otlp]\ntimeout = \"2 parsecs\"\n").expect("write");
    let e = Config::load(Some(&file), env(&[]), &[]).expect_err("bad value in the file");
    assert!(e.to_string().contains("otlp_timeout") && e.to_string().contains("eddy.toml"), "{e}");
    std::fs::remove_dir_all(dir).ok();
    // Empty values mean the default.
    let c = Config::load(None, env(&[("EDDY_OUTPUT", ""), ("EDDY_AWS_REGION", "")]), &[]).expect("empty");
    assert_eq!((c.output, c.aws.region), (Output::None, None));
}

#[test]
fn the_readme_reference_is_generated_from_the_definition() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let table = reference::markdown();
    let want = reference::splice(&readme, &table).expect("README has the config-reference markers");
    if std::env::var_os("EDDY_UPDATE_README").is_some() {
        std::fs::write(&path, &want).expect("write README.md");
        return;
    }
    assert!(
        readme == want,
        "README.md's configuration reference is stale: run `EDDY_UPDATE_README=1 cargo test -p eddy-agent \
         --lib the_readme_reference` and commit README.md"
    );
    for (name, _) in layers::KEYS.iter() {
        assert!(table.contains(&format!("`EDDY_{}`", name.to_ascii_uppercase())), "{name}");
    }
}

#[test]
fn otlp_headers_are_parsed_and_redacted() {
    let c = Config::load(
        None,
        env(&[
            ("EDDY_OTLP_ENDPOINT", "http://127.0.0.1:4318/v1/metrics"),
            ("EDDY_OTLP_HEADERS", "authorization=Bearer s3cret, x-team=payments"),
        ]),
        &[],
    )
    .expect("load");
    assert_eq!(
        c.otlp_header_pairs(),
        vec![
            ("authorization".to_string(), "Bearer s3cret".to_string()),
            ("x-team".to_string(), "payments".to_string())
        ]
    );
    let logged = serde_json::to_string(&c.redacted()).expect("json");
    assert!(!logged.contains("s3cret") && logged.contains("authorization=<redacted>"), "{logged}");
    let e = Config::load(None, env(&[("EDDY_OTLP_ENDPOINT", "collector:4318")]), &[]).expect_err("no scheme");
    assert!(e.to_string().contains("otlp_endpoint"), "{e}");
}

#[test]
fn bad_header_names_and_values_are_refused_without_the_value() {
    for (h, name) in
        [("bad name=v4lue", "bad name"), ("x-key=a\nb v4lue", "x-key"), ("x=\u{7f}v4lue", "\"x\"")]
    {
        let e = Config::load(None, env(&[("EDDY_OTLP_HEADERS", h)]), &[]).expect_err(h);
        let m = e.to_string();
        assert!(m.contains("otlp_headers") && m.contains(name) && !m.contains("v4lue"), "{m}");
    }
}

#[test]
fn urls_in_the_logged_configuration_are_redacted() {
    let c = Config::load(
        None,
        env(&[
            ("EDDY_OTLP_ENDPOINT", "https://u:s3cret@collector:4318/v1/metrics?api_key=k3y"),
            ("EDDY_ECS_AGENT_URI", "http://a:p4ss@127.0.0.1:51678"),
        ]),
        &[],
    )
    .expect("load");
    let logged = serde_json::to_string(&c.redacted()).expect("json");
    for secret in ["s3cret", "k3y", "p4ss"] {
        assert!(!logged.contains(secret), "{logged}");
    }
    assert!(logged.contains("https://u:***@collector:4318/v1/metrics?api_key=***"), "{logged}");
    let e = Config::load(None, env(&[("EDDY_ECS_AGENT_URI", "https://a:p4ss@h")]), &[]).expect_err("https");
    assert!(e.to_string().contains("ecs_agent_uri") && !e.to_string().contains("p4ss"), "{e}");
}

#[test]
fn collector_choice_from_every_layer() {
    assert_eq!(Config::load(None, env(&[]), &[]).expect("defaults").collector, CollectorChoice::Auto);
    let c = Config::load(None, env(&[("EDDY_COLLECTOR", "sock_diag")]), &[]).expect("env");
    assert_eq!(c.collector, CollectorChoice::SockDiag);
    let c = Config::load(None, env(&[("EDDY_COLLECTOR", "sock_diag")]), &[("collector", "ebpf".into())])
        .expect("flag");
    assert_eq!(c.collector, CollectorChoice::Ebpf);
    let e = Config::load(None, env(&[("EDDY_COLLECTOR", "bpf")]), &[]).expect_err("bad value");
    assert!(e.to_string().contains("sock_diag"), "{e}");
    let back: Config = toml::from_str("collector = \"sock_diag\"\n").expect("file");
    assert_eq!(back.collector, CollectorChoice::SockDiag);
    assert_eq!(layers::key("dns").map(|(n, _)| n), Some("dns_enabled"));
}

#[test]
fn dns_over_tcp_from_every_layer() {
    assert_eq!(Config::load(None, env(&[]), &[]).expect("defaults").dns.tcp, DnsTcp::Auto);
    let c = Config::load(None, env(&[("EDDY_DNS_TCP", "on")]), &[]).expect("env");
    assert_eq!(c.dns.tcp, DnsTcp::On);
    let c = Config::load(None, env(&[("EDDY_DNS_TCP", "on")]), &[("dns_tcp", "false".into())]).expect("flag");
    assert_eq!(c.dns.tcp, DnsTcp::Off);
    let back: Config = toml::from_str("[dns]\ntcp = \"true\"\n").expect("file");
    assert_eq!(back.dns.tcp, DnsTcp::On);
    let e = Config::load(None, env(&[("EDDY_DNS_TCP", "sometimes")]), &[]).expect_err("bad value");
    assert!(e.to_string().contains("dns_tcp") && e.to_string().contains("auto"), "{e}");
}

#[test]
fn durations_out_of_range_or_overflowing_name_the_key() {
    for (key, v) in [
        ("aws_cache_ttl", "999999999999999h"),
        ("aws_cache_ttl", "8d"),
        ("udp_idle_timeout", "2h"),
        ("otlp_timeout", "10m"),
        ("otlp_max_backoff", "2h"),
        ("ecs_refresh_interval", "2h"),
        ("ecs_api_refresh_interval", "25h"),
        ("poll_interval", "999999999999999h"),
    ] {
        let e = Config::load(None, env(&[]), &[(key, v.into())]).expect_err(v);
        assert!(e.to_string().contains(key), "{key}={v}: {e}");
    }
    let ok = Config::load(None, env(&[]), &[("aws_cache_ttl", "7d".into())]).expect("at the bound");
    assert_eq!(ok.aws.cache_ttl, Duration::from_secs(7 * 86_400));
}
