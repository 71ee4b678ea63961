//! What owns an elastic network interface, from what the interface itself carries: its
//! description (the formats AWS services write), interface type, requester id and
//! attachment. Pure: tested without any API.
//!
//! Real ENIs are what this is written against; an emulator that fakes the interface type
//! and requester id (moto) still classifies right from the descriptions.

use crate::flow::OwnerKind;

/// What an ENI carries that tells its owner.
#[derive(Clone, Debug, Default)]
pub struct EniFacts<'a> {
    pub eni_id: &'a str,
    pub description: &'a str,
    /// `interface`, `nat_gateway`, `vpc_endpoint`, `lambda`, `efs`, `transit_gateway`, `branch`, ...
    pub interface_type: &'a str,
    pub requester_id: Option<&'a str>,
    /// The instance the ENI is attached to, if any.
    pub instance_id: Option<&'a str>,
}

/// The owner: kind, a human name and the resource id, where the ENI says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: Option<String>,
    pub id: Option<String>,
}

fn owner(kind: OwnerKind, name: Option<&str>, id: Option<&str>) -> Owner {
    Owner { kind, name: name.map(str::to_string), id: id.map(str::to_string) }
}

/// The first whitespace-separated word starting with `prefix`, trimmed of punctuation.
fn word<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ','))
        .find(|w| w.starts_with(prefix))
}

/// `<name>-<uuid>` → `<name>` (Lambda ENI descriptions end with a 36-character UUID).
fn strip_uuid(s: &str) -> &str {
    match s.len().checked_sub(37) {
        Some(cut)
            if s.as_bytes().get(cut) == Some(&b'-')
                && s[cut + 1..].bytes().filter(|b| *b == b'-').count() == 4 =>
        {
            &s[..cut]
        }
        _ => s,
    }
}

