//! This host's own AWS identity through IMDSv2 (a session token PUT, then GETs): region,
//! availability zone (name and id), instance id, and the VPC, subnet and VPC CIDRs of its
//! primary interface — what `scope` (same-AZ, cross-AZ, cross-VPC) is judged against.
//!
//! IMDS is called only where it makes sense ([`imds_decision`]): never when
//! `AWS_EC2_METADATA_DISABLED=true`; when `AWS_EC2_METADATA_SERVICE_ENDPOINT` is set (an
//! explicit choice); otherwise only when DMI says this machine is an EC2 instance. A laptop
//! is never probed. From a bridge/awsvpc container IMDSv2 answers nothing (hop limit 1):
//! the agent runs with host networking, and the error says so.
//!
//! The client is the agent's own (reqwest; IMDSv2 is two plain HTTP requests), so that every
//! answer's body is bounded ([`IMDS_MAX_BYTES`]; an oversized answer is an error, counted as
//! `imds_oversized_responses` in `/status` → `aws.errors`) and redirects are not followed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::error::error_chain;
use crate::body::{BodyError, read_capped};
use crate::redact;

/// What IMDS told about this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    pub availability_zone_id: Option<String>,
    pub instance_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub vpc_cidrs: Vec<String>,
}

/// Whether IMDS may be called, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImdsDecision {
    Call { why: &'static str },
    Skip { why: &'static str },
}

/// Decides from the environment and DMI (see the module docs).
pub fn imds_decision(env: &HashMap<String, String>, dmi_ec2: bool) -> ImdsDecision {
    let set = |k: &str| env.get(k).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty());
    if set("AWS_EC2_METADATA_DISABLED").as_deref() == Some("true") {
        return ImdsDecision::Skip { why: "AWS_EC2_METADATA_DISABLED=true" };
    }
    if set("AWS_EC2_METADATA_SERVICE_ENDPOINT").is_some() {
        return ImdsDecision::Call { why: "AWS_EC2_METADATA_SERVICE_ENDPOINT is set" };
    }
    if dmi_ec2 {
        return ImdsDecision::Call { why: "DMI says this is an EC2 instance" };
    }
    ImdsDecision::Skip { why: "not an EC2 instance (DMI) and no IMDS endpoint configured" }
}

/// Whether `/sys/class/dmi/id` (under `root`) names Amazon EC2 (Nitro: vendor; Xen: uuid).
pub fn dmi_is_ec2(root: &Path) -> bool {
    let read =
        |f: &str| std::fs::read_to_string(root.join(f)).map(|s| s.trim().to_string()).unwrap_or_default();
    read("sys_vendor") == "Amazon EC2"
        || read("board_vendor") == "Amazon EC2"
        || read("bios_vendor") == "Amazon EC2"
        || read("product_uuid").to_ascii_lowercase().starts_with("ec2")
        || read("product_version").to_ascii_lowercase().contains("amazon")
}

/// Largest IMDS answer body read (64 KiB; real ones are a few hundred bytes at most).
pub const IMDS_MAX_BYTES: usize = 64 << 10;

/// IMDS's address when `AWS_EC2_METADATA_SERVICE_ENDPOINT` is not set.
const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Session token lifetime asked for (6 h, the SDK's default).
const TOKEN_TTL_SECONDS: &str = "21600";

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "IMDS {path}: {reason}. If the agent runs in a bridge or awsvpc container, IMDSv2 does not \
         answer (hop limit 1): run it with host networking, or set the region and zone in the configuration"
    )]
    Imds { path: String, reason: String },
    #[error("IMDS {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("IMDS {path}: answer larger than {limit} bytes (cap); ignored")]
    TooLarge { path: String, limit: usize },
    #[error("IMDS endpoint {endpoint:?} is not a valid URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

impl IdentityError {
    /// Counter name in `/status` → `aws.errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::Imds { .. } | IdentityError::Endpoint { .. } => "imds_unreachable",
            IdentityError::Status { .. } => "imds_http_errors",
            IdentityError::TooLarge { .. } => "imds_oversized_responses",
        }
    }
}

/// One IMDSv2 session: the client, the base URL and the token.
struct Session {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Session {
    async fn open(base: String, timeout: Duration) -> Result<Session, IdentityError> {
        let client = crate::plain_http::client(timeout)
            .map_err(|e| IdentityError::Endpoint { endpoint: redact::url(&base), reason: e.to_string() })?;
        let path = "/latest/api/token".to_string();
        let req = client
            .put(format!("{base}{path}"))
            .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS);
        let token = send(req, &path).await?;
        Ok(Session { client, base, token })
    }

    async fn get(&self, path: String) -> Result<String, IdentityError> {
        let req =
            self.client.get(format!("{}{path}", self.base)).header("x-aws-ec2-metadata-token", &self.token);
        send(req, &path).await
    }
}

/// Sends `req` (two attempts for transport errors) and reads its body, bounded.
async fn send(req: reqwest::RequestBuilder, path: &str) -> Result<String, IdentityError> {
    let imds = |e: reqwest::Error| IdentityError::Imds {
        path: path.to_string(),
        reason: error_chain(&e.without_url()),
    };
    let resp = match req.try_clone() {
        Some(again) => match req.send().await {
            Ok(r) => r,
            Err(_) => again.send().await.map_err(imds)?,
        },
        None => req.send().await.map_err(imds)?,
    };
    let status = resp.status();
    if !status.is_success() {
        return Err(IdentityError::Status { path: path.to_string(), status: status.as_u16() });
    }
    let body = read_capped(resp, IMDS_MAX_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge { limit } => IdentityError::TooLarge { path: path.to_string(), limit },
        BodyError::Read(reason) => IdentityError::Imds { path: path.to_string(), reason },
    })?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

/// Reads the identity. `endpoint`: an explicit IMDS base URL (else the SDK's: the
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` environment variable or the link-local default).
pub async fn fetch(endpoint: Option<&str>, timeout: Duration) -> Result<Identity, IdentityError> {
    let base = match endpoint {
        Some(e) => e.to_string(),
        None => std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
    };
    let base = base.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(IdentityError::Endpoint {
            endpoint: redact::url(&base),
            reason: "expected http:// or https://".into(),
        });
    }
    let session = Session::open(base, timeout).await?;
    let get = |path: String| session.get(path);
    const MD: &str = "/latest/meta-data";
    let az = get(format!("{MD}/placement/availability-zone")).await?;
    let region = match get(format!("{MD}/placement/region")).await {
        Ok(r) => r,
        // Older IMDS versions: the region is the zone without its letter.
        Err(_) => az.trim_end_matches(|c: char| c.is_ascii_alphabetic()).to_string(),
    };
    let mac = get(format!("{MD}/mac")).await?;
    let net = format!("{MD}/network/interfaces/macs/{mac}");
    Ok(Identity {
        region: Some(region),
        availability_zone: Some(az),
        availability_zone_id: get(format!("{MD}/placement/availability-zone-id")).await.ok(),
        instance_id: get(format!("{MD}/instance-id")).await.ok(),
        vpc_id: get(format!("{net}/vpc-id")).await.ok(),
        subnet_id: get(format!("{net}/subnet-id")).await.ok(),
        vpc_cidrs: get(format!("{net}/vpc-ipv4-cidr-blocks"))
            .await
            .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
