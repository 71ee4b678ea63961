//! Expected flow records and waiting for `/flows` to show them exactly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use eddy_tests::FlowRecord;
use serde_json::{Value, json};

use crate::agent::GuestAgent;

/// One record a scenario expects.
#[derive(Clone, Debug)]
pub struct Want {
    /// `client`, `server`, ... (for messages).
    pub side: &'static str,
    pub protocol: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Accepted directions.
    pub directions: &'static [&'static str],
    /// `(bytes_sent, bytes_received)`.
    pub bytes: (u64, u64),
    /// Also accepted (e.g. `(0, 0)` live, where bytes are only read at close).
    pub alt_bytes: Option<(u64, u64)>,
    /// `(packets_sent, packets_received)` when exact (UDP datagrams).
    pub packets: Option<(u64, u64)>,
    pub cookie: Option<u64>,
    pub failure: Option<&'static str>,
    /// `Some(true)`: closed_at set; `Some(false)`: still open (closed_at null).
    pub closed: Option<bool>,
}

impl Want {
    /// A TCP record of a connection that closed without failure.
    pub fn tcp(side: &'static str, local: SocketAddr, remote: SocketAddr, bytes: (u64, u64)) -> Want {
        let outgoing = side == "client";
        Want {
            side,
            protocol: "tcp",
            local,
            remote,
            directions: if outgoing { &["outgoing"] } else { &["incoming"] },
            bytes,
            alt_bytes: None,
            packets: None,
            cookie: None,
            failure: None,
            closed: Some(true),
        }
    }

    /// A UDP record: datagrams `packets` and bytes both ways; the direction may be `unknown`.
    pub fn udp(
        side: &'static str,
        local: SocketAddr,
        remote: SocketAddr,
        bytes: (u64, u64),
        packets: (u64, u64),
    ) -> Want {
        Want {
            side,
            protocol: "udp",
            local,
            remote,
            directions: if side == "client" { &["outgoing", "unknown"] } else { &["incoming", "unknown"] },
            bytes,
            alt_bytes: None,
            packets: Some(packets),
            cookie: None,
            failure: None,
            closed: None,
        }
    }

    pub fn cookie(mut self, cookie: u64) -> Want {
        self.cookie = Some(cookie);
        self
    }

    fn family(&self) -> &'static str {
        if self.local.is_ipv6() { "ipv6" } else { "ipv4" }
    }

    fn label(&self) -> String {
        format!("{} {} {} -> {}", self.side, self.protocol, self.local, self.remote)
    }

    /// What differs between `r` and this expectation.
    pub fn mismatches(&self, r: &FlowRecord) -> Vec<String> {
        let mut m = Vec::new();
        let bytes = (r.bytes_sent, r.bytes_received);
        if bytes != self.bytes && Some(bytes) != self.alt_bytes {
            let alt = self.alt_bytes.map(|a| format!(" (or {}/{})", a.0, a.1)).unwrap_or_default();
            m.push(format!(
                "bytes sent/received {}/{}, expected {}/{}{alt}",
                bytes.0, bytes.1, self.bytes.0, self.bytes.1
            ));
        }
        if let Some(p) = self.packets
            && (r.packets_sent, r.packets_received) != p
        {
            m.push(format!(
                "packets sent/received {}/{}, expected {}/{}",
                r.packets_sent, r.packets_received, p.0, p.1
            ));
        }
        if !self.directions.contains(&r.direction.as_str()) {
            m.push(format!("direction {:?}, expected {:?}", r.direction, self.directions));
        }
        if r.family != self.family() {
            m.push(format!("family {:?}, expected {:?}", r.family, self.family()));
        }
        if r.failure.as_deref() != self.failure {
            m.push(format!("failure {:?}, expected {:?}", r.failure, self.failure));
        }
        if let Some(closed) = self.closed
            && r.closed_at.is_some() != closed
        {
            m.push(format!(
                "closed_at {:?}, expected {}",
                r.closed_at,
                if closed { "a time" } else { "null" }
            ));
        }
        m
    }

    /// The record for this expectation (by tuple, and by cookie when one is expected), or why not.
    pub fn find<'a>(&self, records: &'a [FlowRecord]) -> Result<&'a FlowRecord, String> {
        let tuple: Vec<&FlowRecord> =
            eddy_tests::find_records(records, self.protocol, self.local, self.remote);
        let found: Vec<&FlowRecord> = match self.cookie {
            Some(c) => tuple.iter().copied().filter(|r| r.cookie == Some(c)).collect(),
            None => tuple.clone(),
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] if tuple.is_empty() => Err("no record".to_string()),
            [] => Err(format!(
                "no record with cookie {:?}; records of this tuple: {}",
                self.cookie,
                tuple.iter().map(|r| r.summary()).collect::<Vec<_>>().join(" / ")
            )),
            many => Err(format!(
                "{} records: {}",
                many.len(),
                many.iter().map(|r| r.summary()).collect::<Vec<_>>().join(" / ")
            )),
        }
    }

    /// `Ok(record)` when a record matches exactly, else the problem.
    pub fn check(&self, records: &[FlowRecord]) -> Result<FlowRecord, String> {
        let r = self.find(records).map_err(|e| format!("{}: {e}", self.label()))?;
        let m = self.mismatches(r);
        if m.is_empty() {
            Ok(r.clone())
        } else {
            Err(format!("{}: {} [record: {}]", self.label(), m.join(", "), r.summary()))
        }
    }
}

/// Polls `/flows` until every expectation matches exactly, or `timeout` passes.
///
/// `Ok` holds the matching records, in the order of `wants`; `Err` the problems of the last poll.
pub fn await_records(
    agent: &GuestAgent,
    wants: &[Want],
    timeout: Duration,
) -> Result<Vec<FlowRecord>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match agent.flows() {
            Ok(records) => {
                let results: Vec<Result<FlowRecord, String>> =
                    wants.iter().map(|w| w.check(&records)).collect();
                if results.iter().all(Result::is_ok) {
                    return Ok(results.into_iter().filter_map(Result::ok).collect());
                }
                results.into_iter().filter_map(Result::err).collect::<Vec<_>>().join("; ")
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The usual ending: pass with the evidence, or fail with the mismatches (after `timeout` of polling).
pub fn expect_records(
    agent: &GuestAgent,
    wants: &[Want],
    timeout: Duration,
    pass_detail: String,
    mut data: Value,
) -> crate::scenario::Outcome {
    use crate::scenario::Outcome;
    match await_records(agent, wants, timeout) {
        Ok(records) => {
            data["records"] = json!(summaries(&records));
            Outcome::pass(pass_detail, data)
        }
        Err(e) => Outcome::fail(format!("after {timeout:?}: {e}"), data),
    }
}

/// One-line summaries of records (evidence in matrix.json).
pub fn summaries(records: &[FlowRecord]) -> Vec<String> {
    records.iter().map(FlowRecord::summary).collect()
}
