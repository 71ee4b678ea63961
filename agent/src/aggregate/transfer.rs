//! Priced data transfer: cross-AZ bytes counted once, and bytes through a NAT gateway, per
//! workload pair, with an estimated cost.
//!
//! What is counted, per flow delta:
//! - **cross-AZ**: the flow's `scope` is `cross-az` (or, without a scope, both ends' zones are
//!   known and differ). The bytes the local end *sent* are counted. Every byte of a flow is
//!   sent by exactly one end, so when both ends run Eddy the sum over agents counts each byte
//!   once. A remote end that cannot run Eddy — an AWS-managed resource ([`managed`]: load
//!   balancers, NAT gateways, endpoints, Lambda, EFS, RDS, transit gateways) — has no agent to
//!   count what it sends, so the bytes received from it are counted here (`received`).
//! - **billed** cross-AZ bytes: all of them except those to or from an ALB or a CLB (AWS does
//!   not bill the ALB/CLB ↔ target leg across zones). AWS charges inter-AZ transfer on both
//!   sides (`out` of one zone, `in` to the other), so a billed byte costs twice the per-GB price.
//! - **NAT gateway**: bytes in both directions of a flow whose remote end is a NAT gateway
//!   (processing is charged per GB processed, whatever the direction).
//!
//! Limits: traffic that goes through a NAT gateway to the internet has the internet address as
//! its remote end (Eddy reads no route tables), so only flows addressed to the gateway itself
//! are priced as NAT processing; peers outside the cluster that do not run Eddy (plain EC2
//! instances) count only what this end sent. Prices are estimates: no free tier, no savings
//! plans, GB = 10^9 bytes.
//!
//! Bounded like the series: at most `max_series` pairs; beyond, a new pair's bytes go to the
//! `other` pair (exact totals). Pairs idle for `series_idle_intervals` are dropped.

use std::collections::HashMap;

use serde::Serialize;

use super::OTHER;
use super::key::{local_az, remote_az};
use crate::flow::{EcsLabels, FlowRecord, OwnerKind, Scope};

/// Default inter-AZ price, USD per GB, charged on each side of the crossing.
pub const DEFAULT_INTER_AZ_USD_PER_GB: f64 = 0.01;
/// Default NAT gateway processing price, USD per GB processed.
pub const DEFAULT_NAT_GATEWAY_USD_PER_GB: f64 = 0.045;

/// Prices, kept as integer nano-USD per GB (10^9 bytes), so that a cost is an exact integer of
/// atto-USD (10^-18 USD): bytes × nano-USD/GB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prices {
    pub inter_az_nano_usd_per_gb: u64,
    pub nat_gateway_nano_usd_per_gb: u64,
}

impl Prices {
    /// From USD per GB (negative or non-finite prices count as 0).
    pub fn from_usd_per_gb(inter_az: f64, nat_gateway: f64) -> Self {
        let nano = |p: f64| if p.is_finite() && p > 0.0 { (p * 1e9).round() as u64 } else { 0 };
        Prices { inter_az_nano_usd_per_gb: nano(inter_az), nat_gateway_nano_usd_per_gb: nano(nat_gateway) }
    }

    /// Cost of billed cross-AZ bytes: each is charged out of one zone and into the other.
    pub fn cross_az(&self, billed_bytes: u64) -> Usd {
        Usd(u128::from(billed_bytes) * 2 * u128::from(self.inter_az_nano_usd_per_gb))
    }

    pub fn nat_gateway(&self, bytes: u64) -> Usd {
        Usd(u128::from(bytes) * u128::from(self.nat_gateway_nano_usd_per_gb))
    }
}

impl Default for Prices {
    fn default() -> Self {
        Prices::from_usd_per_gb(DEFAULT_INTER_AZ_USD_PER_GB, DEFAULT_NAT_GATEWAY_USD_PER_GB)
    }
}

/// An amount in atto-USD (10^-18 USD): exact for any realistic byte count and price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usd(pub u128);

const ATTO: u128 = 1_000_000_000_000_000_000;

impl Usd {
    pub fn as_f64(self) -> f64 {
        (self.0 / ATTO) as f64 + (self.0 % ATTO) as f64 / ATTO as f64
    }
}

