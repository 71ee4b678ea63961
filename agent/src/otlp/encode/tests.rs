use super::*;
use crate::aggregate::Histogram as Hist;
use crate::flow::{Direction, Family, Protocol};

#[test]
fn encodes_semantic_attributes_and_exact_values() {
    let key = SeriesKey {
        local_addr: "10.0.0.1".into(),
        remote_addr: "10.0.0.2".into(),
        local_task: "web:7".into(),
        local_container: "web".into(),
        ..SeriesKey::bare(Protocol::Tcp, Family::Ipv4, Direction::Outgoing, "443".into())
    };
    let mut rtt = Hist::default();
    rtt.observe(1_500);
    let values = SeriesValues { bytes_sent: 7, bytes_received: 9, rtt, ..Default::default() };
    let bytes =
        encode(&[(key, values)], &[], &[], &Resource::agent("h"), SystemTime::UNIX_EPOCH, SystemTime::now());
    let req = ExportMetricsServiceRequest::decode(&bytes[..]).expect("decode");
    let rm = &req.resource_metrics[0];
    let metrics = &rm.scope_metrics[0].metrics;
    let io = metrics.iter().find(|m| m.name == "eddy.network.io").expect("io");
    let Some(metric::Data::Sum(sum)) = &io.data else { panic!("sum") };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    let value = |d: &str| {
        sum.data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|a| {
                    a.key == "network.io.direction"
                        && a.value == Some(AnyValue { value: Some(any_value::Value::StringValue(d.into())) })
                })
            })
            .and_then(|p| p.value)
    };
    assert_eq!(value("transmit"), Some(number_data_point::Value::AsInt(7)));
    assert_eq!(value("receive"), Some(number_data_point::Value::AsInt(9)));
    let attrs = &sum.data_points[0].attributes;
    assert!(attrs.iter().any(|a| a.key == "server.port"
        && a.value == Some(AnyValue { value: Some(any_value::Value::IntValue(443)) })));
    assert!(attrs.iter().any(|a| a.key == "network.transport"));
    assert!(attrs.iter().any(|a| a.key == "aws.ecs.task.family"));
    assert!(!attrs.iter().any(|a| a.key == "eddy.peer.container.name"), "empty attributes are left out");
    let h = metrics.iter().find(|m| m.name == "eddy.tcp.rtt").expect("rtt");
    let Some(metric::Data::Histogram(h)) = &h.data else { panic!("histogram") };
    assert_eq!(h.data_points[0].count, 1);
    assert_eq!(h.data_points[0].bucket_counts.len(), h.data_points[0].explicit_bounds.len() + 1);
}

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
        _ => None,
    })
}

/// The identity labels as semantic-convention / `eddy.*` attributes, and the transfer metrics
/// with exact bytes and costs.
#[test]
fn encodes_identities_and_priced_transfer() {
    use crate::aggregate::transfer::{TransferKey, TransferValues};
    use crate::aggregate::{Prices, TransferRow};
    let key = SeriesKey {
        scope: "cross-az".into(),
        local_cluster: "prod".into(),
        local_service: "web".into(),
        local_task: "web:7".into(),
        local_container: "app".into(),
        local_az: "us-east-1a".into(),
        remote_az: "us-east-1b".into(),
        remote_kind: "nat_gateway".into(),
        remote_name: "nat-0a1b".into(),
        ..SeriesKey::bare(Protocol::Tcp, Family::Ipv4, Direction::Outgoing, "443".into())
    };
    let values = SeriesValues { bytes_sent: 3_000_000_000, ..Default::default() };
    let p = Prices::default();
    let v = TransferValues {
        cross_az_sent: 3_000_000_000,
        cross_az_received: 2_000_000_000,
        cross_az_billed: 5_000_000_000,
        nat_gateway: 5_000_000_000,
    };
    let row = TransferRow {
        key: TransferKey {
            local_cluster: "prod".into(),
            local_workload: "web".into(),
            local_az: "us-east-1a".into(),
            remote_cluster: String::new(),
            remote_workload: "nat-0a1b".into(),
            remote_kind: "nat_gateway".into(),
            remote_az: "us-east-1b".into(),
        },
        values: v,
        cross_az_cost: p.cross_az(v.cross_az_billed),
        nat_gateway_cost: p.nat_gateway(v.nat_gateway),
    };
    let bytes = encode(
        &[(key, values)],
        &[row],
        &[],
        &Resource::agent("h"),
        SystemTime::UNIX_EPOCH,
        SystemTime::now(),
    );
    let req = ExportMetricsServiceRequest::decode(&bytes[..]).expect("decode");
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    let sum = |name: &str| -> Sum {
        let m = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        let Some(metric::Data::Sum(s)) = &m.data else { panic!("{name} is not a sum") };
        s.clone()
    };
    let io = sum("eddy.network.io");
    let a = &io.data_points[0].attributes;
    for (k, want) in [
        ("eddy.flow.scope", "cross-az"),
        ("eddy.aws.ecs.cluster.name", "prod"),
        ("eddy.aws.ecs.service.name", "web"),
        ("aws.ecs.task.family", "web:7"),
        ("container.name", "app"),
        ("cloud.availability_zone", "us-east-1a"),
        ("eddy.peer.cloud.availability_zone", "us-east-1b"),
        ("eddy.peer.aws.resource.kind", "nat_gateway"),
        ("eddy.peer.aws.resource.name", "nat-0a1b"),
    ] {
        assert_eq!(string_attr(a, k), Some(want), "{k}: {a:?}");
    }
    assert!(string_attr(a, "network.peer.address").is_none(), "named peer: no address");

    let cross = sum("eddy.cross_az.io");
    assert!(cross.is_monotonic);
    let by_dir = |d: &str| {
        cross
            .data_points
            .iter()
            .find(|p| string_attr(&p.attributes, "network.io.direction") == Some(d))
            .and_then(|p| p.value)
    };
    assert_eq!(by_dir("transmit"), Some(number_data_point::Value::AsInt(3_000_000_000)));
    assert_eq!(by_dir("receive"), Some(number_data_point::Value::AsInt(2_000_000_000)));
    let pa = &cross.data_points[0].attributes;
    assert_eq!(string_attr(pa, "eddy.workload"), Some("web"));
    assert_eq!(string_attr(pa, "eddy.peer.workload"), Some("nat-0a1b"));
    let nat = sum("eddy.nat_gateway.io");
    assert_eq!(nat.data_points[0].value, Some(number_data_point::Value::AsInt(5_000_000_000)));
    let cost = sum("eddy.transfer.cost");
    let by_charge = |c: &str| {
        cost.data_points
            .iter()
            .find(|p| string_attr(&p.attributes, "eddy.transfer.charge") == Some(c))
            .and_then(|p| p.value)
    };
    assert_eq!(by_charge("cross_az"), Some(number_data_point::Value::AsDouble(0.1)));
    assert_eq!(by_charge("nat_gateway"), Some(number_data_point::Value::AsDouble(0.225)));
}
