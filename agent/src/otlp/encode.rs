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

use crate::aggregate::{OTHER, RTT_BUCKETS_US, SeriesKey, SeriesValues};
use crate::catalog::{
    CONNECTIONS_FAILED, DNS_QUERIES, DNS_RESPONSES, DNS_TIMEOUTS, SERIES_COUNTERS, TCP_RTT,
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

/// Semantic-convention attributes of one series.
fn attributes(k: &SeriesKey) -> Vec<KeyValue> {
    let mut a = vec![
        s("network.transport", &label(&k.protocol)),
        s("network.type", &label(&k.family)),
        s("eddy.flow.direction", &label(&k.direction)),
        s("network.local.address", &k.local_addr),
        s("network.peer.address", &k.remote_addr),
    ];
    for (key, v) in [
        ("aws.ecs.task.family", &k.local_task),
        ("container.name", &k.local_container),
        ("eddy.peer.aws.ecs.task.family", &k.remote_task),
        ("eddy.peer.container.name", &k.remote_container),
    ] {
        if !v.is_empty() {
            a.push(s(key, v));
        }
    }
    match k.server_port.parse::<i64>() {
        Ok(p) => a.push(kv("server.port", any_value::Value::IntValue(p))),
        Err(_) => a.push(kv("eddy.series.folded", any_value::Value::BoolValue(k.remote_addr == OTHER))),
    }
    a
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

/// Encodes the series totals at `time` (since `start`) as a protobuf request.
pub fn encode(
    series: &[(SeriesKey, SeriesValues)],
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
mod tests {
    use super::*;
    use crate::aggregate::Histogram as Hist;
    use crate::flow::{Direction, Family, Protocol};

    #[test]
    fn encodes_semantic_attributes_and_exact_values() {
        let key = SeriesKey {
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            direction: Direction::Outgoing,
            local_addr: "10.0.0.1".into(),
            remote_addr: "10.0.0.2".into(),
            server_port: "443".into(),
            local_task: "web:7".into(),
            local_container: "web".into(),
            remote_task: String::new(),
            remote_container: String::new(),
        };
        let mut rtt = Hist::default();
        rtt.observe(1_500);
        let values = SeriesValues { bytes_sent: 7, bytes_received: 9, rtt, ..Default::default() };
        let bytes =
            encode(&[(key, values)], &[], &Resource::agent("h"), SystemTime::UNIX_EPOCH, SystemTime::now());
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
                            && a.value
                                == Some(AnyValue { value: Some(any_value::Value::StringValue(d.into())) })
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
}
