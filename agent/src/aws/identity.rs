//! This host's own AWS identity through IMDSv2 (a session token PUT, then GETs): region,
//! availability zone (name and id), instance id, and the VPC, subnet and VPC CIDRs of its
//! primary interface — what `scope` (same-AZ, cross-AZ, cross-VPC) is judged against.
//!
//! IMDS is called only where it makes sense ([`imds_decision`]): never when
//! `AWS_EC2_METADATA_DISABLED=true`; when `AWS_EC2_METADATA_SERVICE_ENDPOINT` is set (an
//! explicit choice); otherwise only when DMI says this machine is an EC2 instance. A laptop
//! is never probed. From a bridge/awsvpc container IMDSv2 answers nothing (hop limit 1):
//! the agent runs with host networking, and the error says so.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::error::error_chain;

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

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "IMDS {path}: {reason}. If the agent runs in a bridge or awsvpc container, IMDSv2 does not \
         answer (hop limit 1): run it with host networking, or set the region and zone in the configuration"
    )]
    Imds { path: String, reason: String },
    #[error("IMDS endpoint {endpoint:?} is not a valid URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// Reads the identity. `endpoint`: an explicit IMDS base URL (else the SDK's: the
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT` environment variable or the link-local default).
pub async fn fetch(endpoint: Option<&str>, timeout: Duration) -> Result<Identity, IdentityError> {
    let mut b =
        aws_config::imds::Client::builder().connect_timeout(timeout).read_timeout(timeout).max_attempts(2);
    if let Some(e) = endpoint {
        b = b
            .endpoint(e)
            .map_err(|err| IdentityError::Endpoint { endpoint: e.to_string(), reason: err.to_string() })?;
    }
    let client = b.build();
    let get = |path: String| {
        let client = client.clone();
        async move {
            client
                .get(path.clone())
                .await
                .map(|v| v.as_ref().trim().to_string())
                .map_err(|e| IdentityError::Imds { path, reason: error_chain(&e) })
        }
    };
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
