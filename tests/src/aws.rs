//! AWS tooling for the deploy-artifact tests: the AWS CLI, cfn-lint and a moto server, installed by
//! `scripts/install-aws-tools.sh` in two virtual environments under `$EDDY_TOOLS_DIR` (default
//! `/opt/eddy-tools`).
//!
//! Network rule: everything here talks to loopback only. Every AWS CLI command gets fake credentials,
//! no shared config or credentials file, IMDS disabled and an explicit `--endpoint-url` of a
//! [`MotoServer`] on 127.0.0.1 (the scripts under test pass it through).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `scripts/install-aws-tools.sh` puts its virtual environments.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("EDDY_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/eddy-tools"))
}

/// The repository root (the workspace directory above `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Paths of the installed tools.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `aws` (AWS CLI v1 from PyPI).
    pub aws: PathBuf,
    /// `cfn-lint`, in the same environment.
    pub cfn_lint: PathBuf,
    /// The Python of the AWS CLI environment (has cfn-lint's template decoder).
    pub python: PathBuf,
    /// `moto_server`.
    pub moto_server: PathBuf,
}

impl Tools {
    /// Finds the tools, or says what is missing and how to install it.
    pub fn find() -> std::result::Result<Tools, String> {
        let dir = tools_dir();
        let tools = Tools {
            aws: dir.join("awscli/bin/aws"),
            cfn_lint: dir.join("awscli/bin/cfn-lint"),
            python: dir.join("awscli/bin/python"),
            moto_server: dir.join("moto/bin/moto_server"),
        };
        for p in [&tools.aws, &tools.cfn_lint, &tools.python, &tools.moto_server] {
            if !p.exists() {
                return Err(format!(
                    "{} is missing: run scripts/install-aws-tools.sh (EDDY_TOOLS_DIR={})",
                    p.display(),
                    dir.display()
                ));
            }
        }
        if Command::new("jq").arg("--version").output().is_err() {
            return Err("jq is not installed (the render script needs it): apt-get install jq".into());
        }
        Ok(tools)
    }

    /// The ECS service model that the installed AWS CLI validates against
    /// (`botocore/data/ecs/<version>/service-2.json`, inside the CLI's environment).
    pub fn ecs_service_model(&self) -> Result<PathBuf> {
        let venv = self.aws.parent().and_then(Path::parent).context("aws has no venv directory")?;
        let mut found = Vec::new();
        find_files(venv, &mut |p| {
            let s = p.to_string_lossy();
            if s.ends_with("service-2.json") && s.contains("/botocore/data/ecs/") {
                found.push(p.to_path_buf());
            }
        })?;
        found.sort();
        // The newest API version; awscli v1 vendors its own botocore (awscli/botocore): prefer that copy,
        // it is the one the CLI loads.
        found
            .iter()
            .rev()
            .find(|p| p.to_string_lossy().contains("/awscli/botocore/"))
            .or_else(|| found.last())
            .cloned()
            .with_context(|| format!("no botocore/data/ecs/*/service-2.json under {}", venv.display()))
    }

    /// An AWS CLI-ready command: fake credentials, no config files, IMDS off, the CLI's venv first on
    /// PATH (the scripts call `aws`), `AWS_CLI` set for them.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let bin = self.aws.parent().expect("aws is in a bin directory");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("AWS_CLI", &self.aws)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_PAGER", "")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_DEFAULT_PROFILE")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .current_dir(repo_root());
        cmd
    }

    /// `aws --region REGION --endpoint-url ENDPOINT ARGS…`, which must succeed; returns stdout.
    pub fn aws(&self, endpoint: &str, region: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(&self.aws);
        cmd.args(["--region", region, "--endpoint-url", endpoint, "--output", "json"]).args(args);
        run_ok(&mut cmd)
    }

    /// A script of `scripts/` run with [`Tools::command`]'s environment.
    pub fn script(&self, name: &str) -> Command {
        self.command(repo_root().join("scripts").join(name))
    }

    /// Reads a CloudFormation template (YAML with short-form intrinsics) as JSON, through cfn-lint's decoder.
    pub fn decode_template(&self, path: &Path) -> Result<serde_json::Value> {
        let mut cmd = self.command(&self.python);
        cmd.args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\ntemplate, matches = decode(sys.argv[1])\n\
             if matches:\n    sys.exit('\\n'.join(str(m) for m in matches))\nprint(json.dumps(template))",
        ])
        .arg(path);
        Ok(serde_json::from_str(&run_ok(&mut cmd)?)?)
    }
}