/// Classifies an ENI.
pub fn classify(f: &EniFacts<'_>) -> Owner {
    let d = f.description.trim();
    if let Some(rest) = d.strip_prefix("ELB ") {
        let mut parts = rest.splitn(3, '/');
        let (kind, name) = match (parts.next(), parts.next()) {
            (Some("app"), Some(n)) => (OwnerKind::Alb, n),
            (Some("net"), Some(n)) => (OwnerKind::Nlb, n),
            (Some("gwy"), Some(n)) => (OwnerKind::Gwlb, n),
            _ => (OwnerKind::Clb, rest),
        };
        return owner(kind, Some(name), Some(rest));
    }
    let t = f.interface_type;
    if t == "nat_gateway" || d.starts_with("Interface for NAT Gateway") {
        let id = word(d, "nat-");
        return owner(OwnerKind::NatGateway, id, id);
    }
    if t == "vpc_endpoint" || t == "gateway_load_balancer_endpoint" || d.starts_with("VPC Endpoint Interface")
    {
        let id = word(d, "vpce-");
        return owner(OwnerKind::VpcEndpoint, id, id);
    }
    if t == "lambda" || d.starts_with("AWS Lambda VPC ENI") {
        let name = d.strip_prefix("AWS Lambda VPC ENI-").map(strip_uuid);
        return owner(OwnerKind::Lambda, name, name);
    }
    if t == "efs" || d.starts_with("EFS mount target") {
        return owner(OwnerKind::Efs, word(d, "fs-"), word(d, "fsmt-").or_else(|| word(d, "fs-")));
    }
    if d == "RDSNetworkInterface" || f.requester_id == Some("amazon-rds") {
        return owner(OwnerKind::Rds, None, None);
    }
    if t == "transit_gateway" || d.starts_with("Network Interface for Transit Gateway Attachment") {
        let id = word(d, "tgw-attach-");
        return owner(OwnerKind::TransitGateway, id, id);
    }
    if (d.starts_with("arn:aws") && d.contains(":ecs:") && d.contains(":attachment/")) || t == "branch" {
        let attachment = d.rsplit('/').next().filter(|s| !s.is_empty() && *s != d);
        return owner(OwnerKind::EcsTask, None, attachment);
    }
    if let Some(i) = f.instance_id {
        return owner(OwnerKind::Ec2Instance, None, Some(i));
    }
    owner(OwnerKind::Other, Some(d).filter(|d| !d.is_empty()), Some(f.eni_id).filter(|i| !i.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(description: &str) -> Owner {
        classify(&EniFacts {
            eni_id: "eni-1",
            description,
            interface_type: "interface",
            ..Default::default()
        })
    }

    #[test]
    fn load_balancers() {
        let alb = of("ELB app/my-public-alb/50dc6c495c0c9188");
        assert_eq!((alb.kind, alb.name.as_deref()), (OwnerKind::Alb, Some("my-public-alb")));
        assert_eq!(alb.id.as_deref(), Some("app/my-public-alb/50dc6c495c0c9188"));
        assert_eq!(of("ELB net/internal-nlb/7b1b8f2c3d4e5f60").kind, OwnerKind::Nlb);
        assert_eq!(of("ELB gwy/inspect/0a1b2c3d4e5f6071").kind, OwnerKind::Gwlb);
        let clb = of("ELB legacy-web");
        assert_eq!((clb.kind, clb.name.as_deref()), (OwnerKind::Clb, Some("legacy-web")));
    }

    #[test]
    fn managed_services() {
        let nat = of("Interface for NAT Gateway nat-0a1b2c3d4e5f67890");
        assert_eq!((nat.kind, nat.id.as_deref()), (OwnerKind::NatGateway, Some("nat-0a1b2c3d4e5f67890")));
        let vpce = of("VPC Endpoint Interface vpce-0123456789abcdef0");
        assert_eq!((vpce.kind, vpce.id.as_deref()), (OwnerKind::VpcEndpoint, Some("vpce-0123456789abcdef0")));
        let lambda = of("AWS Lambda VPC ENI-resize-images-3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b");
        assert_eq!((lambda.kind, lambda.name.as_deref()), (OwnerKind::Lambda, Some("resize-images")));
        let efs = of("EFS mount target for fs-12345678 (fsmt-87654321)");
        assert_eq!(
            (efs.kind, efs.name.as_deref(), efs.id.as_deref()),
            (OwnerKind::Efs, Some("fs-12345678"), Some("fsmt-87654321"))
        );
        assert_eq!(of("RDSNetworkInterface").kind, OwnerKind::Rds);
        let tgw = of("Network Interface for Transit Gateway Attachment tgw-attach-0123456789abcdef0");
        assert_eq!(
            (tgw.kind, tgw.id.as_deref()),
            (OwnerKind::TransitGateway, Some("tgw-attach-0123456789abcdef0"))
        );
        let task = of("arn:aws:ecs:us-east-1:123456789012:attachment/3b8f9c2e-1a2b-4c3d-9e8f-0a1b2c3d4e5f");
        assert_eq!(
            (task.kind, task.id.as_deref()),
            (OwnerKind::EcsTask, Some("3b8f9c2e-1a2b-4c3d-9e8f-0a1b2c3d4e5f"))
        );
    }

    #[test]
    fn by_type_requester_and_attachment() {
        let typed = |t: &str| classify(&EniFacts { interface_type: t, ..Default::default() }).kind;
        assert_eq!(typed("nat_gateway"), OwnerKind::NatGateway);
        assert_eq!(typed("vpc_endpoint"), OwnerKind::VpcEndpoint);
        assert_eq!(typed("lambda"), OwnerKind::Lambda);
        assert_eq!(typed("transit_gateway"), OwnerKind::TransitGateway);
        let rds = classify(&EniFacts { requester_id: Some("amazon-rds"), ..Default::default() });
        assert_eq!(rds.kind, OwnerKind::Rds);
        let ec2 = classify(&EniFacts {
            description: "Primary network interface",
            instance_id: Some("i-0abc"),
            ..Default::default()
        });
        assert_eq!((ec2.kind, ec2.id.as_deref()), (OwnerKind::Ec2Instance, Some("i-0abc")));
        let other = of("my hand-made interface");
        assert_eq!(
            (other.kind, other.name.as_deref(), other.id.as_deref()),
            (OwnerKind::Other, Some("my hand-made interface"), Some("eni-1"))
        );
        assert_eq!(of("").name, None);
    }
}
