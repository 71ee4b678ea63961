//! Eddy agent: network flow monitoring for Amazon ECS hosts.
//!
//! What: per-connection TCP and per-peer UDP flow records (bytes, packets,
//! retransmits, RTT, failures) from eBPF programs, kept in a [`table::FlowTable`],
//! served on a local HTTP API ([`api`]) and optionally written as JSON lines.
//!
//! How: [`preflight`] checks privileges, BTF and cgroup v2; a [`collector::FlowSource`]
//! ([`collector::ebpf::EbpfSource`]) chooses hooks per capability and turns kernel
//! maps into domain records ([`flow::FlowRecord`]); where eBPF cannot run (Fargate,
//! no privileges) [`collector::sock_diag::SockDiagSource`] polls the socket table over
//! netlink instead (selection: `commands::select`); [`pipeline`] polls it on its
//! own thread, labels flows through the [`state::Enrichers`] chain of
//! [`enrich::Enricher`]s — NAT translations ([`conntrack`]), ECS identity of both ends
//! ([`ecs`]) and AWS context of remote addresses ([`aws`]) — read from snapshots
//! refreshed in the background, and hands them to a sink: the table and the exporters for
//! `run` ([`aggregate`] rolls flows into series for [`metrics`], [`otlp`] and JSON lines),
//! the window of [`capture`]; [`state`] is what the API ([`status`]) reads; [`commands`]
//! wires `run` and `capture`; configuration comes from [`config`] (one definition per
//! key; defaults → file → `EDDY_*` → flags).
//!
//! Limits: see the README (kernel support matrix; what each hook misses).

pub mod aggregate;
pub mod alloc;
pub mod allowed_hosts;
pub mod api;
pub mod aws;
pub mod body;
pub mod capture;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod dns;
pub mod ecs;
pub mod enrich;
pub mod faults;
pub mod fips;
pub mod flow;
pub mod healthcheck;
pub mod liveness;
pub mod map;
pub mod metrics;
pub mod otlp;
pub mod panic_hook;
pub mod pipeline;
pub mod plain_http;
pub mod preflight;
pub mod privileges;
pub use eddy_common::redact;
pub mod state;
pub mod status;
pub mod table;
pub mod tags;