fn find_files(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            find_files(&entry.path(), f)?;
        } else if ty.is_file() {
            f(&entry.path());
        }
    }
    Ok(())
}

/// Runs `cmd`; fails with its stderr unless it exits 0. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}):\nstdout: {}\nstderr: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with stdin closed and collects its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))
}

/// A moto server on a free loopback port; killed when dropped, its log removed unless a test failed.
pub struct MotoServer {
    child: Child,
    log: std::path::PathBuf,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` and waits until it accepts connections.
    pub fn start(tools: &Tools) -> Result<MotoServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::env::temp_dir().join(format!("eddy-moto-{port}.log"));
        let child = Command::new(&tools.moto_server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", tools.moto_server.display()))?;
        let mut server = MotoServer { child, log, endpoint: format!("http://127.0.0.1:{port}") };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            // The log goes with `server` (see Drop): an error carries what it said.
            let said = || std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(status) = server.child.try_wait()? {
                bail!("moto_server exited ({status}): {}", said());
            }
            if Instant::now() >= deadline {
                bail!("moto_server did not listen on {addr} within 30 s; its log: {}", said());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The AWS CLI's JSON output (`null` for commands that print nothing).
pub fn cli_json(s: &str) -> serde_json::Value {
    if s.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The environment variables the agent accepts: every `EDDY_*` name in the README's configuration
/// reference (generated from the configuration's one definition in `agent/src/config/`, and kept equal
/// to it by the agent's unit test `the_readme_reference_is_generated_from_the_definition`), plus
/// `EDDY_CONFIG`.
pub fn agent_env_vars() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let start = readme
        .find("<!-- config-reference:begin")
        .context("README.md has no config-reference begin marker")?;
    let end =
        readme[start..].find("<!-- config-reference:end -->").context("no config-reference end marker")?
            + start;
    let mut vars: Vec<String> = readme[start..end]
        .split('`')
        .filter(|s| {
            s.starts_with("EDDY_")
                && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(String::from)
        .collect();
    vars.sort();
    vars.dedup();
    anyhow::ensure!(vars.len() >= 5, "the reference names only {vars:?}");
    vars.push("EDDY_CONFIG".to_string());
    Ok(vars)
}

/// Capability names (without `CAP_`) that the agent's startup check (`agent/src/preflight.rs`) knows.
pub fn preflight_capabilities() -> Result<Vec<String>> {
    let src = std::fs::read_to_string(repo_root().join("agent/src/preflight.rs"))?;
    let caps: Vec<String> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("const CAP_"))
        .filter_map(|rest| rest.split(':').next())
        .map(|name| name.trim().to_string())
        .collect();
    anyhow::ensure!(!caps.is_empty(), "no `const CAP_*` in agent/src/preflight.rs");
    Ok(caps)
}

/// The `CAP_*` names the agent's run-time capability drop keeps when it uses them
/// (`pub const CAP_*` in agent/src/privileges.rs; CAP_SETPCAP only lets it drop the others).
pub fn runtime_capabilities() -> Result<Vec<String>> {
    let src = std::fs::read_to_string(repo_root().join("agent/src/privileges.rs"))?;
    let caps: Vec<String> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const CAP_"))
        .filter_map(|rest| rest.split(':').next())
        .map(|name| name.trim().to_string())
        .filter(|name| name != "SETPCAP")
        .collect();
    anyhow::ensure!(!caps.is_empty(), "no `pub const CAP_*` in agent/src/privileges.rs");
    Ok(caps)
}

/// The source file of the agent's startup check, for the paths it looks at.
pub fn preflight_source() -> Result<String> {
    Ok(std::fs::read_to_string(repo_root().join("agent/src/preflight.rs"))?)
}
