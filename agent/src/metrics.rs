//! `/metrics`: the aggregated series and the agent's own health in the
//! Prometheus text format (0.0.4) or, when the scraper asks for it in `Accept`,
//! OpenMetrics 1.0. Names follow Prometheus conventions: base units (bytes,
//! seconds), `_total` on counters, one family per quantity.
//!
//! Series move once per `export_interval` (when the aggregator closes an
//! interval); agent health is read at scrape time.

mod dns;
mod transfer;

use std::fmt::Write as _;

use crate::aggregate::{AggregateStats, RTT_BUCKETS_US, SeriesKey, SeriesValues, TransferRow};
use crate::enrich::ProviderHealth;
use crate::status::Status;

/// `Content-Type` of the two formats.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/metrics` renders.
pub struct Snapshot<'a> {
    pub series: &'a [(SeriesKey, SeriesValues)],
    /// Cross-AZ and NAT gateway transfer per workload pair.
    pub transfers: &'a [TransferRow],
    pub aggregate: AggregateStats,
    pub status: &'a Status,
    /// DNS statistics (empty when DNS monitoring is off).
    pub dns: &'a [crate::dns::DnsRow],
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Writer {
    out: String,
    openmetrics: bool,
    /// Static tags, appended to every sample's labels.
    extra: Vec<(String, String)>,
}

impl Writer {
    /// Family header. `name` is the family name (counters without `_total`).
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (ty, suffix) = match kind {
            Kind::Counter => ("counter", if self.openmetrics { "" } else { "_total" }),
            Kind::Gauge => ("gauge", ""),
            Kind::Histogram => ("histogram", ""),
        };
        let _ = writeln!(self.out, "# HELP {name}{suffix} {help}");
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {ty}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        let extra = self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let all: Vec<(&str, &str)> = labels.iter().copied().chain(extra).collect();
        if !all.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

mod erased {
    /// Lower-case serde name of a label enum.
    pub trait Label {
        fn label(&self) -> String;
    }

