//! Wiring of the two commands: environment → collector ([`select`]: eBPF or
//! sock_diag) → loop/API (run) or window (capture), with signal handling and a
//! bounded shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::aggregate::AggregateSettings;
use crate::aws::ec2::Ec2Source;
use crate::aws::enricher::AwsEnricher;
use crate::aws::identity::{self, ImdsDecision};
use crate::aws::resolver::{AwsResolver, ResolverSettings};
use crate::capture::{CaptureSettings, WindowSink};
use crate::collector::CollectorError;
use crate::collector::CollectorKind;
use crate::config::{AwsResolution, Config, Output};
use crate::ecs::environment::{self, Environment};
use crate::ecs::fargate::{self, TaskMetadataResolver};
use crate::ecs::local::{LocalResolver, RefreshSettings, refresh_loop};
use crate::ecs::remote::{self, ConfiguredCluster, RemoteResolver, RemoteSettings};
use crate::enrich::Enricher;
use crate::otlp::{self, OtlpError, OtlpSettings, OtlpStats, Resource};
use crate::pipeline::publish::Outputs;
use crate::pipeline::{
    CollectorState, Enrichers, ExportState, LoopSettings, OUTPUT_QUEUE_BATCHES, Publish, Shared, collect,
    write_jsonl,
};
use crate::preflight::PreflightError;
use crate::privileges::{PrivilegeStatus, Uses};
use crate::table::FlowTable;

mod select;

pub use select::{SOCK_DIAG_LIMITS, Selected, start_source};

/// Series without traffic for this many export intervals are dropped.
const SERIES_IDLE_INTERVALS: u64 = 60;

