//! FIPS mode (`fips_enabled`, for GovCloud): what the agent's egress looks like when every
//! HTTPS connection must use a FIPS 140 validated module.
//!
//! How: the agent does no TLS of its own for exports. Every HTTP(S) export (OTLP, the only
//! one that leaves the host) is sent in plain HTTP to the `eddy-fips-proxy` sidecar on the
//! task's loopback (`fips_local_address`, route port `fips_port_range_start + 1`, the proxy's
//! first route, `otlp`); the proxy carries it over TLS from the AWS-LC FIPS module to the
//! intake it is configured with. AWS API calls (ECS, EC2) are SigV4-signed end to end, so they
//! cannot pass a TLS-terminating proxy: the SDK calls the FIPS endpoints (`use_fips`) directly,
//! through a rustls client whose provider is the AWS-LC FIPS module (`CryptoMode::AwsLcFips`).
//!
//! Limits: the FIPS TLS client exists only in builds with the cargo feature `fips` (it compiles
//! the AWS-LC FIPS module: CMake and Go, minutes); without it, or with a configuration that
//! would leave the FIPS path (a non-loopback proxy address, `fips_https = true`), the agent
//! refuses to start. The AWS SDK refuses FIPS together with a custom endpoint
//! (`AWS_ENDPOINT_URL`): API calls then fail (counted in `/status`), nothing goes out in the
//! clear.

use std::net::IpAddr;

use serde::Serialize;

use crate::config::Config;
use crate::redact;

/// Why FIPS mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FipsError {
    #[error(
        "fips_enabled = true, but this eddy-agent build has no FIPS TLS client: build it with \
         `cargo build --release -p eddy-agent --features fips` (needs cmake and golang-go)"
    )]
    NotBuilt,
    #[error("fips_enabled = true, but the AWS-LC FIPS module is not in FIPS mode: {0}")]
    ModuleNotFips(String),
    #[error("otlp_endpoint {0:?} is not a URL the proxy can carry (expected http(s)://host[:port]/path)")]
    Endpoint(String),
}

/// The proxy's first route (`otlp`) listens on the status port + 1.
const OTLP_ROUTE_OFFSET: u16 = 1;

/// What `/status` says about FIPS mode.
#[derive(Clone, Debug, Serialize)]
pub struct FipsStatus {
    pub enabled: bool,
    /// The proxy's status port (`GET /` there shows the module and the route counters).
    pub proxy_status: String,
    /// Where OTLP batches actually go (absent when OTLP is off).
    pub otlp_via: Option<String>,
    /// The intake named by `otlp_endpoint`, reached through the proxy's `otlp` route.
    pub otlp_intake: Option<String>,
    /// AWS API calls use FIPS endpoints.
    pub aws_sdk_use_fips: bool,
    /// The TLS module of the AWS SDK's client.
    pub aws_sdk_tls: &'static str,
}

/// Checks a FIPS configuration against this build; `Ok(None)` when FIPS mode is off.
pub fn check(cfg: &Config) -> Result<Option<FipsStatus>, FipsError> {
    if !cfg.fips.enabled {
        return Ok(None);
    }
    // The rules between the FIPS keys are checked with the configuration (`config::Fips`).
    check_module()?;
    let proxy = proxy_base(cfg, 0);
    // Shown in `/status` and logs: redacted (the real URL comes from [`otlp_via_proxy`]).
    let otlp_via =
        cfg.otlp.endpoint.as_deref().map(|e| otlp_via_proxy(cfg, e)).transpose()?.map(|u| redact::url(&u));
    Ok(Some(FipsStatus {
        enabled: true,
        proxy_status: proxy,
        otlp_via,
        otlp_intake: cfg.otlp.endpoint.as_deref().map(redact::url),
        aws_sdk_use_fips: true,
        aws_sdk_tls: "rustls with the AWS-LC FIPS module (aws-lc-rs fips)",
    }))
}

/// `http://<local>:<port range start + offset>`.
fn proxy_base(cfg: &Config, offset: u16) -> String {
    let port = cfg.fips.port_range_start.saturating_add(offset);
    match cfg.fips.local_address {
        IpAddr::V4(a) => format!("http://{a}:{port}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}"),
    }
}

/// The URL the agent posts OTLP batches to in FIPS mode: the proxy's `otlp` route, with the
/// intake's path (and query) kept; scheme, host and port are the proxy's.
pub fn otlp_via_proxy(cfg: &Config, endpoint: &str) -> Result<String, FipsError> {
    let bad = || FipsError::Endpoint(redact::url(endpoint));
    let rest =
        endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://")).ok_or_else(bad)?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    Ok(format!("{}{}", proxy_base(cfg, OTLP_ROUTE_OFFSET), if path.is_empty() { "/" } else { &path }))
}

#[cfg(feature = "fips")]
fn check_module() -> Result<(), FipsError> {
    aws_lc_rs::try_fips_mode().map_err(|e| FipsError::ModuleNotFips(e.to_string()))?;
    if !rustls::crypto::default_fips_provider().fips() {
        return Err(FipsError::ModuleNotFips("the rustls FIPS provider reports fips() = false".into()));
    }
    Ok(())
}

#[cfg(not(feature = "fips"))]
fn check_module() -> Result<(), FipsError> {
    Err(FipsError::NotBuilt)
}

/// Applies FIPS mode to an AWS SDK config loader: FIPS endpoints and the FIPS TLS client.
/// Callers run only after [`check`] succeeded, so a build without the feature never gets here
/// with FIPS on; if it does, the loader is left as is and the SDK's calls still use FIPS
/// endpoints.
pub fn sdk_loader(loader: aws_config::ConfigLoader, fips: bool) -> aws_config::ConfigLoader {
    if !fips {
        return loader;
    }
    let loader = loader.use_fips(true);
    #[cfg(feature = "fips")]
    let loader = {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        loader.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::rustls(CryptoMode::AwsLcFips))
                .build_https(),
        )
    };
    loader
}

#[cfg(test)]
mod tests;
