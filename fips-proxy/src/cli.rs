//! Command line: `eddy-fips-proxy [run|healthcheck] [--config FILE] [--set KEY=VALUE]...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Eddy FIPS egress proxy (see the README, "FIPS mode").
#[derive(Debug, Parser)]
#[command(name = "eddy-fips-proxy", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run(Overrides),
    /// GET the status port; exit 0 when it answers with FIPS mode on, 1 otherwise.
    Healthcheck(Overrides),
}

/// Options shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// TOML configuration file (also EDDY_FIPS_CONFIG).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set idle_timeout=30s` (repeatable; same keys as the file).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
}

impl Overrides {
    /// `--set` pairs; an entry without `=` becomes a key with an empty value (rejected by validation).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.set
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.to_string()),
                None => (kv.trim().to_string(), String::new()),
            })
            .collect()
    }
}