/// How long in-flight API requests may take once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(800);

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Collector(#[from] CollectorError),
    #[error(
        "cannot listen on {addr}: {source}. Another process (another eddy-agent?) may hold the port; \
         choose another with EDDY_LISTEN or --listen"
    )]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start thread {name}: {source}")]
    Thread { name: &'static str, source: std::io::Error },
    #[error("writing the capture to stdout: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    #[error(transparent)]
    Fips(#[from] crate::fips::FipsError),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
}

/// Where the agent runs (see [`environment::detect`]); probes only loopback.
fn detect_environment(cfg: &Config) -> Environment {
    let mut inputs = environment::Inputs {
        env: std::env::vars().filter(|(k, _)| k.starts_with("ECS_") || k == "AWS_EXECUTION_ENV").collect(),
        configured_agent_uri: cfg.ecs.agent_uri.clone(),
        agent_on_loopback: false,
    };
    if environment::detect(&inputs) == Environment::Plain {
        // Loopback only: the ECS agent's introspection port on a container instance.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 51678));
        inputs.agent_on_loopback =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
    }
    environment::detect(&inputs)
}

/// The ECS providers that run: local ends, remote ends.
#[derive(Default)]
struct EcsProviders {
    local: Option<Arc<dyn Enricher>>,
    remote: Option<Arc<dyn Enricher>>,
}

/// Starts the ECS providers of the detected environment (the ECS API provider on EC2 only).
fn start_ecs(
    cfg: &Config,
    env: Environment,
    cgroup_root: Option<std::path::PathBuf>,
    rt: &tokio::runtime::Runtime,
) -> EcsProviders {
    match env {
        Environment::EcsOnEc2 { agent_uri, why } => {
            tracing::info!(agent_uri = %crate::redact::url(&agent_uri), detected_by = why, "ECS provider on: local ends get ECS labels");
            let resolver = Arc::new(LocalResolver::new(&agent_uri, why));
            let settings = RefreshSettings {
                agent_uri,
                cgroup_root,
                proc_root: "/proc".into(),
                interval: cfg.ecs.refresh_interval,
                max_backoff: Duration::from_secs(60).max(cfg.ecs.refresh_interval),
                timeout: Duration::from_secs(2),
            };
            rt.spawn(refresh_loop(resolver.clone(), settings));
            let remote = cfg.ecs.api.then(|| {
                let remote = Arc::new(RemoteResolver::new());
                let target =
                    Arc::new(ConfiguredCluster { cluster: cfg.ecs.cluster.clone(), inner: resolver.clone() });
                let settings = RemoteSettings {
                    interval: cfg.ecs.api_refresh_interval,
                    max_backoff: Duration::from_secs(600).max(cfg.ecs.api_refresh_interval),
                    timeout: Duration::from_secs(20),
                    fips: cfg.fips.enabled,
                };
                rt.spawn(remote::refresh_loop(remote.clone(), target, settings));
                remote as Arc<dyn Enricher>
            });
            EcsProviders { local: Some(resolver), remote }
        }
        Environment::Fargate { metadata_uri } => {
            tracing::info!(metadata_uri = %crate::redact::url(&metadata_uri), "Fargate: flows get the task's labels from task metadata v4");
            let resolver = Arc::new(TaskMetadataResolver::new(&metadata_uri));
            let settings = fargate::RefreshSettings {
                metadata_uri,
                interval: cfg.ecs.refresh_interval,
                max_backoff: Duration::from_secs(60).max(cfg.ecs.refresh_interval),
                timeout: Duration::from_secs(2),
            };
            rt.spawn(fargate::refresh_loop(resolver.clone(), settings));
            EcsProviders { local: Some(resolver), remote: None }
        }
        Environment::Plain => EcsProviders::default(),
    }
}

/// Starts enhanced resolution where it is on (see [`AwsResolution`] and [`identity::imds_decision`]).
fn start_aws(cfg: &Config, rt: &tokio::runtime::Runtime) -> Option<Arc<dyn Enricher>> {
    let env: std::collections::HashMap<String, String> =
        std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
    let dmi = identity::dmi_is_ec2(std::path::Path::new("/sys/class/dmi/id"));
    let (why, call_imds) = match (cfg.aws.resolution, identity::imds_decision(&env, dmi)) {
        (AwsResolution::Off, _) => return None,
        (AwsResolution::Auto, ImdsDecision::Skip { why }) => {
            tracing::info!(reason = why, "enhanced resolution off (aws_resolution=on forces it)");
            return None;
        }
        (_, ImdsDecision::Call { why }) => (why.to_string(), true),
        (AwsResolution::On, ImdsDecision::Skip { why }) => {
            (format!("configured (aws_resolution=on); IMDS not called: {why}"), false)
        }
    };
    let own = identity::Identity {
        region: cfg.aws.region.clone(),
        availability_zone: cfg.aws.availability_zone.clone(),
        ..Default::default()
    };
    let resolver = Arc::new(AwsResolver::new(ResolverSettings {
        calls_per_second: cfg.aws.api_calls_per_second,
        positive_ttl: cfg.aws.cache_ttl,
        negative_ttl: cfg.aws.cache_ttl / 2,
        ..Default::default()
    }));
    tracing::info!(decision = %why, "enhanced resolution on: remote ends get AWS context");
    let enricher = Arc::new(AwsEnricher::new(resolver.clone(), own, why));
    let e = enricher.clone();
    let fips = cfg.fips.enabled;
    rt.spawn(async move {
        if call_imds {
            match identity::fetch(None, Duration::from_secs(2)).await {
                Ok(id) => e.set_identity(id),
                Err(err) => {
                    tracing::warn!(error = %err, "enhanced resolution: no identity from IMDS; scope stays partial");
                    e.set_identity_error(&err);
                }
            }
        }
        let conf = crate::aws::sdk::config(e.identity().region, Duration::from_secs(20), fips).await;
        resolver.run(Arc::new(Ec2Source { client: aws_sdk_ec2::Client::new(&conf) })).await;
    });
    Some(enricher)
}

fn hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The labelling chain (see [`Enrichers`]): conntrack (when on), the ECS providers of the
/// detected environment, enhanced resolution; their refreshers run on `rt`.
fn start_enrichers(
    cfg: &Config,
    env: Environment,
    cgroup_root: Option<std::path::PathBuf>,
    rt: &tokio::runtime::Runtime,
) -> Enrichers {
    let conntrack = cfg.conntrack.enabled.then(|| {
        let settings = crate::conntrack::ConntrackSettings {
            max_entries: cfg.conntrack.max_entries,
            netns: cfg.conntrack.netns.clone(),
        };
        match crate::conntrack::start(settings) {
            Ok(ct) => Some(Arc::new(crate::conntrack::ConntrackEnricher(ct)) as Arc<dyn Enricher>),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the conntrack thread; flows are not translated");
                None
            }
        }
    });
    let ecs = start_ecs(cfg, env, cgroup_root, rt);
    Enrichers {
        conntrack: conntrack.flatten(),
        local: ecs.local,
        ecs_api: ecs.remote,
        aws: start_aws(cfg, rt),
    }
}