impl std::ops::Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0 + o.0)
    }
}

/// Exact decimal, without trailing zeros: `0.000000002`, `1.5`, `3`.
impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (int, frac) = (self.0 / ATTO, self.0 % ATTO);
        if frac == 0 {
            return write!(f, "{int}");
        }
        let digits = format!("{frac:018}");
        write!(f, "{int}.{}", digits.trim_end_matches('0'))
    }
}

/// Kinds of remote end that cannot run Eddy: what they send is counted by the local end.
pub fn managed(kind: OwnerKind) -> bool {
    matches!(
        kind,
        OwnerKind::Alb
            | OwnerKind::Nlb
            | OwnerKind::Gwlb
            | OwnerKind::Clb
            | OwnerKind::NatGateway
            | OwnerKind::VpcEndpoint
            | OwnerKind::Lambda
            | OwnerKind::Efs
            | OwnerKind::Rds
            | OwnerKind::TransitGateway
    )
}

/// The workload pair of a transfer. Empty strings are absent labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TransferKey {
    pub local_cluster: String,
    /// ECS service, else task family, else container (`host`).
    pub local_workload: String,
    pub local_az: String,
    pub remote_cluster: String,
    /// ECS service, task family or container; else the AWS resource's name or id; else the address.
    pub remote_workload: String,
    /// Remote AWS resource kind (enhanced resolution).
    pub remote_kind: String,
    pub remote_az: String,
}

impl TransferKey {
    fn other() -> Self {
        let o = || OTHER.to_string();
        TransferKey {
            local_cluster: o(),
            local_workload: o(),
            local_az: o(),
            remote_cluster: o(),
            remote_workload: o(),
            remote_kind: o(),
            remote_az: o(),
        }
    }

    pub fn is_other(&self) -> bool {
        self.local_workload == OTHER && self.remote_workload == OTHER && self.remote_az == OTHER
    }

    /// Whether cross-AZ bytes of this pair are billed (not an ALB or CLB).
    pub fn billed(&self) -> bool {
        self.remote_kind != OwnerKind::Alb.as_str() && self.remote_kind != OwnerKind::Clb.as_str()
    }

    /// `(label, value)` pairs in exposition order, empty values left out.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        [
            ("local_cluster", &self.local_cluster),
            ("local_workload", &self.local_workload),
            ("local_az", &self.local_az),
            ("remote_cluster", &self.remote_cluster),
            ("remote_workload", &self.remote_workload),
            ("remote_kind", &self.remote_kind),
            ("remote_az", &self.remote_az),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect()
    }
}

/// Byte counters of one pair (totals since start, or one flow's delta).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransferValues {
    /// Cross-AZ bytes sent by the local end.
    pub cross_az_sent: u64,
    /// Cross-AZ bytes received from a managed remote end (see [`managed`]).
    pub cross_az_received: u64,
    /// The part of both that AWS bills (not to or from an ALB/CLB).
    pub cross_az_billed: u64,
    /// Bytes both ways of flows whose remote end is a NAT gateway.
    pub nat_gateway: u64,
}

impl TransferValues {
    pub fn add(&mut self, o: &TransferValues) {
        self.cross_az_sent += o.cross_az_sent;
        self.cross_az_received += o.cross_az_received;
        self.cross_az_billed += o.cross_az_billed;
        self.nat_gateway += o.nat_gateway;
    }

    pub fn cross_az(&self) -> u64 {
        self.cross_az_sent + self.cross_az_received
    }

    pub fn cost(&self, p: &Prices) -> Usd {
        p.cross_az(self.cross_az_billed) + p.nat_gateway(self.nat_gateway)
    }

    pub fn is_zero(&self) -> bool {
        *self == TransferValues::default()
    }
}

/// Workload name of an end from its ECS labels.
fn ecs_workload(l: Option<&EcsLabels>) -> Option<String> {
    let l = l?;
    let known = |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(String::from);
    known(&l.service)
        .or_else(|| known(&l.task_family).filter(|f| f != crate::flow::labels::UNKNOWN))
        .or_else(|| known(&l.container_name))
}

