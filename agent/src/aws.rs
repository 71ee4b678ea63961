//! AWS context of remote addresses ("enhanced resolution"): what owns an address in the
//! VPC — load balancer, NAT gateway, endpoint, Lambda, EFS, RDS, ECS task, EC2 instance,
//! transit gateway — from the EC2 API.
//!
//! Done: [`classify`], the ENI owner rules. Not done yet: this host's own identity
//! (IMDSv2), the cached, rate-limited DescribeNetworkInterfaces resolver and the `scope`
//! of each flow (same-AZ, cross-AZ, cross-VPC, internet).

pub mod classify;
pub mod identity;