/// The collector's shared state for a started source.
fn collector_state(cfg: &Config, selected: &Selected, privileges: PrivilegeStatus) -> CollectorState {
    let heartbeat = crate::liveness::Heartbeat::new(crate::liveness::stall_after(cfg.poll_interval));
    let mut c = CollectorState::new(selected.source.kind(), selected.kernel.clone(), heartbeat);
    c.reason = selected.reason.clone();
    c.limits = selected.limits;
    c.privileges = Some(privileges);
    c.scope = cfg.cgroup_scope.clone().map(crate::pipeline::scope::ScopeShared::new);
    c
}

/// Keeps only the capabilities the running parts use (see [`crate::privileges`]) and logs them.
/// `conntrack`: whether this command runs conntrack (`capture` does not).
fn drop_privileges(
    cfg: &Config,
    env: &Environment,
    selected: &Selected,
    conntrack: bool,
) -> Result<PrivilegeStatus, CommandError> {
    let conntrack = conntrack && cfg.conntrack.enabled;
    let all_namespaces = selected.limits == Some(SOCK_DIAG_LIMITS);
    let bpf_needs_capability =
        (selected.source.kind() == CollectorKind::Ebpf).then(crate::privileges::bpf_needs_capability);
    let uses = Uses {
        ebpf: bpf_needs_capability == Some(true),
        conntrack,
        enter_namespaces: all_namespaces || (conntrack && cfg.conntrack.netns.is_some()),
        proc_namespaces: all_namespaces || matches!(env, Environment::EcsOnEc2 { .. }),
    };
    let mut status = crate::privileges::drop_to(uses, crate::faults::get().withhold_caps)?;
    status.bpf_needs_capability = bpf_needs_capability;
    let kept: Vec<&str> = status.capabilities.iter().map(|k| k.name).collect();
    tracing::info!(
        kept = ?kept,
        dropped = status.dropped.len(),
        bounding_set_reduced = status.bounding_set_reduced,
        no_new_privs = status.no_new_privs,
        bpf_needs_capability = ?bpf_needs_capability,
        "capabilities dropped to what the running agent uses"
    );
    Ok(status)
}

