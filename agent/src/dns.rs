//! DNS monitoring: statistics per (client, DNS server, query name, query type) from the DNS
//! packets the kernel programs copy (UDP and TCP, port 53; see `agent-ebpf`).
//!
//! How: every packet is parsed ([`parse`]); a query leaving a client socket opens a pending
//! entry keyed by (client address, server address, transport, DNS id); the response arriving
//! on that socket closes it (rcode, latency from the two kernel timestamps); an entry older
//! than `dns_timeout` is a timeout. The client is the identity the querying socket's flows
//! get (ECS task and container; else the process name; else `unknown`).
//!
//! Limits: the client side is what counts: packets of DNS *servers* on this host (local port
//! 53) are counted as `server_side` and otherwise ignored, so a query between two local
//! containers is counted once. Only the first question of a message is read. DNS over TCP is
//! parsed when a segment starts with a message (length prefix); a message split across
//! segments is `unparsed`. DNS over TLS/HTTPS (ports 853/443) is invisible. Memory is bounded:
//! `dns_max_names` names (top by queries: when full, the least-queried name, found through a
//! lazy min-heap in [`names`], is folded into `other`), a pending table of [`MAX_PENDING`]
//! queries, and [`MAX_SERIES`] rows ([`rows`]: when full, new rows fold into at most
//! [`rows::OVERFLOW_SLOTS`] overflow rows; rows idle for [`ROW_IDLE`] expire); every fold,
//! drop and expiry is counted. No per-packet work scans the names or the rows.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub mod hist;
pub mod names;
pub mod parse;
pub mod rows;

use names::{Admission, Names};
use rows::{Row, RowKey, Rows};

/// Name of the row that holds folded names.
pub const OTHER: &str = "other";
/// Queries waiting for an answer, at most.
pub const MAX_PENDING: usize = 65_536;
/// Rows (client × server × name × type), at most, overflow rows included; beyond, new rows
/// fold into the overflow rows `(other, other, other, qtype)`.
pub const MAX_SERIES: usize = 50_000;
/// A row not updated for this long is dropped (counted in `rows_expired`).
pub const ROW_IDLE: Duration = Duration::from_secs(3_600);

/// One DNS packet seen by a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPacket {
    /// The socket's own end.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub tcp: bool,
    /// Sent by the socket (egress) rather than received.
    pub outgoing: bool,
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub netns: Option<u32>,
    pub comm: Option<String>,
    /// Payload length on the wire (the copy may be shorter).
    pub wire_len: u32,
    /// The copied payload (TCP: with the 2-byte length prefix).
    pub payload: Vec<u8>,
}

/// Settings (from the agent's config).
#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub timeout: Duration,
    pub max_names: usize,
}

/// Counters for `/status` and `/metrics`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DnsCounters {
    pub packets: u64,
    pub queries: u64,
    pub responses: u64,
    pub timeouts: u64,
    /// Not a DNS message the parser accepts (truncated, bad names, compression loops, counts).
    pub malformed: u64,
    /// TCP segments that do not start with a whole message.
    pub unparsed: u64,
    /// Packets of DNS servers on this host (not counted as queries).
    pub server_side: u64,
    /// Responses with no pending query (late, after a timeout, or older than the agent).
    pub unmatched_responses: u64,
    /// Queries not tracked for an answer: the pending table was full.
    pub pending_full: u64,
    /// Names folded into `other` to keep the name set bounded.
    pub names_folded: u64,
    /// Updates (queries, or answers and timeouts whose row was gone) counted in an overflow
    /// row `(other, other, other, qtype)`: the row table was full.
    pub series_folded: u64,
    /// Rows dropped after [`ROW_IDLE`] without an update.
    pub rows_expired: u64,
    pub pending: u64,
    pub names: u64,
    pub rows: u64,
    pub max_rows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingKey {
    client: SocketAddr,
    server: SocketAddr,
    tcp: bool,
    id: u16,
}

#[derive(Clone, Debug)]
struct Pending {
    ts_ns: u64,
    row: RowKey,
}

/// Latency quantiles of a row, in microseconds (`null` without responses).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

