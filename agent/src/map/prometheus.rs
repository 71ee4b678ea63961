//! The cluster's source of the map: any Prometheus-compatible query API (Prometheus, Thanos,
//! VictoriaMetrics, Amazon Managed Service for Prometheus with SigV4) that scrapes the agents.
//!
//! Each counter is read with two instant queries summed by every identity label (no addresses):
//! its value now and `window` ago (`offset`). A group's quantity over the window is the
//! difference, or its value now when it did not exist `window` ago or went down (an agent
//! restarted: what it counted since). Not `increase()`: that extrapolates, and it cannot count
//! what a series carried at its first sample; the difference is exact for counters scraped
//! before and after the traffic.
//!
//! Bounded: every answer is read up to [`MAX_BODY`] bytes and [`MAX_SERIES`] result series;
//! more is an error naming the query, never a partial map.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::promql;
use super::query::MapQuery;
use crate::aggregate::{SeriesKey, SeriesValues};
use crate::flow::{Direction, Failure, Family, Protocol};

/// Largest answer read (64 MiB).
pub const MAX_BODY: usize = 64 << 20;
/// Most result series of one query.
pub const MAX_SERIES: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: {detail}")]
    Read { url: String, detail: String },
    #[error("{url}: answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: answer larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url}: not a Prometheus answer: {0}", .detail)]
    Decode { url: String, detail: String },
    #[error("query {query:?}: {error}")]
    Query { query: String, error: String },
    #[error("query {query:?}: more than {MAX_SERIES} series")]
    TooMany { query: String },
    #[error("SigV4 signing: {0}")]
    Sign(String),
    #[error("--prometheus {0:?}: not an http(s) URL")]
    Url(String),
}

/// Signs requests for Amazon Managed Service for Prometheus (service `aps`).
pub struct Sigv4 {
    pub region: String,
    pub credentials: aws_credential_types::provider::SharedCredentialsProvider,
}

/// A query API and how to reach it.
pub struct Prometheus {
    /// Base URL, without a trailing `/` (`http://prometheus:9090`, `https://aps-workspaces.../workspaces/ws-...`).
    pub url: String,
    client: reqwest::Client,
    sigv4: Option<Sigv4>,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: HashMap<String, String>,
    value: (f64, String),
}

/// What a counter adds to a row.
#[derive(Clone, Copy)]
enum Field {
    BytesSent,
    BytesReceived,
    PacketsSent,
    PacketsReceived,
    Retransmits,
    Opened,
    Closed,
    Failed,
    RttSum,
    RttCount,
}

const COUNTERS: [(&str, Field); 10] = [
    ("eddy_flow_sent_bytes_total", Field::BytesSent),
    ("eddy_flow_received_bytes_total", Field::BytesReceived),
    ("eddy_flow_sent_packets_total", Field::PacketsSent),
    ("eddy_flow_received_packets_total", Field::PacketsReceived),
    ("eddy_tcp_retransmits_total", Field::Retransmits),
    ("eddy_connections_opened_total", Field::Opened),
    ("eddy_connections_closed_total", Field::Closed),
    ("eddy_connections_failed_total", Field::Failed),
    ("eddy_tcp_rtt_seconds_sum", Field::RttSum),
    ("eddy_tcp_rtt_seconds_count", Field::RttCount),
];

fn parse_label<T: serde::de::DeserializeOwned>(v: Option<&String>, default: T) -> T {
    v.and_then(|s| serde_json::from_value(serde_json::Value::String(s.clone())).ok()).unwrap_or(default)
}

/// The series key of a result's labels.
fn key_of(m: &HashMap<String, String>) -> SeriesKey {
    let g = |k: &str| m.get(k).cloned().unwrap_or_default();
    let mut k = SeriesKey::bare(
        parse_label(m.get("protocol"), Protocol::Tcp),
        parse_label(m.get("family"), Family::Ipv4),
        parse_label(m.get("direction"), Direction::Unknown),
        g("server_port"),
    );
    k.scope = g("scope");
    k.local_cluster = g("local_cluster");
    k.local_service = g("local_service");
    k.local_task = g("local_task");
    k.local_container = g("local_container");
    k.local_az = g("local_az");
    k.remote_cluster = g("remote_cluster");
    k.remote_service = g("remote_service");
    k.remote_task = g("remote_task");
    k.remote_container = g("remote_container");
    k.remote_az = g("remote_az");
    k.remote_kind = g("remote_kind");
    k.remote_name = g("remote_name");
    k
}

/// A counter's change over the window: the difference, or `now` when it went down.
fn delta(now: f64, then: Option<f64>) -> f64 {
    match then {
        Some(t) if t <= now => now - t,
        _ => now,
    }
}