/// `eddy-agent run`.
pub fn run(cfg: Config) -> Result<(), CommandError> {
    // FIPS mode is checked before anything else: a build or configuration that is not FIPS
    // never starts.
    let fips = crate::fips::check(&cfg)?;
    if let Some(f) = &fips {
        tracing::info!(proxy = %f.proxy_status, otlp_via = f.otlp_via.as_deref().unwrap_or("off"), tls = f.aws_sdk_tls, "FIPS mode: exports through eddy-fips-proxy, AWS API calls on FIPS endpoints");
        if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
            tracing::warn!(
                "FIPS mode with AWS_ENDPOINT_URL set: the AWS SDK refuses FIPS with a custom endpoint, so AWS API calls will fail (counted in /status)"
            );
        }
    }
    // Bind first: a port conflict is reported before anything is loaded.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| CommandError::Listen { addr: cfg.listen, source })?;
    let env = detect_environment(&cfg);
    let selected = start_source(&cfg, &env)?;
    // Loaded and attached: drop what the running agent does not use, before any other thread
    // (the async runtime's included) exists, so that every thread inherits the reduced sets.
    let privileges = drop_privileges(&cfg, &env, &selected, true)?;
    let rt = runtime()?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|source| CommandError::Listen { addr: cfg.listen, source })?
    };
    let collector = collector_state(&cfg, &selected, privileges);
    let mut export = ExportState::new(FlowTable::new(cfg.closed_flow_retention, cfg.output == Output::Jsonl));
    let otlp = start_otlp(&cfg, fips.is_some(), &rt, &mut export)?;
    export.tags = cfg.tag_set();
    export.fips = fips;
    export.map = std::sync::Mutex::new(crate::map::History::new(std::time::SystemTime::now(), cfg.prices()));
    if cfg.dns.enabled && collector.kind == CollectorKind::Ebpf {
        let settings = crate::dns::DnsSettings { timeout: cfg.dns.timeout, max_names: cfg.dns.max_names };
        export.dns = Some(std::sync::Mutex::new(crate::dns::DnsTracker::new(settings)));
    }
    let enrichers = start_enrichers(&cfg, env, collector.kernel.cgroup2.clone(), &rt);
    let shared = Arc::new(Shared::new(collector, enrichers, export));
    let stop = Arc::new(AtomicBool::new(false));

    let (output, writer) = start_jsonl(&cfg, &shared)?;
    let outputs = Outputs {
        output,
        aggregate: AggregateSettings {
            max_series: cfg.max_series,
            series_idle_intervals: SERIES_IDLE_INTERVALS,
            labels: cfg.label_groups(),
            prices: cfg.prices(),
            late_intervals: crate::aggregate::late_intervals(cfg.export_interval),
        },
        otlp,
    };
    let timing = LoopSettings { poll_interval: cfg.poll_interval, export_interval: cfg.export_interval };
    let collector = {
        let (sh, st, source) = (shared.clone(), stop.clone(), selected.source);
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || collect(source, sh, &mut Publish::new(outputs), timing, st))
            .map_err(|source| CommandError::Thread { name: "collector", source })?
    };
    tracing::info!(listen = %cfg.listen, "serving /healthz /readyz /status /flows");
    crate::api::server::warn_if_exposed(cfg.listen);
    serve(&cfg, &rt, listener, &shared);
    stop.store(true, Ordering::SeqCst);
    if collector.join().is_err() {
        tracing::error!("collector thread panicked");
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    rt.shutdown_timeout(Duration::from_millis(100));
    tracing::info!("stopped");
    Ok(())
}

/// The OTLP exporter when `otlp.endpoint` is set (through the FIPS proxy's route in FIPS mode):
/// its task on `rt`, its counters in `export`, and the queue the collector feeds.
fn start_otlp(
    cfg: &Config,
    fips: bool,
    rt: &tokio::runtime::Runtime,
    export: &mut ExportState,
) -> Result<Option<otlp::OtlpQueue>, CommandError> {
    let Some(intake) = &cfg.otlp.endpoint else { return Ok(None) };
    // In FIPS mode the proxy's route (the status shows it redacted; this is the real URL).
    let endpoint = if fips { crate::fips::otlp_via_proxy(cfg, intake)? } else { intake.clone() };
    let stats = Arc::new(OtlpStats::default());
    let settings = OtlpSettings {
        endpoint: endpoint.clone(),
        headers: cfg.otlp_header_pairs(),
        timeout: cfg.otlp.timeout,
        max_backoff: cfg.otlp.max_backoff,
        queue_batches: cfg.otlp.queue_batches,
        resource: Resource::agent(&hostname()).with_tags(&cfg.tag_set()),
    };
    let (queue, task) = otlp::start(settings, stats.clone())?;
    rt.spawn(task);
    export.otlp = Some(stats);
    tracing::info!(endpoint = %crate::redact::url(&endpoint), "OTLP metrics export on");
    Ok(Some(queue))
}

