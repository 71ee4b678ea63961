//! Enhanced resolution on the data path: `remote.aws` (what owns the remote address) and the
//! flow's `scope` (same-host, same-AZ, cross-AZ, cross-VPC, internet), judged against this
//! host's own identity. Reads the resolver's cache only; public addresses outside the VPC
//! are `internet` without any API call.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::identity::{Identity, IdentityError};
use super::resolver::{AwsResolver, Lookup, ResolverStatus};
use crate::enrich::Enricher;
use crate::flow::RemoteAws;
use crate::flow::{FlowRecord, Scope};

/// `/status` → `aws`: why resolution runs, this host's identity, and the resolver's counters.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AwsStatus {
    pub decision: String,
    pub identity: Identity,
    pub identity_error: Option<String>,
    /// Failed identity reads by kind.
    pub errors: BTreeMap<&'static str, u64>,
    pub resolver: ResolverStatus,
}

/// The enricher; its identity is filled once IMDS (or the configuration) answers.
pub struct AwsEnricher {
    pub resolver: Arc<AwsResolver>,
    own: RwLock<Identity>,
    /// Why resolution runs (`/status`).
    pub decision: String,
    identity_error: Mutex<Option<String>>,
    /// Failed identity reads by kind ([`IdentityError::kind`]), for `/status` and `/metrics`.
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl std::fmt::Debug for AwsEnricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsEnricher").field("decision", &self.decision).finish_non_exhaustive()
    }
}

impl AwsEnricher {
    pub fn new(resolver: Arc<AwsResolver>, own: Identity, decision: String) -> Self {
        AwsEnricher {
            resolver,
            own: RwLock::new(own),
            decision,
            identity_error: Mutex::new(None),
            errors: Mutex::default(),
        }
    }

    /// Replaces the identity (fields already set by the configuration win).
    pub fn set_identity(&self, id: Identity) {
        let mut own = self.own.write().unwrap_or_else(PoisonError::into_inner);
        let keep = own.clone();
        *own = Identity {
            region: keep.region.or(id.region),
            availability_zone: keep.availability_zone.or(id.availability_zone),
            availability_zone_id: keep.availability_zone_id.or(id.availability_zone_id),
            instance_id: keep.instance_id.or(id.instance_id),
            vpc_id: keep.vpc_id.or(id.vpc_id),
            subnet_id: keep.subnet_id.or(id.subnet_id),
            vpc_cidrs: if keep.vpc_cidrs.is_empty() { id.vpc_cidrs } else { keep.vpc_cidrs },
        };
    }

    pub fn identity(&self) -> Identity {
        self.own.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records a failed identity read: its message and its kind's counter.
    pub fn set_identity_error(&self, e: &IdentityError) {
        *self.errors.lock().unwrap_or_else(PoisonError::into_inner).entry(e.kind()).or_default() += 1;
        *self.identity_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
    }
}

/// RFC 1918, CGNAT (100.64/10) and IPv6 unique-local addresses.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `ip` is inside `cidr` (`10.0.0.0/16`, `2600:1f18::/56`); malformed CIDRs match nothing.
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else { return false };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The scope of a flow to an ENI, from this host's identity.
pub fn scope_of(a: &RemoteAws, own: &Identity) -> Option<Scope> {
    if let (Some(mine), Some(theirs)) = (&own.vpc_id, &a.vpc)
        && mine != theirs
    {
        return Some(Scope::CrossVpc);
    }
    match (&own.availability_zone, &a.availability_zone) {
        (Some(mine), Some(theirs)) if mine == theirs => Some(Scope::SameAz),
        (Some(_), Some(_)) => Some(Scope::CrossAz),
        _ => None,
    }
}

impl Enricher for AwsEnricher {
    fn enrich(&self, r: &mut FlowRecord) {
        let ip = r.remote.addr;
        if r.scope == Some(Scope::SameHost) || ip.is_loopback() {
            r.scope = Some(Scope::SameHost);
            return;
        }
        if ip.is_unspecified() || ip.is_multicast() || link_local(ip) {
            return;
        }
        let own = self.own.read().unwrap_or_else(PoisonError::into_inner);
        let in_vpc = own.vpc_cidrs.iter().any(|c| in_cidr(ip, c));
        if !is_private(ip) && !in_vpc {
            r.scope = Some(Scope::Internet);
            return;
        }
        let a = match self.resolver.resolve(ip) {
            Lookup::Found(a) => a,
            other => {
                r.labels_pending = other == Lookup::Pending;
                if !own.vpc_cidrs.is_empty() && !in_vpc {
                    r.scope = Some(Scope::CrossVpc);
                }
                return;
            }
        };
        r.scope = scope_of(&a, &own);
        r.remote.aws = Some(a);
    }