/// One row of `/dns`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsRow {
    pub client: String,
    pub server: String,
    pub name: String,
    pub qtype: String,
    pub queries: u64,
    pub rcodes: BTreeMap<String, u64>,
    pub timeouts: u64,
    pub latency_us: Latency,
}

/// The statistics (owned by the collector loop; read through a lock by the API).
#[derive(Debug)]
pub struct DnsTracker {
    settings: DnsSettings,
    rows: Rows,
    names: Names,
    pending: HashMap<PendingKey, Pending>,
    counters: DnsCounters,
}

impl DnsTracker {
    pub fn new(settings: DnsSettings) -> Self {
        Self::with_limits(settings, MAX_SERIES, ROW_IDLE)
    }

    /// A tracker with another row cap and idle time (tests).
    pub fn with_limits(settings: DnsSettings, max_rows: usize, row_idle: Duration) -> Self {
        DnsTracker {
            names: Names::new(settings.max_names),
            settings,
            rows: Rows::new(max_rows, row_idle),
            pending: HashMap::new(),
            counters: DnsCounters::default(),
        }
    }

    /// Counts one packet; `client` names the querying socket (called for queries only).
    pub fn ingest(&mut self, p: &DnsPacket, client: impl FnOnce(&DnsPacket) -> String) {
        self.counters.packets += 1;
        if p.remote.port() != 53 {
            self.counters.server_side += 1;
            return;
        }
        let msg = if p.tcp {
            match tcp_message(p) {
                Some(m) => m,
                None => {
                    self.counters.unparsed += 1;
                    return;
                }
            }
        } else {
            &p.payload[..]
        };
        let m = match parse::parse(msg) {
            Ok(m) => m,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        let key = PendingKey { client: p.local, server: p.remote, tcp: p.tcp, id: m.id };
        match (p.outgoing, m.response) {
            (true, false) => {
                self.counters.queries += 1;
                let name = self.admit(&m.name);
                let rk = RowKey {
                    client: client(p),
                    server: p.remote.ip().to_string(),
                    name,
                    qtype: parse::qtype_name(m.qtype),
                };
                let (row, r) = self.rows.update(rk, p.ts_ns);
                r.queries += 1;
                if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&key) {
                    self.counters.pending_full += 1;
                } else {
                    self.pending.insert(key, Pending { ts_ns: p.ts_ns, row });
                }
            }
            (false, true) => match self.pending.remove(&key) {
                Some(q) => {
                    self.counters.responses += 1;
                    let row = self.live_row(q.row);
                    let (_, r) = self.rows.update(row, p.ts_ns);
                    *r.rcodes.entry(parse::rcode_name(m.rcode)).or_insert(0) += 1;
                    r.latency.record(p.ts_ns.saturating_sub(q.ts_ns) / 1_000);
                }
                None => self.counters.unmatched_responses += 1,
            },
            // A response leaving, a query arriving, on a client socket: not a client's exchange.
            _ => self.counters.server_side += 1,
        }
    }