/// The JSON-lines writer thread when `output = jsonl`: the channel the collector feeds, and the
/// thread to join at the end.
type JsonlWriter =
    (Option<std::sync::mpsc::SyncSender<Vec<crate::pipeline::Line>>>, Option<std::thread::JoinHandle<()>>);

fn start_jsonl(cfg: &Config, shared: &Arc<Shared>) -> Result<JsonlWriter, CommandError> {
    if cfg.output != Output::Jsonl {
        return Ok((None, None));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(OUTPUT_QUEUE_BATCHES);
    let sh = shared.clone();
    let handle = std::thread::Builder::new()
        .name("jsonl".into())
        .spawn(move || write_jsonl(rx, std::io::stdout().lock(), sh))
        .map_err(|source| CommandError::Thread { name: "jsonl", source })?;
    Ok((Some(tx), Some(handle)))
}

/// Serves the API until SIGTERM/SIGINT, then gives requests in flight [`SHUTDOWN_GRACE`].
fn serve(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    shared: &Arc<Shared>,
) {
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let allowed = crate::api::host::AllowedHosts::new(cfg.listen, &cfg.api.allowed_hosts);
        let limits = crate::api::server::ServerSettings {
            max_connections: cfg.api.max_connections,
            header_timeout: cfg.api.header_timeout,
            request_timeout: cfg.api.request_timeout,
        };
        let server = tokio::spawn(crate::api::server::serve(
            listener,
            crate::api::router(shared.clone(), cfg.metrics, allowed),
            limits,
            shared.api.clone(),
            async {
                let _ = rx.await;
            },
        ));
        crate::faults::spawn_task_fault();
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(());
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            tracing::warn!("API connections still open after the grace period; closing them");
        }
    });
}

/// `eddy-agent capture`: the same collector and labelling chain as `run` (conntrack, ECS, AWS),
/// into a [`WindowSink`] instead of the table and exporters.
pub fn capture_window(cfg: Config, duration: Duration, hold_flows: usize) -> Result<(), CommandError> {
    let env = detect_environment(&cfg);
    let selected = start_source(&cfg, &env)?;
    let privileges = drop_privileges(&cfg, &env, &selected, true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime()?;
    {
        let stop = stop.clone();
        rt.spawn(async move {
            shutdown_signal().await;
            stop.store(true, Ordering::SeqCst);
        });
    }
    let collector = collector_state(&cfg, &selected, privileges);
    let enrichers = start_enrichers(&cfg, env, collector.kernel.cgroup2.clone(), &rt);
    let shared = Arc::new(Shared::new(collector, enrichers, ExportState::new(FlowTable::new(0, false))));
    let out = Box::new(std::io::BufWriter::new(std::io::stdout()));
    let settings = CaptureSettings { duration, hold_flows };
    let mut window = WindowSink::new(settings, selected.clock.clone(), out, move || {
        tracing::info!(duration = %humantime::format_duration(duration), "capture started");
    });
    // No interval exports: the window is the only one.
    let timing =
        LoopSettings { poll_interval: cfg.poll_interval, export_interval: duration + Duration::from_secs(1) };
    collect(selected.source, shared.clone(), &mut window, timing, stop);
    let captured = window.finish(&shared.enrichers).map_err(CommandError::Stdout)?;
    if captured.early > 0 {
        tracing::info!(
            early = captured.early,
            hold_flows,
            "flows beyond --hold-flows were printed before the window ended (labelled with what was known then)"
        );
    }
    tracing::info!(flows = captured.flows, "capture finished");
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
