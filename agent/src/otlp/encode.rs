//! Series → `ExportMetricsServiceRequest` (OpenTelemetry proto types from the
//! `opentelemetry-proto` crate). Cumulative, monotonic sums and an explicit-bucket
//! histogram; one data point per series (two for transmit/receive quantities).

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::Message;

use crate::aggregate::{RTT_BUCKETS_US, SeriesKey, SeriesValues, TransferRow};
use crate::catalog::{
    CONNECTIONS_FAILED, CROSS_AZ_BYTES, DNS_QUERIES, DNS_RESPONSES, DNS_TIMEOUTS, NAT_GATEWAY_BYTES,
    SERIES_COUNTERS, TCP_RTT, TRANSFER_COST,
};

/// Resource attributes of every batch.
#[derive(Clone, Debug, Default)]
pub struct Resource {
    pub attributes: Vec<(String, String)>,
}

impl Resource {
    /// `service.name`, `service.version`, `host.name`.
    pub fn agent(host: &str) -> Self {
        Resource {
            attributes: vec![
                ("service.name".into(), "eddy-agent".into()),
                ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
                ("host.name".into(), host.into()),
            ],
        }
    }

    /// Adds the deployment's static tags as attributes (`tags` in the configuration).
    pub fn with_tags(mut self, tags: &crate::tags::Tags) -> Self {
        self.attributes.extend(tags.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// OTLP attribute of each series label: semantic conventions where one exists
/// (`network.*`, `aws.ecs.task.family`, `container.name`, `cloud.availability_zone`), `eddy.*`
/// otherwise; the remote end's ECS and zone attributes are the local ones under `eddy.peer.`.
pub const SERIES_ATTRIBUTES: &[(&str, &str)] = &[
    ("local_addr", "network.local.address"),
    ("remote_addr", "network.peer.address"),
    ("scope", "eddy.flow.scope"),
    ("local_cluster", "eddy.aws.ecs.cluster.name"),
    ("local_service", "eddy.aws.ecs.service.name"),
    ("local_task", "aws.ecs.task.family"),
    ("local_container", "container.name"),
    ("local_az", "cloud.availability_zone"),
    ("remote_cluster", "eddy.peer.aws.ecs.cluster.name"),
    ("remote_service", "eddy.peer.aws.ecs.service.name"),
    ("remote_task", "eddy.peer.aws.ecs.task.family"),
    ("remote_container", "eddy.peer.container.name"),
    ("remote_az", "eddy.peer.cloud.availability_zone"),
    ("remote_kind", "eddy.peer.aws.resource.kind"),
    ("remote_name", "eddy.peer.aws.resource.name"),
    // Transfer pairs.
    ("local_workload", "eddy.workload"),
    ("remote_workload", "eddy.peer.workload"),
];

/// The OTLP attribute of a label (the label itself, prefixed `eddy.`, if it has none).
fn attribute_name(label: &str) -> String {
    SERIES_ATTRIBUTES
        .iter()
        .find(|(l, _)| *l == label)
        .map_or_else(|| format!("eddy.{label}"), |(_, a)| (*a).to_string())
}

/// Semantic-convention attributes of one series (empty labels left out).
fn attributes(k: &SeriesKey) -> Vec<KeyValue> {
    let mut a = vec![
        s("network.transport", &label(&k.protocol)),
        s("network.type", &label(&k.family)),
        s("eddy.flow.direction", &label(&k.direction)),
    ];
    for (l, v) in k.labels() {
        if matches!(l, "protocol" | "family" | "direction" | "server_port") {
            continue;
        }
        a.push(s(&attribute_name(l), &v));
    }
    match k.server_port.parse::<i64>() {
        Ok(p) => a.push(kv("server.port", any_value::Value::IntValue(p))),
        Err(_) => a.push(kv("eddy.series.folded", any_value::Value::BoolValue(k.is_other()))),
    }
    a
}

/// Attributes of one transfer pair.
fn pair_attributes(r: &TransferRow) -> Vec<KeyValue> {
    r.key.labels().into_iter().map(|(l, v)| s(&attribute_name(l), &v)).collect()
}

struct Points<'a> {
    series: &'a [(SeriesKey, SeriesValues)],
    start: u64,
    time: u64,
}

impl Points<'_> {
    fn sum(&self, name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            metadata: vec![],
            data: Some(metric::Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
        }
    }

    fn point(&self, mut attributes: Vec<KeyValue>, value: u64) -> NumberDataPoint {
        attributes.sort_by(|a, b| a.key.cmp(&b.key));
        NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.time,
            exemplars: vec![],
            flags: 0,
            value: Some(number_data_point::Value::AsInt(value as i64)),
        }
    }

