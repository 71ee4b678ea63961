//! `eddy-fips-proxy`: see the crate docs of `eddy_fips_proxy` and the README ("FIPS mode").

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use eddy_fips_proxy::cli::{Cli, Command};
use eddy_fips_proxy::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (overrides, healthcheck) = match &cli.command {
        Some(Command::Healthcheck(o)) => (o.clone(), true),
        Some(Command::Run(o)) => (o.clone(), false),
        None => (cli.overrides.clone(), false),
    };
    let cfg = match Config::load(overrides.config.as_deref(), std::env::vars(), &overrides.pairs()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("eddy-fips-proxy: {e}");
            // Invalid configuration: 2, like the agent (1 is for runtime failures).
            return ExitCode::from(2);
        }
    };
    if healthcheck {
        return match eddy_fips_proxy::status::healthcheck::check(cfg.status_addr(), Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eddy-fips-proxy healthcheck: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&cfg.log_level, &cfg.log_format);
    tracing::info!(config = %serde_json::to_string(&cfg.redacted()).unwrap_or_default(), "effective configuration");
    match eddy_fips_proxy::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("\neddy-fips-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}
