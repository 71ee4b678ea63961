//! `eddy-agent`: see the crate docs of `eddy_agent` and the README.

use std::process::ExitCode;

use clap::Parser;
use eddy_agent::cli::{Cli, Command};
use eddy_agent::{commands, config::Config};

fn main() -> ExitCode {
    // Before any thread: one malloc arena (see eddy_agent::alloc).
    let arenas = eddy_agent::alloc::limit_arenas();
    let cli = Cli::parse();
    let (overrides, duration) = match &cli.command {
        Command::Run(o) | Command::Healthcheck(o) => (o, None),
        Command::Capture { duration, overrides, hold_flows } => (overrides, Some((*duration, *hold_flows))),
        Command::Map(args) => return map(args),
    };
    let cfg = match Config::load(overrides.config.as_deref(), std::env::vars(), &overrides.pairs()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eddy-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Healthcheck(_) = cli.command {
        return match eddy_agent::healthcheck::check(cfg.listen, std::time::Duration::from_secs(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eddy-agent healthcheck: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&cfg.log_level);
    eddy_agent::panic_hook::install();
    eddy_agent::faults::announce();
    tracing::info!(config = %serde_json::to_string(&cfg.redacted()).unwrap_or_default(), "effective configuration");
    tracing::info!(malloc_arenas = ?arenas, "allocator: malloc arenas limited (None: MALLOC_ARENA_MAX set, or not glibc)");
    let result = match duration {
        None => commands::run(cfg),
        Some((d, max)) => commands::capture_window(cfg, d, max),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("\neddy-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `eddy-agent map`: no configuration file, no eBPF; exit 2 for a bad URL, 1 when it cannot serve.
fn map(args: &eddy_agent::cli::MapArgs) -> ExitCode {
    init_logging(&std::env::var("EDDY_LOG_LEVEL").unwrap_or_else(|_| "info".into()));
    eddy_agent::panic_hook::install();
    match eddy_agent::map::serve_cluster(args.settings()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ eddy_agent::map::MapError::Prometheus(eddy_agent::map::prometheus::PromError::Url(_))) => {
            eprintln!("eddy-agent map: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("\neddy-agent map: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