    /// Queries unanswered for longer than the timeout become timeouts; idle rows expire.
    pub fn expire(&mut self, now_ns: u64) {
        let limit = self.settings.timeout.as_nanos() as u64;
        let expired: Vec<PendingKey> = self
            .pending
            .iter()
            .filter(|(_, q)| now_ns.saturating_sub(q.ts_ns) > limit)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(q) = self.pending.remove(&k) {
                self.counters.timeouts += 1;
                let row = self.live_row(q.row);
                let (_, r) = self.rows.update(row, now_ns);
                r.timeouts += 1;
            }
        }
        self.rows.expire_idle(now_ns);
    }

    /// Every row, sorted by client, server, name and type.
    pub fn rows(&self) -> Vec<DnsRow> {
        sorted(self.rows_unsorted())
    }

    /// The rows in no particular order (a copy; sort them with [`sort_rows`] outside any lock).
    pub fn rows_unsorted(&self) -> Vec<DnsRow> {
        self.rows.iter().map(|(k, r)| row(&k, r)).collect()
    }

    /// Rows that changed since the last call (for JSON lines), and marks them clean.
    pub fn take_changed(&mut self) -> Vec<DnsRow> {
        sorted(self.rows.take_changed(|k, r| row(&k, r)))
    }

    pub fn counters(&self) -> DnsCounters {
        DnsCounters {
            pending: self.pending.len() as u64,
            names: self.names.len() as u64,
            series_folded: self.rows.folded,
            rows_expired: self.rows.expired,
            rows: self.rows.len() as u64,
            max_rows: self.rows.max() as u64,
            ..self.counters.clone()
        }
    }

    /// The name as counted: itself while it is (or can become) one of the top names, else `other`.
    fn admit(&mut self, name: &str) -> String {
        match self.names.count(name) {
            Admission::Admitted { evicted } => {
                if let Some(victim) = evicted {
                    // The least-queried name folds into `other`; the newcomer takes its place.
                    self.counters.names_folded += 1;
                    self.rows.fold_name(&victim);
                }
                name.to_string()
            }
            Admission::Refused => OTHER.to_string(),
        }
    }

    /// Where an answer or timeout for a query counted under `k` goes: `k` while it exists;
    /// else (its name was folded, or the row expired) its name's current row.
    fn live_row(&self, k: RowKey) -> RowKey {
        if self.rows.contains(&k) || k.name == OTHER || self.names.contains(&k.name) {
            k
        } else {
            RowKey { name: OTHER.to_string(), ..k }
        }
    }
}

fn row(k: &RowKey, r: &Row) -> DnsRow {
    DnsRow {
        client: k.client.clone(),
        server: k.server.clone(),
        name: k.name.clone(),
        qtype: k.qtype.clone(),
        queries: r.queries,
        rcodes: r.rcodes.clone(),
        timeouts: r.timeouts,
        latency_us: Latency {
            p50: r.latency.quantile(0.5),
            p99: r.latency.quantile(0.99),
            max: r.latency.max(),
        },
    }
}

/// Rows in the order of [`DnsTracker::rows`].
pub fn sort_rows(rows: Vec<DnsRow>) -> Vec<DnsRow> {
    sorted(rows)
}

fn sorted(mut rows: Vec<DnsRow>) -> Vec<DnsRow> {
    rows.sort_by(|a, b| {
        (&a.client, &a.server, &a.name, &a.qtype).cmp(&(&b.client, &b.server, &b.name, &b.qtype))
    });
    rows
}

/// A JSON line for a row that changed in the last export interval (totals since the agent started).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsRecord {
    /// Always `dns`.
    pub record: &'static str,
    /// RFC 3339 UTC time of the export.
    pub time: String,
    #[serde(flatten)]
    pub row: DnsRow,
}

impl DnsRecord {
    pub fn new(row: DnsRow, time: std::time::SystemTime) -> Self {
        DnsRecord { record: "dns", time: humantime::format_rfc3339_millis(time).to_string(), row }
    }
}

/// The querying socket's identity: its ECS task and container (`family:revision/container`,
/// `host` for host processes) when an ECS provider runs, else its process name, else `unknown`.
pub fn client_label(ecs: Option<&dyn crate::enrich::Enricher>, p: &DnsPacket) -> String {
    if let Some(e) = ecs {
        let socket =
            crate::enrich::LocalSocket { addr: p.local, cgroup_id: p.cgroup_id, pid: p.pid, netns: p.netns };
        if let Some(l) = e.local_labels(&socket) {
            let u =
                |v: &Option<String>| v.clone().unwrap_or_else(|| crate::flow::labels::UNKNOWN.to_string());
            return match l.container_name.as_deref() {
                Some("host") => "host".to_string(),
                _ => format!("{}:{}/{}", u(&l.task_family), u(&l.task_revision), u(&l.container_name)),
            };
        }
    }
    p.comm.clone().unwrap_or_else(|| crate::flow::labels::UNKNOWN.to_string())
}

/// The DNS message of a TCP segment that starts with one (2-byte length prefix).
fn tcp_message(p: &DnsPacket) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*p.payload.first()?, *p.payload.get(1)?]));
    let wire = p.wire_len as usize;
    // The message must fit the segment, or it continues in the next one.
    if len < 12 || len + 2 > wire {
        return None;
    }
    p.payload.get(2..(2 + len).min(p.payload.len()))
}

#[cfg(test)]
mod tests;
