//! AWS context of remote addresses ("enhanced resolution"): what owns an address in the
//! VPC — load balancer, NAT gateway, endpoint, Lambda, EFS, RDS, ECS task, EC2 instance,
//! transit gateway — from the EC2 API.
//!
//! Done: [`classify`] (the ENI owner rules), [`identity`] (this host through IMDSv2, called
//! only on EC2 or when configured), [`resolver`] (cache with TTLs and a negative cache,
//! single flight, batching, a call budget, backoff, access denied → off) and [`error`].
//! Not done yet: the EC2 `DescribeNetworkInterfaces` source, wiring into flows
//! (`remote.aws`, `scope`), configuration and `/status`.

pub mod classify;
pub mod ec2;
pub mod enricher;
pub mod error;
pub mod identity;
pub mod resolver;