    fn health(&self) -> crate::enrich::ProviderHealth {
        crate::enrich::ProviderHealth::new(AwsStatus {
            decision: self.decision.clone(),
            identity: self.own.read().unwrap_or_else(PoisonError::into_inner).clone(),
            identity_error: self.identity_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            errors: self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            resolver: self.resolver.status(),
        })
    }
}

impl crate::enrich::Health for AwsStatus {
    fn errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.errors.clone()
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::resolver::ResolverSettings;
    use crate::flow::OwnerKind;
    use crate::flow::{Endpoint, Protocol};

    fn own() -> Identity {
        Identity {
            availability_zone: Some("us-east-1a".into()),
            vpc_id: Some("vpc-1".into()),
            vpc_cidrs: vec!["10.0.0.0/16".into()],
            ..Default::default()
        }
    }

    fn eni(vpc: &str, az: &str) -> RemoteAws {
        RemoteAws {
            kind: OwnerKind::Alb,
            name: None,
            id: None,
            vpc: Some(vpc.into()),
            subnet: None,
            availability_zone: Some(az.into()),
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(scope_of(&eni("vpc-1", "us-east-1a"), &own()), Some(Scope::SameAz));
        assert_eq!(scope_of(&eni("vpc-1", "us-east-1b"), &own()), Some(Scope::CrossAz));
        assert_eq!(scope_of(&eni("vpc-2", "us-east-1a"), &own()), Some(Scope::CrossVpc));
        assert_eq!(scope_of(&eni("vpc-1", "us-east-1a"), &Identity::default()), None);
        assert!(in_cidr("10.0.3.4".parse().expect("ip"), "10.0.0.0/16"));
        assert!(!in_cidr("10.1.3.4".parse().expect("ip"), "10.0.0.0/16"));
        assert!(in_cidr("2600:1f18::1".parse().expect("ip"), "2600:1f18::/56"));
        assert!(!in_cidr("10.0.0.1".parse().expect("ip"), "garbage"));
        assert!(is_private("100.64.1.1".parse().expect("ip")) && is_private("fd00::1".parse().expect("ip")));
        assert!(!is_private("8.8.8.8".parse().expect("ip")));
    }

    #[test]
    fn public_and_outside_addresses_need_no_api_call() {
        let r = Arc::new(AwsResolver::new(ResolverSettings::default()));
        let e = AwsEnricher::new(r.clone(), own(), "test".into());
        let mut f = FlowRecord::test(Protocol::Tcp, 1, false);
        f.remote = Endpoint::new("203.0.113.9".parse().expect("ip"), 443);
        e.enrich(&mut f);
        assert_eq!(f.scope, Some(Scope::Internet));
        f.scope = None;
        f.remote = Endpoint::new("172.31.0.9".parse().expect("ip"), 443);
        e.enrich(&mut f);
        assert_eq!(f.scope, Some(Scope::CrossVpc), "private, outside the VPC, not (yet) known");
        f.scope = None;
        f.remote = Endpoint::new("127.0.0.1".parse().expect("ip"), 443);
        e.enrich(&mut f);
        assert_eq!(f.scope, Some(Scope::SameHost));
        assert_eq!(r.status().queued, 1, "only the private address was queued");
    }
}

#[cfg(test)]
mod lookup_tests {
    use super::*;
    use crate::aws::classify::Owner;
    use crate::aws::resolver::{EniRecord, ResolverSettings};
    use crate::flow::OwnerKind;
    use crate::flow::{Endpoint, Protocol};

    #[test]
    fn a_resolved_address_labels_the_flow() {
        let r = Arc::new(AwsResolver::new(ResolverSettings::default()));
        let ip: IpAddr = "10.0.1.20".parse().expect("ip");
        r.store_for_test(
            &[ip],
            &[EniRecord {
                addrs: vec![ip],
                owner: Owner { kind: OwnerKind::Alb, name: Some("web".into()), id: None },
                vpc_id: Some("vpc-1".into()),
                subnet_id: None,
                availability_zone: Some("us-east-1b".into()),
            }],
        );
        let own = Identity {
            availability_zone: Some("us-east-1a".into()),
            vpc_id: Some("vpc-1".into()),
            vpc_cidrs: vec!["10.0.0.0/16".into()],
            ..Default::default()
        };
        let e = AwsEnricher::new(r, own, "test".into());
        let mut f = FlowRecord::test(Protocol::Tcp, 1, true);
        f.remote = Endpoint::new(ip, 443);
        e.enrich(&mut f);
        assert_eq!(f.scope, Some(Scope::CrossAz));
        assert_eq!(f.remote.aws.as_ref().map(|a| a.kind), Some(OwnerKind::Alb));
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(
            (v["scope"].as_str(), v["remote"]["aws"]["kind"].as_str()),
            (Some("cross-az"), Some("alb"))
        );
    }
}
