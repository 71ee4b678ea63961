use super::*;

fn load(pairs: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
    let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(None, env, &[])
}

#[test]
fn otlp_goes_to_the_proxy_route_with_the_intake_path() {
    let c = load(&[("EDDY_FIPS_ENABLED", "true")]).expect("config");
    let via = |e: &str| otlp_via_proxy(&c, e).expect("url");
    assert_eq!(via("https://otlp.example:4318/v1/metrics"), "http://127.0.0.1:9804/v1/metrics");
    assert_eq!(via("http://collector/v1/metrics?x=1"), "http://127.0.0.1:9804/v1/metrics?x=1");
    assert_eq!(via("https://[2001:db8::1]:443"), "http://127.0.0.1:9804/");
    assert_eq!(via("https://h?q"), "http://127.0.0.1:9804/?q");
    let c = load(&[
        ("EDDY_FIPS_ENABLED", "true"),
        ("EDDY_FIPS_LOCAL_ADDRESS", "::1"),
        ("EDDY_FIPS_PORT_RANGE_START", "19000"),
    ])
    .expect("config");
    assert_eq!(otlp_via_proxy(&c, "https://a/b").expect("url"), "http://[::1]:19001/b");
    for bad in ["ftp://a/b", "https:///v1", "https://user@host/v1"] {
        assert!(matches!(otlp_via_proxy(&c, bad), Err(FipsError::Endpoint(_))), "{bad}");
    }
}

#[test]
fn configurations_that_would_leave_the_fips_path_are_refused() {
    let e = load(&[("EDDY_FIPS_ENABLED", "true"), ("EDDY_FIPS_LOCAL_ADDRESS", "10.0.0.5")])
        .expect_err("non-local")
        .to_string();
    assert!(e.contains("10.0.0.5") && e.contains("loopback"), "{e}");
    let e =
        load(&[("EDDY_FIPS_ENABLED", "true"), ("EDDY_FIPS_HTTPS", "true")]).expect_err("https").to_string();
    assert!(e.contains("EDDY_FIPS_HTTPS=false"), "{e}");
    let e = load(&[("EDDY_FIPS_ENABLED", "true"), ("EDDY_FIPS_PORT_RANGE_START", "65530")])
        .expect_err("range")
        .to_string();
    assert!(e.contains("65530"), "{e}");
    let e = load(&[("EDDY_FIPS_LOCAL_ADDRESS", "proxy")]).expect_err("not an address").to_string();
    assert!(e.contains("EDDY_FIPS_LOCAL_ADDRESS"), "{e}");
    // Off: the FIPS keys are not checked against each other.
    load(&[("EDDY_FIPS_LOCAL_ADDRESS", "10.0.0.5")]).expect("off");
    assert!(check(&load(&[]).expect("defaults")).expect("off").is_none());
}

#[cfg(feature = "fips")]
#[test]
fn this_build_has_the_fips_module_and_reports_the_route() {
    let c =
        load(&[("EDDY_FIPS_ENABLED", "true"), ("EDDY_OTLP_ENDPOINT", "https://intake.example/v1/metrics")])
            .expect("config");
    let s = check(&c).expect("fips build").expect("on");
    assert_eq!(s.otlp_via.as_deref(), Some("http://127.0.0.1:9804/v1/metrics"));
    assert_eq!(s.proxy_status, "http://127.0.0.1:9803");
    assert!(s.aws_sdk_use_fips);
}

#[cfg(not(feature = "fips"))]
#[test]
fn a_build_without_the_module_refuses_fips_mode() {
    let c = load(&[("EDDY_FIPS_ENABLED", "true")]).expect("config");
    let e = check(&c).expect_err("not built").to_string();
    assert!(e.contains("--features fips"), "{e}");
}

/// The endpoints the SDK would call in FIPS mode (endpoint rules only, no request is sent).
#[test]
fn fips_endpoints_are_the_fips_hosts() {
    use aws_sdk_ec2::config::endpoint::{Params as Ec2Params, ResolveEndpoint as _};
    use aws_sdk_ecs::config::endpoint::{Params as EcsParams, ResolveEndpoint as _};
    let ec2 = aws_sdk_ec2::config::endpoint::DefaultResolver::new();
    let ecs = aws_sdk_ecs::config::endpoint::DefaultResolver::new();
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for (region, ec2_host, ecs_host) in [
        (
            "us-gov-west-1",
            "https://ec2.us-gov-west-1.amazonaws.com",
            "https://ecs-fips.us-gov-west-1.amazonaws.com",
        ),
        ("us-east-1", "https://ec2-fips.us-east-1.amazonaws.com", "https://ecs-fips.us-east-1.amazonaws.com"),
    ] {
        let p = Ec2Params::builder().region(region).use_fips(true).build().expect("params");
        assert_eq!(rt.block_on(ec2.resolve_endpoint(&p)).expect("endpoint").url(), ec2_host, "{region}");
        let p = EcsParams::builder().region(region).use_fips(true).build().expect("params");
        assert_eq!(rt.block_on(ecs.resolve_endpoint(&p)).expect("endpoint").url(), ecs_host, "{region}");
    }
}
