//! The EC2 API as an [`EniSource`]: `DescribeNetworkInterfaces` filtered by the addresses
//! asked (`addresses.private-ip-address` for IPv4, `ipv6-addresses.ipv6-address` for IPv6),
//! each ENI classified ([`classify`]); ENIs of EC2 instances get the instance's `Name` tag
//! through `DescribeInstances`.

use std::net::IpAddr;

use aws_sdk_ec2::types::{Filter, NetworkInterface};

use super::classify::{EniFacts, classify};
use super::error::{ApiError, classify as classify_error};
use super::resolver::{EniFuture, EniRecord, EniSource};
use crate::flow::OwnerKind;

/// The real source.
#[derive(Clone, Debug)]
pub struct Ec2Source {
    pub client: aws_sdk_ec2::Client,
}

/// One ENI → [`EniRecord`].
pub fn eni_record(n: &NetworkInterface) -> EniRecord {
    let mut addrs: Vec<IpAddr> =
        n.private_ip_addresses().iter().filter_map(|p| p.private_ip_address()?.parse().ok()).collect();
    addrs.extend(n.private_ip_address().and_then(|a| a.parse::<IpAddr>().ok()));
    addrs.extend(n.ipv6_addresses().iter().filter_map(|p| p.ipv6_address()?.parse::<IpAddr>().ok()));
    addrs.sort();
    addrs.dedup();
    let owner = classify(&EniFacts {
        eni_id: n.network_interface_id().unwrap_or_default(),
        description: n.description().unwrap_or_default(),
        interface_type: n.interface_type().map(|t| t.as_str()).unwrap_or_default(),
        requester_id: n.requester_id(),
        instance_id: n.attachment().and_then(|a| a.instance_id()),
    });
    EniRecord {
        addrs,
        owner,
        vpc_id: n.vpc_id().map(str::to_string),
        subnet_id: n.subnet_id().map(str::to_string),
        availability_zone: n.availability_zone().map(str::to_string),
    }
}

impl Ec2Source {
    async fn by_filter(&self, filter: &str, values: Vec<String>) -> Result<Vec<EniRecord>, ApiError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_network_interfaces()
            .filters(Filter::builder().name(filter).set_values(Some(values)).build())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify_error("ec2:DescribeNetworkInterfaces", "", e))?;
            out.extend(page.network_interfaces().iter().map(eni_record));
        }
        Ok(out)
    }

    /// Names EC2 instances from their `Name` tag (best effort: a failure leaves them unnamed).
    async fn name_instances(&self, enis: &mut [EniRecord]) {
        let mut ids: Vec<String> = enis
            .iter()
            .filter(|e| e.owner.kind == OwnerKind::Ec2Instance)
            .filter_map(|e| e.owner.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return;
        }
        let Ok(out) = self.client.describe_instances().set_instance_ids(Some(ids)).send().await else {
            return;
        };
        for inst in out.reservations().iter().flat_map(|r| r.instances()) {
            let name = inst.tags().iter().find(|t| t.key() == Some("Name")).and_then(|t| t.value());
            for e in enis.iter_mut().filter(|e| e.owner.id.as_deref() == inst.instance_id()) {
                e.owner.name = name.map(str::to_string);
            }
        }
    }
}

impl EniSource for Ec2Source {
    fn describe(&self, addrs: &[IpAddr]) -> EniFuture<'_> {
        let v4: Vec<String> = addrs.iter().filter(|a| a.is_ipv4()).map(ToString::to_string).collect();
        let v6: Vec<String> = addrs.iter().filter(|a| a.is_ipv6()).map(ToString::to_string).collect();
        Box::pin(async move {
            let mut enis = Vec::new();
            if !v4.is_empty() {
                enis.extend(self.by_filter("addresses.private-ip-address", v4).await?);
            }
            if !v6.is_empty() {
                enis.extend(self.by_filter("ipv6-addresses.ipv6-address", v6).await?);
            }
            self.name_instances(&mut enis).await;
            Ok(enis)
        })
    }
}