    fn double_point(&self, mut attributes: Vec<KeyValue>, value: f64) -> NumberDataPoint {
        attributes.sort_by(|a, b| a.key.cmp(&b.key));
        NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.time,
            exemplars: vec![],
            flags: 0,
            value: Some(number_data_point::Value::AsDouble(value)),
        }
    }

    /// One point per series (and per extra attribute set from `split`).
    fn per_series(&self, split: impl Fn(&SeriesValues) -> Vec<(Vec<KeyValue>, u64)>) -> Vec<NumberDataPoint> {
        self.series
            .iter()
            .flat_map(|(k, v)| {
                split(v).into_iter().map(move |(extra, n)| {
                    let mut a = attributes(k);
                    a.extend(extra);
                    (a, n)
                })
            })
            .map(|(a, n)| self.point(a, n))
            .collect()
    }
}

/// DNS rows as sums: `eddy.dns.queries`, `eddy.dns.responses` (by `dns.response_code`),
/// `eddy.dns.timeouts`, with `eddy.dns.client`, `server.address`, `dns.question.name` and
/// `eddy.dns.question.type`.
fn dns_metrics(p: &Points<'_>, rows: &[crate::dns::DnsRow]) -> Vec<Metric> {
    let attrs = |r: &crate::dns::DnsRow| {
        vec![
            s("eddy.dns.client", &r.client),
            s("server.address", &r.server),
            s("dns.question.name", &r.name),
            s("eddy.dns.question.type", &r.qtype),
        ]
    };
    let queries = rows.iter().map(|r| p.point(attrs(r), r.queries)).collect();
    let responses = rows
        .iter()
        .flat_map(|r| {
            r.rcodes.iter().map(|(code, n)| {
                let mut a = attrs(r);
                a.push(s("dns.response_code", code));
                p.point(a, *n)
            })
        })
        .collect();
    let timeouts = rows.iter().map(|r| p.point(attrs(r), r.timeouts)).collect();
    vec![
        p.sum(DNS_QUERIES.otlp, DNS_QUERIES.unit, DNS_QUERIES.description, queries),
        p.sum(DNS_RESPONSES.otlp, DNS_RESPONSES.unit, DNS_RESPONSES.description, responses),
        p.sum(DNS_TIMEOUTS.otlp, DNS_TIMEOUTS.unit, DNS_TIMEOUTS.description, timeouts),
    ]
}

fn dir(d: &str) -> Vec<KeyValue> {
    vec![s("network.io.direction", d)]
}

