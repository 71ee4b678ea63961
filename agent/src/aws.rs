//! AWS context of remote addresses ("enhanced resolution"): what owns an address in the
//! VPC — load balancer, NAT gateway, endpoint, Lambda, EFS, RDS, ECS task, EC2 instance,
//! transit gateway — from the EC2 API.
//!
//! How: [`identity`] reads this host through IMDSv2 (only on EC2 or when configured);
//! [`enricher`] labels flows (`remote.aws`, `scope`) from the cache of [`resolver`]
//! (TTLs, negative cache, single flight, batches, a call budget, backoff, access denied →
//! off), which [`ec2`] fills through `DescribeNetworkInterfaces`, each ENI named by
//! [`classify`]; [`error`] classifies API errors for every AWS caller.
//!
//! Limits: an address is labelled from its second sighting on; Elastic IPs count as
//! `internet`; VPC endpoint service names are not looked up.

pub mod classify;
pub mod ec2;
pub mod enricher;
pub mod error;
pub mod identity;
pub mod resolver;
pub mod sdk;