    impl<T: serde::Serialize> Label for T {
        fn label(&self) -> String {
            serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        }
    }
}

/// Renders the exposition.
pub fn render(s: &Snapshot<'_>, openmetrics: bool) -> String {
    let mut w = Writer {
        out: String::with_capacity(4096 + s.series.len() * 1024),
        openmetrics,
        extra: s.status.tags.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    // Empty labels (a group not in `series_labels`, no ECS, ...) are left out.
    let labelled: Vec<(Vec<(&str, String)>, &SeriesValues)> =
        s.series.iter().map(|(k, v)| (k.labels(), v)).collect();

    for part in crate::catalog::SERIES_COUNTERS.iter().flat_map(|q| q.parts) {
        w.family(part.prometheus, Kind::Counter, part.help);
        for (labels, v) in &labelled {
            let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            w.sample(&format!("{}_total", part.prometheus), &refs, (part.value)(v));
        }
    }

    let failed = crate::catalog::CONNECTIONS_FAILED;
    w.family(failed.prometheus, Kind::Counter, failed.help);
    for (labels, v) in &labelled {
        for (failure, n) in &v.connections_failed {
            let reason = erased::Label::label(failure);
            let mut refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            refs.push(("reason", reason.as_str()));
            w.sample(&format!("{}_total", failed.prometheus), &refs, n);
        }
    }

    let rtt = crate::catalog::TCP_RTT;
    w.family(rtt.prometheus, Kind::Histogram, rtt.help);
    for (labels, v) in &labelled {
        if v.rtt.count == 0 {
            continue;
        }
        let base: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut cumulative = 0;
        for (i, bound) in
            RTT_BUCKETS_US.iter().map(|b| format!("{}", *b as f64 / 1e6)).chain(["+Inf".into()]).enumerate()
        {
            cumulative += v.rtt.counts[i];
            let mut refs = base.clone();
            refs.push(("le", bound.as_str()));
            w.sample(&format!("{}_bucket", rtt.prometheus), &refs, cumulative);
        }
        w.sample(&format!("{}_sum", rtt.prometheus), &base, v.rtt.sum_us as f64 / 1e6);
        w.sample(&format!("{}_count", rtt.prometheus), &base, v.rtt.count);
    }

    transfer::render(&mut w, s.transfers);
    dns::render(&mut w, s.dns, s.status.dns.as_ref());
    agent_health(&mut w, s);
    if openmetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// NAT attribution health, from `/status` → `conntrack`.
fn conntrack(w: &mut Writer, ct: &crate::conntrack::ConntrackStatus) {
    w.family("eddy_agent_conntrack_up", Kind::Gauge, "1 while the conntrack table is followed.");
    w.sample("eddy_agent_conntrack_up", &[], u8::from(ct.state == "on"));
    w.family("eddy_agent_conntrack_entries", Kind::Gauge, "NAT'd connections known (map entries).");
    w.sample("eddy_agent_conntrack_entries", &[], ct.entries);
    w.family("eddy_agent_conntrack_events", Kind::Counter, "Conntrack events (new, destroyed) received.");
    w.sample("eddy_agent_conntrack_events_total", &[], ct.events);
    w.family(
        "eddy_agent_conntrack_dropped",
        Kind::Counter,
        "Conntrack information lost, by cause (map full, socket overrun, undecodable).",
    );
    for (cause, n) in
        [("map_full", ct.dropped_full), ("overrun", ct.overruns), ("undecodable", ct.undecodable)]
    {
        w.sample("eddy_agent_conntrack_dropped_total", &[("cause", cause)], n);
    }
    w.family("eddy_agent_conntrack_translated_flows", Kind::Counter, "Flows that got a NAT translation.");
    w.sample("eddy_agent_conntrack_translated_flows_total", &[], ct.translated_flows);
}

fn agent_health(w: &mut Writer, s: &Snapshot<'_>) {
    let st = s.status;
    w.family("eddy_agent_build_info", Kind::Gauge, "Agent version and collector (always 1).");
    w.sample("eddy_agent_build_info", &[("version", st.version), ("collector", st.collector)], 1);
    w.family("eddy_agent_uptime_seconds", Kind::Gauge, "Seconds since the agent started.");
    w.sample("eddy_agent_uptime_seconds", &[], format!("{:.3}", st.uptime_seconds));
    w.family("eddy_agent_ready", Kind::Gauge, "1 once the first scan of the kernel maps is done.");
    w.sample("eddy_agent_ready", &[], u8::from(st.ready));
    if let Some(age) = st.last_scan_age_seconds {
        w.family(
            "eddy_agent_last_scan_age_seconds",
            Kind::Gauge,
            "Seconds since the kernel maps were last read.",
        );
        w.sample("eddy_agent_last_scan_age_seconds", &[], format!("{age:.3}"));
    }
    w.family("eddy_agent_hook_info", Kind::Gauge, "Hook chosen per capability (always 1).");
    for h in &st.hooks {
        w.sample(
            "eddy_agent_hook_info",
            &[("capability", h.capability), ("hook", h.chosen.as_deref().unwrap_or("none"))],
            1,
        );
    }
    w.family("eddy_agent_map_capacity", Kind::Gauge, "Capacity of each bounded kernel map.");
    for m in &st.maps {
        w.sample("eddy_agent_map_capacity", &[("map", m.name)], m.capacity);
    }
    w.family("eddy_agent_map_entries", Kind::Gauge, "Entries in each bounded kernel map at the last scan.");
    for m in &st.maps {
        if let Some(n) = m.entries {
            w.sample("eddy_agent_map_entries", &[("map", m.name)], n);
        }
    }
    w.family("eddy_agent_kernel_map_bytes", Kind::Gauge, "Kernel memory of each eBPF map (memlock).");
    for (map, n) in &st.memory.kernel_maps {
        w.sample("eddy_agent_kernel_map_bytes", &[("map", map)], n);
    }
    w.family(
        "eddy_agent_ebpf_program_runs",
        Kind::Counter,
        "Calls of each loaded eBPF program (counted while kernel.bpf_stats_enabled is 1).",
    );
    for (program, r) in &st.programs.by_program {
        w.sample("eddy_agent_ebpf_program_runs_total", &[("program", program)], r.runs);
    }
    w.family(
        "eddy_agent_ebpf_program_run_seconds",
        Kind::Counter,
        "Kernel time spent in each loaded eBPF program (counted while kernel.bpf_stats_enabled is 1).",
    );
    for (program, r) in &st.programs.by_program {
        let secs = r.run_time_ns as f64 / 1e9;
        w.sample("eddy_agent_ebpf_program_run_seconds_total", &[("program", program)], secs);
    }
    if let Some(rss) = st.memory.rss_bytes {
        w.family("eddy_agent_resident_memory_bytes", Kind::Gauge, "Resident memory of the agent (VmRSS).");
        w.sample("eddy_agent_resident_memory_bytes", &[], rss);
    }
    w.family(
        "eddy_agent_dropped",
        Kind::Counter,
        "Events, records or packets not counted or not delivered, by cause.",
    );
    for (cause, n) in &st.drops {
        w.sample("eddy_agent_dropped_total", &[("cause", cause)], n);
    }
    w.family(
        "eddy_agent_events",
        Kind::Counter,
        "Agent throughput: connections tracked, records delivered, ...",
    );
    for (event, n) in &st.counters {
        w.sample("eddy_agent_events_total", &[("event", event)], n);
    }
    if let Some(o) = &st.otlp {
        otlp(w, o);
    }
    enrichment(w, st);
    if let Some(ct) = st.conntrack.as_ref().and_then(ProviderHealth::get::<crate::conntrack::ConntrackStatus>)
    {
        conntrack(w, ct);
    }
    if let Some(sc) = &st.cgroup_scope {
        w.family(
            "eddy_agent_outside_cgroup_scope",
            Kind::Counter,
            "Flow records (per poll) and DNS packets left out: their socket is outside cgroup_scope.",
        );
        w.sample("eddy_agent_outside_cgroup_scope_total", &[("what", "flows")], sc.flows_outside);
        w.sample("eddy_agent_outside_cgroup_scope_total", &[("what", "dns")], sc.dns_outside);
    }
    w.family("eddy_agent_live_flows", Kind::Gauge, "Open flows at the last scan.");
    w.sample("eddy_agent_live_flows", &[], st.flows.live_flows);
    w.family(
        "eddy_agent_held_flows",
        Kind::Gauge,
        "Closed flows waiting for their intra-host peer's labels.",
    );
    w.sample("eddy_agent_held_flows", &[], st.labels.held);
    w.family("eddy_agent_series", Kind::Gauge, "Aggregated series currently exported.");
    w.sample("eddy_agent_series", &[], s.aggregate.series);
    w.family("eddy_agent_series_limit", Kind::Gauge, "Maximum number of aggregated series (max_series).");
    w.sample("eddy_agent_series_limit", &[], s.aggregate.max_series);
    w.family(
        "eddy_agent_series_folded",
        Kind::Counter,
        "New series folded into the `other` series by the cap.",
    );
    w.sample("eddy_agent_series_folded_total", &[], s.aggregate.series_folded);
    w.family("eddy_agent_series_expired", Kind::Counter, "Series dropped after being idle.");
    w.sample("eddy_agent_series_expired_total", &[], s.aggregate.series_expired);
    w.family("eddy_agent_transfer_pairs", Kind::Gauge, "Workload pairs with cross-AZ or NAT gateway bytes.");
    w.sample("eddy_agent_transfer_pairs", &[], s.aggregate.transfer_pairs);
    w.family(
        "eddy_agent_transfer_pairs_folded",
        Kind::Counter,
        "New workload pairs folded into the `other` pair by the cap (max_series).",
    );
    w.sample("eddy_agent_transfer_pairs_folded_total", &[], s.aggregate.transfer_folded);
    w.family(
        "eddy_agent_flows_waiting_labels",
        Kind::Gauge,
        "Open flows whose first count waits for an end's lookup (at most 10 s).",
    );
    w.sample("eddy_agent_flows_waiting_labels", &[], s.aggregate.flows_waiting_labels);
}

/// The OTLP exporter's batches, retries, refusals and queue, from `/status` → `otlp`.
fn otlp(w: &mut Writer, o: &crate::otlp::OtlpCounts) {
    w.family("eddy_agent_otlp_batches", Kind::Counter, "OTLP batches by outcome (sent, rejected, dropped).");
    for (result, n) in
        [("sent", o.batches_sent), ("rejected", o.batches_rejected), ("dropped", o.batches_dropped)]
    {
        w.sample("eddy_agent_otlp_batches_total", &[("result", result)], n);
    }
    w.family("eddy_agent_otlp_failed_attempts", Kind::Counter, "OTLP requests that failed and were retried.");
    w.sample("eddy_agent_otlp_failed_attempts_total", &[], o.attempts_failed);
    w.family(
        "eddy_agent_otlp_redirects_refused",
        Kind::Counter,
        "OTLP answers that were redirects (never followed; the batch is rejected).",
    );
    w.sample("eddy_agent_otlp_redirects_refused_total", &[], o.redirects_refused);
    w.family(
        "eddy_agent_otlp_responses_oversized",
        Kind::Counter,
        "OTLP answers whose body exceeded the cap (not read).",
    );
    w.sample("eddy_agent_otlp_responses_oversized_total", &[], o.responses_oversized);
    w.family("eddy_agent_otlp_queue_batches", Kind::Gauge, "OTLP batches waiting to be sent.");
    w.sample("eddy_agent_otlp_queue_batches", &[], o.queued);
}

/// Freshness and errors of the enrichment providers (`ecs`: ECS agent or task metadata;
/// `ecs_api`: the ECS API; `aws`: the IMDS identity of enhanced resolution), from their
/// `/status` objects.
fn enrichment(w: &mut Writer, st: &Status) {
    let providers = [("ecs", &st.ecs), ("ecs_api", &st.ecs_api), ("aws", &st.aws)];
    if providers.iter().all(|(_, p)| p.is_none()) {
        return;
    }
    w.family(
        "eddy_agent_enrichment_errors",
        Kind::Counter,
        "Failed enrichment refreshes, by provider and cause.",
    );
    for (name, p) in providers {
        for (kind, n) in p.as_ref().map(ProviderHealth::errors).unwrap_or_default() {
            w.sample("eddy_agent_enrichment_errors_total", &[("provider", name), ("cause", kind)], n);
        }
    }
    w.family(
        "eddy_agent_enrichment_age_seconds",
        Kind::Gauge,
        "Seconds since the provider's last successful refresh (absent: none yet).",
    );
    for (name, p) in providers {
        if let Some(age) = p.as_ref().and_then(ProviderHealth::last_refresh_age_seconds) {
            w.sample("eddy_agent_enrichment_age_seconds", &[("provider", name)], format!("{age:.3}"));
        }
    }
    if let Some(ecs) = st.ecs.as_ref().and_then(ProviderHealth::get::<crate::ecs::local::EcsStatus>) {
        cgroup_walks(w, ecs);
    }
}

/// The local provider's walks of the cgroup tree, from `/status` → `ecs`.
fn cgroup_walks(w: &mut Writer, ecs: &crate::ecs::local::EcsStatus) {
    w.family(
        "eddy_agent_cgroup_walks",
        Kind::Counter,
        "Walks of the cgroup tree, by trigger (interval, miss).",
    );
    let periodic = ecs.cgroup_walks.saturating_sub(ecs.cgroup_walks_on_miss);
    w.sample("eddy_agent_cgroup_walks_total", &[("trigger", "interval")], periodic);
    w.sample("eddy_agent_cgroup_walks_total", &[("trigger", "miss")], ecs.cgroup_walks_on_miss);
    w.family("eddy_agent_cgroup_misses", Kind::Counter, "Lookups of a cgroup id the last walk had not seen.");
    w.sample("eddy_agent_cgroup_misses_total", &[], ecs.cgroup_misses.lookups);
    w.family("eddy_agent_cgroup_unresolved", Kind::Gauge, "Cgroup ids no walk found (they trigger no walk).");
    w.sample("eddy_agent_cgroup_unresolved", &[], ecs.cgroup_misses.unresolved);
}

#[cfg(test)]
mod tests;