/// Whether the flow crosses zones: its scope says so, or (no scope) both zones are known and differ.
fn crosses(r: &FlowRecord, local: &str, remote: &str) -> bool {
    match r.scope {
        Some(s) => s == Scope::CrossAz,
        None => !local.is_empty() && !remote.is_empty() && local != remote,
    }
}

/// The pair and priced bytes of a flow's delta (`sent`, `received`), if any applies.
pub fn classify(
    r: &FlowRecord,
    host_az: Option<&str>,
    sent: u64,
    received: u64,
) -> Option<(TransferKey, TransferValues)> {
    let aws = r.remote.aws.as_deref();
    let kind = aws.map(|a| a.kind);
    let (l_az, r_az) = (local_az(r, host_az), remote_az(r));
    let cross = crosses(r, &l_az, &r_az);
    let nat = kind == Some(OwnerKind::NatGateway);
    if !cross && !nat {
        return None;
    }
    let mut v = TransferValues::default();
    if cross {
        v.cross_az_sent = sent;
        if r.remote.ecs.is_none() && kind.is_some_and(managed) {
            v.cross_az_received = received;
        }
        if !matches!(kind, Some(OwnerKind::Alb | OwnerKind::Clb)) {
            v.cross_az_billed = v.cross_az();
        }
    }
    if nat {
        v.nat_gateway = sent + received;
    }
    let (local, remote) = (r.local.ecs.as_deref(), r.remote.ecs.as_deref());
    let remote_workload = ecs_workload(remote)
        .or_else(|| aws.and_then(|a| a.name.clone().or_else(|| a.id.clone())))
        .unwrap_or_else(|| r.remote.addr.to_string());
    let key = TransferKey {
        local_cluster: local.and_then(|l| l.cluster.clone()).unwrap_or_default(),
        local_workload: ecs_workload(local).unwrap_or_default(),
        local_az: l_az,
        remote_cluster: remote.and_then(|l| l.cluster.clone()).unwrap_or_default(),
        remote_workload,
        remote_kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
        remote_az: r_az,
    };
    Some((key, v))
}

/// One pair's totals and costs, as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRow {
    pub key: TransferKey,
    pub values: TransferValues,
    pub cross_az_cost: Usd,
    pub nat_gateway_cost: Usd,
}

/// Every pair with its totals, as published for `/metrics` and OTLP.
pub type TransferSnapshot = std::sync::Arc<Vec<TransferRow>>;

/// The bounded map of pairs.
#[derive(Debug, Default)]
pub struct Transfers {
    /// Totals, with the interval each pair last moved in.
    pairs: HashMap<TransferKey, (TransferValues, u64)>,
    /// New pairs folded into `other` because the map was full.
    pub folded: u64,
    pub expired: u64,
    /// Whether the `other` pair exists (it is never expired).
    has_other: bool,
}

impl Transfers {
    /// Adds a delta; a new pair beyond `max - 1` regular pairs goes to `other` (so at most
    /// `max` pairs exist, `other` included).
    pub fn add(&mut self, key: TransferKey, v: &TransferValues, max: usize, interval: u64) {
        let regular = self.pairs.len() - usize::from(self.has_other);
        let key = if regular + 1 >= max && !self.pairs.contains_key(&key) {
            self.folded += 1;
            self.has_other = true;
            TransferKey::other()
        } else {
            key
        };
        let e = self.pairs.entry(key).or_default();
        e.0.add(v);
        e.1 = interval;
    }

    /// Drops pairs idle for `idle` intervals (never `other`).
    pub fn expire(&mut self, now: u64, idle: u64) {
        let before = self.pairs.len();
        self.pairs.retain(|k, (_, last)| k.is_other() || now.saturating_sub(*last) < idle);
        self.expired += (before - self.pairs.len()) as u64;
    }

    /// Every pair with its totals and costs, sorted by labels.
    pub fn rows(&self, p: &Prices) -> Vec<TransferRow> {
        let mut v: Vec<TransferRow> = self
            .pairs
            .iter()
            .map(|(k, (v, _))| TransferRow {
                key: k.clone(),
                values: *v,
                cross_az_cost: p.cross_az(v.cross_az_billed),
                nat_gateway_cost: p.nat_gateway(v.nat_gateway),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