fn add(v: &mut SeriesValues, field: Field, reason: Option<&String>, d: f64) {
    let n = d.round().max(0.0) as u64;
    match field {
        Field::BytesSent => v.bytes_sent += n,
        Field::BytesReceived => v.bytes_received += n,
        Field::PacketsSent => v.packets_sent += n,
        Field::PacketsReceived => v.packets_received += n,
        Field::Retransmits => v.retransmits += n,
        Field::Opened => v.connections_opened += n,
        Field::Closed => v.connections_closed += n,
        Field::Failed => {
            let f: Option<Failure> = reason.and_then(|r| parse_label(Some(r), None));
            if let Some(f) = f
                && n > 0
            {
                *v.connections_failed.entry(f).or_default() += n;
            }
        }
        Field::RttSum => v.rtt.sum_us += (d.max(0.0) * 1e6).round() as u64,
        Field::RttCount => v.rtt.count += n,
    }
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration, sigv4: Option<Sigv4>) -> Result<Self, PromError> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(&url).is_err()
        {
            return Err(PromError::Url(url));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| PromError::Http { url: url.clone(), source })?;
        Ok(Prometheus { url, client, sigv4 })
    }

    /// The rows of the window ending `at` (each counter's change per identity).
    pub async fn rows(
        &self,
        q: &MapQuery,
        at: SystemTime,
    ) -> Result<Vec<(SeriesKey, SeriesValues)>, PromError> {
        let mut rows: HashMap<SeriesKey, SeriesValues> = HashMap::new();
        let time = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        for (metric, field) in COUNTERS {
            let extra = if matches!(field, Field::Failed) { "reason" } else { "" };
            let [now_q, then_q] = promql::totals(metric, extra, &q.window);
            let now = self.query(&now_q, time).await?;
            let then: HashMap<Vec<(String, String)>, f64> = self
                .query(&then_q, time)
                .await?
                .into_iter()
                .map(|s| (sorted(&s.metric), s.value.1.parse().unwrap_or(0.0)))
                .collect();
            for s in now {
                let v: f64 = s.value.1.parse().unwrap_or(0.0);
                let d = delta(v, then.get(&sorted(&s.metric)).copied());
                if d <= 0.0 {
                    continue;
                }
                let entry = rows.entry(key_of(&s.metric)).or_default();
                add(entry, field, s.metric.get("reason"), d);
            }
        }
        Ok(rows.into_iter().collect())
    }

    /// One instant query (POST, form-encoded, as Prometheus and AMP accept).
    async fn query(&self, query: &str, time: f64) -> Result<Vec<Sample>, PromError> {
        let url = format!("{}/api/v1/query", self.url);
        let body = form(&[("query", query), ("time", &format!("{time:.3}"))]);
        let mut req = self
            .client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone());
        if let Some(s) = &self.sigv4 {
            for (k, v) in sign(s, &url, &body).await? {
                req = req.header(k, v);
            }
        }
        let http = |source| PromError::Http { url: url.clone(), source };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status().as_u16();
        let bytes = crate::body::read_capped(resp, MAX_BODY).await.map_err(|e| match e {
            crate::body::BodyError::TooLarge { .. } => PromError::TooLarge { url: url.clone() },
            crate::body::BodyError::Read(detail) => PromError::Read { url: url.clone(), detail },
        })?;
        let answer: Answer = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) if status == 200 => return Err(PromError::Decode { url, detail: e.to_string() }),
            Err(_) => {
                let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                return Err(PromError::Status { url, status, body });
            }
        };
        if answer.status != "success" {
            let error = answer.error.unwrap_or_else(|| format!("status {}", answer.status));
            return Err(PromError::Query { query: query.into(), error });
        }
        let data =
            answer.data.ok_or_else(|| PromError::Decode { url: url.clone(), detail: "no data".into() })?;
        if data.result_type != "vector" {
            return Err(PromError::Decode { url, detail: format!("resultType {}", data.result_type) });
        }
        if data.result.len() > MAX_SERIES {
            return Err(PromError::TooMany { query: query.into() });
        }
        Ok(data.result)
    }
}

fn sorted(m: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

/// `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
                b' ' => out.push('+'),
                b => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// The SigV4 headers of a POST of `body` to `url`.
async fn sign(s: &Sigv4, url: &str, body: &str) -> Result<Vec<(String, String)>, PromError> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let creds = s.credentials.provide_credentials().await.map_err(|e| PromError::Sign(e.to_string()))?;
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&s.region)
        .name("aps")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| PromError::Sign(e.to_string()))?
        .into();
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let signable =
        SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body.as_bytes()))
            .map_err(|e| PromError::Sign(e.to_string()))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| PromError::Sign(e.to_string()))?.into_parts();
    Ok(instructions.headers().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_resets() {
        assert_eq!(delta(150.0, Some(100.0)), 50.0);
        assert_eq!(delta(150.0, None), 150.0);
        assert_eq!(delta(30.0, Some(100.0)), 30.0);
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            form(&[("query", "sum by (a) (x{b=\"c\"})"), ("time", "1.5")]),
            "query=sum+by+%28a%29+%28x%7Bb%3D%22c%22%7D%29&time=1.5"
        );
    }

    #[test]
    fn labels_make_keys() {
        let m: HashMap<String, String> = [
            ("direction", "incoming"),
            ("protocol", "udp"),
            ("family", "ipv6"),
            ("server_port", "53"),
            ("local_service", "dns"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let k = key_of(&m);
        assert_eq!((k.direction, k.protocol, k.family), (Direction::Incoming, Protocol::Udp, Family::Ipv6));
        assert_eq!((k.server_port.as_str(), k.local_service.as_str()), ("53", "dns"));
    }

    #[test]
    fn queries_are_signed_for_aps() {
        let creds = aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let s = Sigv4 {
            region: "us-west-2".into(),
            credentials: aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let url = "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-1/api/v1/query";
        let headers = rt.block_on(sign(&s, url, "query=up")).expect("signed");
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let auth = get("authorization");
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"), "{auth}");
        assert!(
            auth.contains("/us-west-2/aps/aws4_request, SignedHeaders=content-type;host;x-amz-date"),
            "{auth}"
        );
        assert_eq!(auth.rsplit("Signature=").next().map(str::len), Some(64), "{auth}");
        assert_eq!(get("x-amz-date").len(), 16, "{headers:?}");
    }

    #[test]
    fn urls_are_checked() {
        assert!(Prometheus::new("ftp://x", Duration::from_secs(1), None).is_err());
        assert_eq!(
            Prometheus::new("http://127.0.0.1:9090/", Duration::from_secs(1), None).map(|p| p.url).ok(),
            Some("http://127.0.0.1:9090".into())
        );
    }
}