/// `eddy.tcp.rtt`: the per-series RTT histograms (series without samples left out).
fn rtt_histogram(p: &Points<'_>) -> Metric {
    let rtt_points: Vec<HistogramDataPoint> = p
        .series
        .iter()
        .filter(|(_, v)| v.rtt.count > 0)
        .map(|(k, v)| {
            let mut a = attributes(k);
            a.sort_by(|x, y| x.key.cmp(&y.key));
            HistogramDataPoint {
                attributes: a,
                start_time_unix_nano: p.start,
                time_unix_nano: p.time,
                count: v.rtt.count,
                sum: Some(v.rtt.sum_us as f64 / 1e6),
                bucket_counts: v.rtt.counts.to_vec(),
                explicit_bounds: RTT_BUCKETS_US.iter().map(|b| *b as f64 / 1e6).collect(),
                exemplars: vec![],
                flags: 0,
                min: None,
                max: None,
            }
        })
        .collect();
    Metric {
        name: TCP_RTT.otlp.into(),
        description: TCP_RTT.description.into(),
        unit: TCP_RTT.unit.into(),
        metadata: vec![],
        data: Some(metric::Data::Histogram(Histogram {
            data_points: rtt_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
    }
}

/// `eddy.cross_az.io`, `eddy.nat_gateway.io` and `eddy.transfer.cost` per workload pair.
fn transfer_metrics(p: &Points<'_>, rows: &[TransferRow]) -> Vec<Metric> {
    let mut cross = Vec::new();
    let mut nat = Vec::new();
    let mut cost = Vec::new();
    for r in rows {
        let billed = kv("eddy.transfer.billed", any_value::Value::BoolValue(r.key.billed()));
        if r.values.cross_az() > 0 {
            for (d, n) in [("transmit", r.values.cross_az_sent), ("receive", r.values.cross_az_received)] {
                if d == "receive" && n == 0 {
                    continue;
                }
                let mut a = pair_attributes(r);
                a.push(s("network.io.direction", d));
                a.push(billed.clone());
                cross.push(p.point(a, n));
            }
            let mut a = pair_attributes(r);
            a.push(s("eddy.transfer.charge", "cross_az"));
            cost.push(p.double_point(a, r.cross_az_cost.as_f64()));
        }
        if r.values.nat_gateway > 0 {
            nat.push(p.point(pair_attributes(r), r.values.nat_gateway));
            let mut a = pair_attributes(r);
            a.push(s("eddy.transfer.charge", "nat_gateway"));
            cost.push(p.double_point(a, r.nat_gateway_cost.as_f64()));
        }
    }
    vec![
        p.sum(CROSS_AZ_BYTES.otlp, CROSS_AZ_BYTES.unit, CROSS_AZ_BYTES.description, cross),
        p.sum(NAT_GATEWAY_BYTES.otlp, NAT_GATEWAY_BYTES.unit, NAT_GATEWAY_BYTES.description, nat),
        p.sum(TRANSFER_COST.otlp, TRANSFER_COST.unit, TRANSFER_COST.description, cost),
    ]
}

/// Encodes the series totals at `time` (since `start`) as a protobuf request.
pub fn encode(
    series: &[(SeriesKey, SeriesValues)],
    transfers: &[TransferRow],
    dns: &[crate::dns::DnsRow],
    resource: &Resource,
    start: SystemTime,
    time: SystemTime,
) -> Vec<u8> {
    let p = Points { series, start: nanos(start), time: nanos(time) };
    let mut metrics: Vec<Metric> = SERIES_COUNTERS
        .iter()
        .map(|q| {
            let points = p.per_series(|v| {
                q.parts
                    .iter()
                    .map(|part| (part.direction.map(dir).unwrap_or_default(), (part.value)(v)))
                    .collect()
            });
            p.sum(q.otlp, q.unit, q.description, points)
        })
        .collect();
    metrics.push(p.sum(
        CONNECTIONS_FAILED.otlp,
        CONNECTIONS_FAILED.unit,
        CONNECTIONS_FAILED.description,
        p.per_series(|v| {
            v.connections_failed.iter().map(|(f, n)| (vec![s("error.type", &label(f))], *n)).collect()
        }),
    ));
    metrics.push(rtt_histogram(&p));
    if !transfers.is_empty() {
        metrics.extend(transfer_metrics(&p, transfers));
    }
    if !dns.is_empty() {
        metrics.extend(dns_metrics(&p, dns));
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(ProtoResource {
                attributes: resource.attributes.iter().map(|(k, v)| s(k, v)).collect(),
                dropped_attributes_count: 0,
                entity_refs: vec![],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "eddy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    attributes: vec![],
                    dropped_attributes_count: 0,
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

#[cfg(test)]
mod tests;
