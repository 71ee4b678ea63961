//! The ECS deployment artifacts (task-definitions/, cloudformation/eddy.yaml, scripts/) are right first
//! time: every task definition renders and registers with the real AWS CLI (against a moto server on
//! loopback), broken copies are rejected, enum values match the ECS service model botocore ships,
//! cfn-lint passes, the stack reaches CREATE_COMPLETE on moto, the template itself says DAEMON / host
//! network / host pid / partition-aware ARNs, and nothing drifts from what the agent accepts (`EDDY_*`
//! keys from agent/src/config.rs, capabilities and mounts from agent/src/preflight.rs).
//!
//! Needs the tools of `scripts/install-aws-tools.sh` (and `jq`); skips with a reason without them.
//! Talks to 127.0.0.1 only (fake credentials, IMDS disabled, explicit `--endpoint-url`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use eddy_tests::aws::{self, MotoServer, Tools, repo_root, run, run_ok};
use eddy_tests::skip;
use serde_json::{Value, json};

const ACCOUNT: &str = "123456789012";
const REGIONS: [&str; 2] = ["us-east-1", "us-gov-west-1"];
const TEMPLATES: [&str; 4] =
    ["eddy-daemon", "eddy-daemon-govcloud", "eddy-daemon-external", "eddy-fargate-sidecar"];

fn tools_or_skip() -> Option<Tools> {
    match Tools::find() {
        Ok(t) => Some(t),
        Err(reason) => {
            skip(&reason);
            None
        }
    }
}

fn template_path(name: &str) -> PathBuf {
    repo_root().join("task-definitions").join(format!("{name}.json"))
}

fn render_args(name: &str, region: &str) -> Vec<String> {
    let registry = format!("{ACCOUNT}.dkr.ecr.{region}.amazonaws.com");
    [
        name,
        "--account-id",
        ACCOUNT,
        "--region",
        region,
        "--agent-image",
        &format!("{registry}/eddy-agent:test"),
        "--fips-proxy-image",
        &format!("{registry}/eddy-fips-proxy:test"),
        "--app-image",
        "public.ecr.aws/nginx/nginx:stable",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Renders a template with scripts/render-task-definition.sh.
fn render(tools: &Tools, name: &str, region: &str, extra: &[&str]) -> Result<Value> {
    let mut cmd = tools.script("render-task-definition.sh");
    cmd.args(render_args(name, region)).args(extra);
    let out = run_ok(&mut cmd)?;
    serde_json::from_str(&out).with_context(|| format!("rendered {name} is not JSON: {out}"))
}

/// Every rendering the tests check: each template in each region, plus the option variants.
fn renderings(tools: &Tools) -> Result<Vec<(String, Value)>> {
    let secret = |region: &str| {
        let partition = if region.starts_with("us-gov-") { "aws-us-gov" } else { "aws" };
        format!("arn:{partition}:secretsmanager:{region}:{ACCOUNT}:secret:eddy/otlp-headers-AbCdEf")
    };
    let mut all = Vec::new();
    for name in TEMPLATES {
        for region in REGIONS {
            all.push((format!("{name} {region}"), render(tools, name, region, &[])?));
        }
    }
    for region in REGIONS {
        let s = secret(region);
        let extra = [
            "--capabilities",
            "bpf",
            "--otlp-endpoint",
            "https://otlp.example.com:4318/v1/metrics",
            "--otlp-headers-secret",
            &s,
            "--tag",
            "env:prod,team:payments",
            "--record-tags",
            "env:prod,team:payments",
            "--log-level",
            "debug",
        ];
        all.push((format!("eddy-daemon {region} bpf+otlp"), render(tools, "eddy-daemon", region, &extra)?));
        all.push((
            format!("eddy-daemon-govcloud {region} bpf+otlp"),
            render(tools, "eddy-daemon-govcloud", region, &extra)?,
        ));
    }
    Ok(all)
}

fn write_temp(dir: &Path, name: &str, value: &Value) -> Result<PathBuf> {
    let path = dir.join(format!("{}.json", name.replace([' ', '+'], "_")));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

fn temp_dir(tag: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("eddy-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn templates_exist_and_render_with_helpful_errors() {
    let Some(tools) = tools_or_skip() else { return };
    for name in TEMPLATES {
        assert!(template_path(name).exists(), "{} is missing", template_path(name).display());
    }
    // Missing values are named.
    let out = run(tools.script("render-task-definition.sh").args(["eddy-daemon", "--region", "us-east-1"]))
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--account-id"), "{out:?}");
    let out = run(tools.script("render-task-definition.sh").args([
        "eddy-daemon-govcloud",
        "--account-id",
        ACCOUNT,
        "--region",
        "us-gov-west-1",
        "--agent-image",
        "x/eddy-agent:1",
    ]))
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fips-proxy-image"), "{out:?}");
    // GovCloud: the agent sends OTLP through the proxy, which carries it to the same intake over TLS.
    let intake = "https://otlp.example.com:4318/v1/metrics";
    let td = render(&tools, "eddy-daemon-govcloud", "us-gov-west-1", &["--otlp-endpoint", intake])
        .expect("render");
    let env_of = |name: &str| -> std::collections::BTreeMap<String, String> {
        let c = td["containerDefinitions"].as_array().expect("containers").iter().find(|c| c["name"] == name);
        let env = c.and_then(|c| c["environment"].as_array()).cloned().unwrap_or_default();
        env.iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect()
    };
    let (agent, proxy) = (env_of("eddy-agent"), env_of("eddy-fips-proxy"));
    assert_eq!(agent.get("EDDY_FIPS_ENABLED").map(String::as_str), Some("true"), "{agent:?}");
    assert_eq!(agent.get("EDDY_OTLP_ENDPOINT").map(String::as_str), Some(intake));
    assert_eq!(proxy.get("EDDY_FIPS_OTLP_UPSTREAM").map(String::as_str), Some(intake), "{proxy:?}");
    for key in ["EDDY_FIPS_PORT_RANGE_START", "EDDY_FIPS_LOCAL_ADDRESS"] {
        assert!(agent.contains_key(key) && agent.get(key) == proxy.get(key), "{key}: {agent:?} vs {proxy:?}");
    }
    let mut cmd = tools.script("render-task-definition.sh");
    cmd.args(render_args("eddy-daemon-govcloud", "us-gov-west-1"))
        .args(["--otlp-endpoint", "http://otlp.example.com:4318/v1/metrics"]);
    let out = run(&mut cmd).expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("https://"), "{out:?}");
    for script in ["render-task-definition.sh", "register-task-definition.sh", "deploy-stack.sh"] {
        let help = run_ok(tools.script(script).arg("--help")).expect("--help");
        assert!(help.contains("Usage:"), "{script} --help: {help}");
    }
    let out = run(tools.script("deploy-stack.sh").args(["--region", "us-east-1"])).expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--cluster") && err.contains("--agent-image"), "{err}");

    // Placeholders are all filled, partitions follow the region.
    for (what, td) in renderings(&tools).expect("render") {
        let text = td.to_string();
        assert!(!text.contains("{{"), "{what}: placeholder left: {text}");
        let partition = if what.contains("us-gov-") { "arn:aws-us-gov:" } else { "arn:aws:" };
        for arn in [&td["taskRoleArn"], &td["executionRoleArn"]] {
            assert!(arn.as_str().is_some_and(|a| a.starts_with(partition)), "{what}: {arn}");
        }
    }
}

#[test]
fn task_definitions_register_with_the_aws_cli() {
    let Some(tools) = tools_or_skip() else { return };
    let moto = MotoServer::start(&tools).expect("moto");
    let dir = temp_dir("register").expect("tmp");
    for (what, td) in renderings(&tools).expect("render") {
        let region = if what.contains("us-gov-") { "us-gov-west-1" } else { "us-east-1" };
        let file = write_temp(&dir, &what, &td).expect("write");
        let out = tools
            .aws(
                &moto.endpoint,
                region,
                &[
                    "ecs",
                    "register-task-definition",
                    "--cli-input-json",
                    &format!("file://{}", file.display()),
                ],
            )
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let got: Value = serde_json::from_str(&out).expect("json");
        let registered = &got["taskDefinition"];
        assert_eq!(registered["family"], td["family"], "{what}");
        // moto treats every non-EC2 compatibility as Fargate (networkMode forced to awsvpc): compare the
        // network mode for EC2 task definitions only (the model check covers the others).
        if td["requiresCompatibilities"] == json!(["EC2"]) {
            assert_eq!(registered["networkMode"], td["networkMode"], "{what}");
        }
        assert_eq!(registered["pidMode"], td["pidMode"], "{what}");
        // Round trip: every field sent comes back unchanged (moto adds empty defaults of its own).
        for (sent, got) in td["containerDefinitions"]
            .as_array()
            .expect("containers")
            .iter()
            .zip(registered["containerDefinitions"].as_array().expect("registered containers"))
        {
            for (k, v) in sent.as_object().expect("container") {
                assert_eq!(&got[k], v, "{what}: container {} field {k} round trip", sent["name"]);
            }
        }
        eprintln!("registered {what}: {}", registered["taskDefinitionArn"]);
    }
    // The wrapper script: renders, creates the log group, registers, prints the ARN.
    for region in REGIONS {
        let mut cmd = tools.script("register-task-definition.sh");
        cmd.args(render_args("eddy-daemon", region)).args([
            "--create-log-group",
            "--log-retention-days",
            "14",
            "--endpoint-url",
            &moto.endpoint,
        ]);
        let arn = run_ok(&mut cmd).expect("register-task-definition.sh");
        let partition = if region.starts_with("us-gov-") { "aws-us-gov" } else { "aws" };
        assert!(
            arn.trim().starts_with(&format!("arn:{partition}:ecs:{region}:")) && arn.contains("eddy-agent:"),
            "{arn}"
        );
        let groups = tools
            .aws(
                &moto.endpoint,
                region,
                &["logs", "describe-log-groups", "--log-group-name-prefix", "/ecs/eddy"],
            )
            .expect("log groups");
        let groups: Value = serde_json::from_str(&groups).expect("json");
        assert_eq!(groups["logGroups"][0]["logGroupName"], "/ecs/eddy", "{groups}");
        assert_eq!(groups["logGroups"][0]["retentionInDays"], 14, "{groups}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_task_definitions_are_rejected() {
    let Some(tools) = tools_or_skip() else { return };
    let moto = MotoServer::start(&tools).expect("moto");
    let dir = temp_dir("broken").expect("tmp");
    let good = render(&tools, "eddy-daemon", "us-east-1", &[]).expect("render");
    let mut unknown_key = good.clone();
    unknown_key["containerDefinitions"][0]["capabilities"] = json!(["BPF"]);
    let mut wrong_type = good.clone();
    wrong_type["containerDefinitions"][0]["memoryReservation"] = json!("128 MiB");
    let mut missing_required = good.clone();
    missing_required["containerDefinitions"][0]["logConfiguration"]
        .as_object_mut()
        .expect("obj")
        .remove("logDriver");
    for (what, td, expect) in [
        ("unknown key", unknown_key, "Unknown parameter"),
        ("wrong type", wrong_type, "Invalid type"),
        ("missing required", missing_required, "Missing required parameter"),
    ] {
        let file = write_temp(&dir, what, &td).expect("write");
        let mut cmd = tools.command(&tools.aws);
        cmd.args([
            "--region",
            "us-east-1",
            "--endpoint-url",
            &moto.endpoint,
            "ecs",
            "register-task-definition",
        ])
        .arg("--cli-input-json")
        .arg(format!("file://{}", file.display()));
        let out = run(&mut cmd).expect("run aws");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted: {}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains(expect), "{what}: expected {expect:?} in: {stderr}");
    }
    // And the model check below catches what the CLI lets through (enum values).
    let model = load_model(&tools).expect("model");
    let mut bad_enum = good.clone();
    bad_enum["pidMode"] = json!("hots");
    bad_enum["containerDefinitions"][0]["logConfiguration"]["logDriver"] = json!("cloudwatch");
    let problems = check_against_model(&model, &bad_enum);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn load_model(tools: &Tools) -> Result<Value> {
    let path = tools.ecs_service_model()?;
    eprintln!("ECS service model: {}", path.display());
    Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
}

/// Checks a task definition against the model's `RegisterTaskDefinitionRequest` shape: unknown keys,
/// types, required members and enum values (the CLI itself skips enums).
fn check_against_model(model: &Value, td: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_shape(model, "RegisterTaskDefinitionRequest", td, "$", &mut problems);
    problems
}

fn check_shape(model: &Value, shape_name: &str, v: &Value, path: &str, problems: &mut Vec<String>) {
    let shape = &model["shapes"][shape_name];
    match shape["type"].as_str().unwrap_or("") {
        "structure" => {
            let Some(obj) = v.as_object() else {
                return problems.push(format!("{path}: expected an object ({shape_name})"));
            };
            for req in shape["required"].as_array().into_iter().flatten() {
                let req = req.as_str().unwrap_or("");
                if !obj.contains_key(req) {
                    problems.push(format!("{path}: missing required {req}"));
                }
            }
            for (k, child) in obj {
                match shape["members"][k]["shape"].as_str() {
                    Some(s) => check_shape(model, s, child, &format!("{path}.{k}"), problems),
                    None => problems.push(format!("{path}: unknown member {k} of {shape_name}")),
                }
            }
        }
        "list" => match v.as_array() {
            Some(items) => {
                let member = shape["member"]["shape"].as_str().unwrap_or("");
                for (i, item) in items.iter().enumerate() {
                    check_shape(model, member, item, &format!("{path}[{i}]"), problems);
                }
            }
            None => problems.push(format!("{path}: expected a list ({shape_name})")),
        },
        "map" => match v.as_object() {
            Some(obj) => {
                let value = shape["value"]["shape"].as_str().unwrap_or("");
                for (k, child) in obj {
                    check_shape(model, value, child, &format!("{path}.{k}"), problems);
                }
            }
            None => problems.push(format!("{path}: expected a map ({shape_name})")),
        },
        "string" => match v.as_str() {
            Some(s) => {
                if let Some(allowed) = shape["enum"].as_array()
                    && !allowed.iter().any(|a| a == s)
                {
                    problems.push(format!("{path}: {s:?} is not one of {shape_name} {allowed:?}"));
                }
            }
            None => problems.push(format!("{path}: expected a string ({shape_name})")),
        },
        "integer" | "long" if !v.is_i64() => problems.push(format!("{path}: expected an integer")),
        "boolean" if !v.is_boolean() => problems.push(format!("{path}: expected a boolean")),
        "double" | "float" if !v.is_number() => problems.push(format!("{path}: expected a number")),
        "" => problems.push(format!("{path}: shape {shape_name} not in the model")),
        _ => {}
    }
}

/// Capability names the model documents as valid for `linuxParameters.capabilities.add` (the model
/// has no enum for them: it is a plain string list with the valid values in its documentation).
fn documented_capabilities(model: &Value) -> BTreeSet<String> {
    let doc = model["shapes"]["KernelCapabilities"]["members"]["add"]["documentation"].as_str().unwrap_or("");
    let Some(list) = doc.split("Valid values:").nth(1) else { return BTreeSet::new() };
    list.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn enum_values_match_the_ecs_service_model() {
    let Some(tools) = tools_or_skip() else { return };
    let model = load_model(&tools).expect("model");
    let documented = documented_capabilities(&model);
    assert!(documented.contains("SYS_ADMIN") && documented.contains("NET_ADMIN"), "{documented:?}");
    eprintln!(
        "model documents BPF: {}, PERFMON: {} (capabilities are a free string list in the model)",
        documented.contains("BPF"),
        documented.contains("PERFMON")
    );
    for (what, td) in renderings(&tools).expect("render") {
        let problems = check_against_model(&model, &td);
        assert!(problems.is_empty(), "{what}: {problems:#?}");
        for c in td["containerDefinitions"].as_array().expect("containers") {
            for cap in c["linuxParameters"]["capabilities"]["add"].as_array().into_iter().flatten() {
                let cap = cap.as_str().expect("string");
                // The default set must use documented names only; the opt-in `bpf` set adds the two
                // names (kernel 5.8+) the model's documentation does not list yet.
                let allowed =
                    documented.contains(cap) || (what.contains("bpf") && ["BPF", "PERFMON"].contains(&cap));
                assert!(
                    allowed,
                    "{what}: capability {cap} is not documented by the ECS model: {documented:?}"
                );
            }
        }
    }
}

#[test]
fn cfn_lint_passes() {
    let Some(tools) = tools_or_skip() else { return };
    let template = repo_root().join("cloudformation/eddy.yaml");
    let mut cmd = tools.command(&tools.cfn_lint);
    cmd.args(["--regions", "us-east-1", "us-gov-west-1", "--"]).arg(&template);
    let out = run(&mut cmd).expect("cfn-lint");
    let code = out.status.code().unwrap_or(-1);
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // cfn-lint exit code bits: 1 fatal, 2 errors, 4 warnings, 8 informational.
    assert!(code >= 0 && code & 3 == 0, "cfn-lint found errors (exit {code}):\n{report}");
    if !report.trim().is_empty() {
        eprintln!("cfn-lint (exit {code}):\n{report}");
    }
}

#[test]
fn stack_reaches_create_complete_on_moto() {
    let Some(tools) = tools_or_skip() else { return };
    let moto = MotoServer::start(&tools).expect("moto");
    // moto's CloudFormation is a smoke test: it turns DAEMON into REPLICA, host network into bridge,
    // drops PidMode and takes AWS::Partition as "aws" everywhere (so Fips=auto stays off): the template
    // itself is checked in `template_declares_daemon_host_network_and_pid`.
    for (region, stack, extra) in [
        ("us-east-1", "eddy", vec!["--otlp-endpoint", "http://127.0.0.1:4318/v1/metrics"]),
        (
            "us-east-1",
            "eddy-otlp-secret",
            vec![
                "--capabilities",
                "bpf",
                "--otlp-headers-secret",
                "arn:aws:ssm:us-east-1:123456789012:parameter/eddy/otlp-headers",
                "--static-tags",
                "env:prod,team:payments",
            ],
        ),
        (
            "us-gov-west-1",
            "eddy-gov",
            vec![
                "--fips",
                "on",
                "--fips-proxy-image",
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com/eddy-fips-proxy:test",
                "--otlp-headers-secret",
                "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:eddy/otlp-AbCdEf",
            ],
        ),
    ] {
        tools
            .aws(&moto.endpoint, region, &["ecs", "create-cluster", "--cluster-name", "prod"])
            .expect("cluster");
        let mut cmd = tools.script("deploy-stack.sh");
        cmd.args([
            "--cluster",
            "prod",
            "--region",
            region,
            "--stack-name",
            stack,
            "--endpoint-url",
            &moto.endpoint,
        ])
        .args(["--agent-image", &format!("123456789012.dkr.ecr.{region}.amazonaws.com/eddy-agent:test")])
        .args(["--tag", "team=platform"])
        .args(&extra);
        let out = run_ok(&mut cmd).unwrap_or_else(|e| panic!("{stack}: {e:#}"));
        assert!(out.contains("CREATE_COMPLETE"), "{stack}: {out}");
        let stacks = tools
            .aws(&moto.endpoint, region, &["cloudformation", "describe-stacks", "--stack-name", stack])
            .expect("describe-stacks");
        let stacks: Value = serde_json::from_str(&stacks).expect("json");
        assert_eq!(stacks["Stacks"][0]["StackStatus"], "CREATE_COMPLETE", "{stacks}");
        let services = tools
            .aws(
                &moto.endpoint,
                region,
                &[
                    "ecs",
                    "describe-services",
                    "--cluster",
                    "prod",
                    "--services",
                    &format!("{stack}-eddy-agent"),
                ],
            )
            .expect("describe-services");
        let services: Value = serde_json::from_str(&services).expect("json");
        let td_arn =
            services["services"][0]["taskDefinition"].as_str().expect("service has a task definition");
        let td = tools
            .aws(&moto.endpoint, region, &["ecs", "describe-task-definition", "--task-definition", td_arn])
            .expect("describe-task-definition");
        let td: Value = serde_json::from_str(&td).expect("json");
        let names: Vec<&str> = td["taskDefinition"]["containerDefinitions"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let want: &[&str] =
            if stack == "eddy-gov" { &["eddy-agent", "eddy-fips-proxy"] } else { &["eddy-agent"] };
        assert_eq!(names, want, "{stack}");
        // Removal.
        let mut cmd = tools.script("deploy-stack.sh");
        cmd.args(["--delete", "--region", region, "--stack-name", stack, "--endpoint-url", &moto.endpoint]);
        run_ok(&mut cmd).unwrap_or_else(|e| panic!("{stack} delete: {e:#}"));
    }
}

/// Every string in a JSON tree, with its path.
fn strings<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((path, s)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| strings(x, format!("{path}[{i}]"), out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, format!("{path}.{k}"), out)),
        _ => {}
    }
}

/// The container lists of the template's task definition: one per branch of its `Fn::If`.
fn template_container_variants(template: &Value) -> Vec<Vec<Value>> {
    let defs = &template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"];
    match defs.get("Fn::If") {
        Some(branches) => branches.as_array().expect("Fn::If")[1..]
            .iter()
            .map(|b| b.as_array().expect("container list").clone())
            .collect(),
        None => vec![defs.as_array().expect("container list").clone()],
    }
}

#[test]
fn template_declares_daemon_host_network_and_pid() {
    let Some(tools) = tools_or_skip() else { return };
    let path = repo_root().join("cloudformation/eddy.yaml");
    let t = tools.decode_template(&path).expect("decode");
    let res = &t["Resources"];
    let service = &res["Service"]["Properties"];
    assert_eq!(service["SchedulingStrategy"], "DAEMON");
    assert_eq!(service["LaunchType"], "EC2");
    let td = &res["TaskDefinition"]["Properties"];
    assert_eq!(td["NetworkMode"], "host");
    assert_eq!(td["PidMode"], "host");
    assert_eq!(td["RequiresCompatibilities"], json!(["EC2"]));

    // Partition-aware: every ARN is built with ${AWS::Partition}; no literal commercial ARN anywhere.
    let raw = std::fs::read_to_string(&path).expect("read");
    assert!(
        !raw.contains("arn:aws:") && !raw.contains("arn:aws-us-gov:"),
        "hard-coded partition in the template"
    );
    let mut all = Vec::new();
    strings(&t["Resources"], "Resources".into(), &mut all);
    for (p, s) in &all {
        if s.contains("arn:") {
            assert!(s.contains("arn:${AWS::Partition}:"), "{p}: ARN without ${{AWS::Partition}}: {s}");
        }
    }

    // Least privilege: exactly the documented discovery actions, read-only.
    let mut actions = BTreeSet::new();
    for policy in res["TaskRole"]["Properties"]["Policies"].as_array().expect("policies") {
        for st in policy["PolicyDocument"]["Statement"].as_array().expect("statements") {
            assert_eq!(st["Effect"], "Allow");
            match &st["Action"] {
                Value::String(a) => {
                    actions.insert(a.clone());
                }
                Value::Array(a) => actions.extend(a.iter().filter_map(|x| x.as_str().map(String::from))),
                other => panic!("unexpected Action {other}"),
            }
        }
    }
    let want: BTreeSet<String> = [
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeInstances",
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ecs:DescribeContainerInstances",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(actions, want);

    // The FIPS and non-FIPS agent definitions are the same container apart from FIPS endpoints and the
    // dependency on the proxy.
    let variants = template_container_variants(&t);
    assert_eq!(variants.len(), 2, "expected FIPS and non-FIPS container lists");
    let agent =
        |list: &[Value]| list.iter().find(|c| c["Name"] == "eddy-agent").cloned().expect("eddy-agent");
    let (mut fips, mut plain) = (agent(&variants[0]), agent(&variants[1]));
    assert_eq!(fips["DependsOn"], json!([{"ContainerName": "eddy-fips-proxy", "Condition": "HEALTHY"}]));
    assert!(variants[0].iter().any(|c| c["Name"] == "eddy-fips-proxy"));
    fips.as_object_mut().expect("obj").remove("DependsOn");
    let env = fips["Environment"].as_array_mut().expect("env");
    let before = env.len();
    let fips_only = [
        "AWS_USE_FIPS_ENDPOINT",
        "EDDY_FIPS_ENABLED",
        "EDDY_FIPS_LOCAL_ADDRESS",
        "EDDY_FIPS_PORT_RANGE_START",
    ];
    env.retain(|e| !fips_only.iter().any(|n| e["Name"] == *n));
    assert_eq!(env.len() + fips_only.len(), before, "FIPS agent sets each of {fips_only:?} once");
    plain.as_object_mut().expect("obj");
    assert_eq!(fips, plain, "the FIPS and non-FIPS agent containers drifted apart");
}

/// What is wrong with the agent container(s) of a task definition (ECS API spelling: camelCase keys).
fn agent_container_problems(what: &str, td: &Value, accepted: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let key = |v: &Value, camel: &str| -> Value {
        let pascal = format!("{}{}", camel[..1].to_ascii_uppercase(), &camel[1..]);
        v.get(camel).or_else(|| v.get(&pascal)).cloned().unwrap_or(Value::Null)
    };
    let containers = key(td, "containerDefinitions");
    let containers = containers.as_array().cloned().unwrap_or_default();
    let mut agents = 0;
    for c in &containers {
        let name = key(c, "name");
        let is_agent = name == "eddy-agent";
        agents += usize::from(is_agent);
        for list in ["environment", "secrets"] {
            for var in key(c, list).as_array().into_iter().flatten() {
                let Some(var_name) = key(var, "name").as_str().map(str::to_string) else { continue };
                if is_agent && var_name.starts_with("EDDY_") && !accepted.contains(&var_name) {
                    problems.push(format!(
                        "{what}: the agent rejects {var_name} ({list}); accepted: {}",
                        accepted.join(", ")
                    ));
                }
                if !is_agent && var_name.starts_with("EDDY_") && !var_name.starts_with("EDDY_FIPS_") {
                    problems.push(format!("{what}: container {name} has {var_name}"));
                }
            }
        }
        // Secrets are never plain environment values.
        for var in key(c, "environment").as_array().into_iter().flatten() {
            let n = key(var, "name");
            if n.as_str()
                .is_some_and(|n| n.ends_with("_HEADERS") || n.contains("SECRET") || n.contains("TOKEN"))
            {
                problems.push(format!("{what}: {n} must come from `secrets`, not `environment`"));
            }
        }
    }
    if agents != 1 {
        problems.push(format!("{what}: {agents} eddy-agent containers"));
    }
    problems
}

/// Capabilities and mounts of a daemon agent container against the startup check.
fn privilege_problems(what: &str, td: &Value, preflight_caps: &[String], preflight_src: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let agent = td["containerDefinitions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "eddy-agent"))
        .cloned()
        .unwrap_or(Value::Null);
    let caps: BTreeSet<&str> = agent["linuxParameters"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for c in &caps {
        if !preflight_caps.iter().any(|p| p == c) {
            problems.push(format!(
                "{what}: capability {c} is neither one the startup check asks for nor one the run-time drop \
                 keeps ({preflight_caps:?})"
            ));
        }
    }
    // The startup check's rule (agent/src/preflight.rs `missing_caps`): SYS_ADMIN or BPF+PERFMON, and
    // NET_ADMIN (or SYS_ADMIN) for the UDP cgroup programs; the kernel's cgroup attach wants NET_ADMIN
    // itself, so it is required in both sets. SYS_PTRACE: what the run-time drop keeps on EC2
    // (agent/src/privileges.rs: other containers' /proc/<pid>/ns/net). Nothing more: SYS_ADMIN with
    // BPF/PERFMON is redundant.
    let ok = caps == BTreeSet::from(["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"])
        || caps == BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"]);
    if !ok {
        problems.push(format!(
            "{what}: capabilities {caps:?} are neither SYS_ADMIN+NET_ADMIN+SYS_PTRACE nor \
             BPF+PERFMON+NET_ADMIN+SYS_PTRACE"
        ));
    }
    // Everything else (the container runtime's defaults: CHOWN, DAC_OVERRIDE, SETUID, …) is dropped.
    if agent["linuxParameters"]["capabilities"]["drop"] != json!(["ALL"]) {
        problems.push(format!("{what}: capabilities.drop is not [\"ALL\"]"));
    }
    if agent["privileged"] == json!(true) {
        problems.push(format!("{what}: privileged"));
    }
    // Mounts: the host's cgroup v2 hierarchy where the startup check looks for it, read-only; nothing else
    // (no tracefs/debugfs: the agent uses tp_btf/raw tracepoints only).
    let volumes = td["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = agent["mountPoints"].as_array().cloned().unwrap_or_default();
    if mounts.len() != 1 {
        problems.push(format!("{what}: expected exactly one mount (host cgroup), got {mounts:?}"));
    }
    for m in &mounts {
        let source = volumes
            .iter()
            .find(|v| v["name"] == m["sourceVolume"])
            .and_then(|v| v["host"]["sourcePath"].as_str())
            .unwrap_or("");
        let target = m["containerPath"].as_str().unwrap_or("");
        if source != "/sys/fs/cgroup" || target != "/sys/fs/cgroup" {
            problems.push(format!("{what}: mount {source} -> {target} is not the host cgroup hierarchy"));
        }
        if !preflight_src.contains(&format!("\"{target}\"")) {
            problems.push(format!("{what}: the startup check does not look for cgroup v2 at {target}"));
        }
        if m["readOnly"] != json!(true) {
            problems.push(format!("{what}: {target} is not read-only"));
        }
        if source.contains("tracing") || source.contains("debug") {
            problems.push(format!("{what}: mounts {source}, which the agent does not use"));
        }
    }
    if !preflight_src.contains("\"/sys/kernel/btf/vmlinux\"") {
        problems.push("the startup check no longer reads /sys/kernel/btf/vmlinux: review the mounts".into());
    }
    problems
}

/// Containers that need no privilege run as nobody (65534): the FIPS proxy everywhere, and the agent
/// in the Fargate sidecar example (sock_diag in its own namespace needs none; port 9780 > 1024).
fn user_problems(what: &str, td: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for c in td["containerDefinitions"].as_array().into_iter().flatten() {
        let unprivileged = c["name"] == "eddy-fips-proxy"
            || (c["name"] == "eddy-agent" && what.starts_with("eddy-fargate-sidecar"));
        if unprivileged && c["user"] != json!("65534:65534") {
            problems.push(format!("{what}: {} runs as {} instead of \"65534:65534\"", c["name"], c["user"]));
        }
    }
    problems
}

/// The template's agent containers as camelCase task definitions (for the same checks).
fn camel(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let k = if k.starts_with("Fn::") || k == "Ref" {
                        k.clone()
                    } else {
                        format!("{}{}", k[..1].to_ascii_lowercase(), &k[1..])
                    };
                    (k, camel(x))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel).collect()),
        other => other.clone(),
    }
}

#[test]
fn deploy_artifacts_match_what_the_agent_accepts() {
    let Some(tools) = tools_or_skip() else { return };
    let accepted = aws::agent_env_vars().expect("KEYS from agent/src/config.rs");
    let mut preflight_caps = aws::preflight_capabilities().expect("CAP_* from agent/src/preflight.rs");
    preflight_caps.extend(aws::runtime_capabilities().expect("CAP_* from agent/src/privileges.rs"));
    let preflight_src = aws::preflight_source().expect("preflight.rs");
    eprintln!("agent accepts: {accepted:?}; startup check capabilities: {preflight_caps:?}");

    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for name in TEMPLATES {
        let raw: Value =
            serde_json::from_slice(&std::fs::read(template_path(name)).expect("read")).expect("json");
        checked.push((format!("{name} (template)"), raw));
    }
    checked.extend(renderings(&tools).expect("render"));
    for (what, td) in &checked {
        problems.extend(agent_container_problems(what, td, &accepted));
        problems.extend(user_problems(what, td));
        if !what.starts_with("eddy-fargate-sidecar") {
            problems.extend(privilege_problems(what, td, &preflight_caps, &preflight_src));
        }
    }
    let template = tools.decode_template(&repo_root().join("cloudformation/eddy.yaml")).expect("decode");
    for (i, containers) in template_container_variants(&template).into_iter().enumerate() {
        let td = json!({ "containerDefinitions": containers });
        problems.extend(agent_container_problems(&format!("eddy.yaml variant {i}"), &td, &accepted));
        // Capabilities in the template are an Fn::If over the two sets: check each branch.
        let mut td = camel(&td);
        problems.extend(user_problems(&format!("eddy.yaml variant {i}"), &td));
        td["volumes"] = camel(&template["Resources"]["TaskDefinition"]["Properties"]["Volumes"]);
        let agent_idx = td["containerDefinitions"]
            .as_array()
            .and_then(|cs| cs.iter().position(|c| c["name"] == "eddy-agent"))
            .expect("agent");
        let add = td["containerDefinitions"][agent_idx]["linuxParameters"]["capabilities"]["add"].clone();
        let branches: Vec<Value> = match add.get("Fn::If") {
            Some(b) => b.as_array().expect("Fn::If")[1..].to_vec(),
            None => vec![add],
        };
        for (j, caps) in branches.into_iter().enumerate() {
            td["containerDefinitions"][agent_idx]["linuxParameters"]["capabilities"]["add"] = caps;
            problems.extend(privilege_problems(
                &format!("eddy.yaml variant {i} capabilities {j}"),
                &td,
                &preflight_caps,
                &preflight_src,
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");

    // The check itself catches a variable the agent does not accept, and a plain-text secret.
    let mut td = render(&tools, "eddy-daemon", "us-east-1", &[]).expect("render");
    let mut bad = td.clone();
    bad["containerDefinitions"][0]["environment"]
        .as_array_mut()
        .expect("env")
        .push(json!({"name": "EDDY_FIPS_ENABLE", "value": "true"}));
    assert!(!agent_container_problems("mutated", &bad, &accepted).is_empty(), "misspelt key not caught");
    td["containerDefinitions"][0]["environment"]
        .as_array_mut()
        .expect("env")
        .push(json!({"name": "EDDY_OTLP_HEADERS", "value": "authorization=Bearer x"}));
    assert!(!agent_container_problems("mutated", &td, &accepted).is_empty(), "plain-text header not caught");
    assert!(privilege_problems("rendered", &td, &preflight_caps, &preflight_src).is_empty());
    let mut no_drop = td.clone();
    no_drop["containerDefinitions"][0]["linuxParameters"]["capabilities"]["drop"] = json!([]);
    assert!(
        !privilege_problems("mutated", &no_drop, &preflight_caps, &preflight_src).is_empty(),
        "runtime default capabilities kept: not caught"
    );
    td["containerDefinitions"][0]["linuxParameters"]["capabilities"]["add"] =
        json!(["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE"]);
    assert!(
        !privilege_problems("mutated", &td, &preflight_caps, &preflight_src).is_empty(),
        "extra capability not caught"
    );
    let root_proxy = json!({ "containerDefinitions": [{ "name": "eddy-fips-proxy", "image": "x" }] });
    assert!(!user_problems("mutated", &root_proxy).is_empty(), "a proxy running as root not caught");
}

#[test]
fn record_tags_reach_the_agent_and_bad_ones_are_refused() {
    let Some(tools) = tools_or_skip() else { return };
    let td = render(&tools, "eddy-daemon", "us-east-1", &["--record-tags", "env:prod,team:payments"])
        .expect("render");
    let agent = td["containerDefinitions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "eddy-agent"))
        .expect("agent container");
    let tags = agent["environment"].as_array().and_then(|e| e.iter().find(|v| v["name"] == "EDDY_TAGS"));
    assert_eq!(tags.map(|v| v["value"].clone()), Some(json!("env:prod,team:payments")), "{agent}");
    let out = run(tools
        .script("render-task-definition.sh")
        .args(render_args("eddy-daemon", "us-east-1"))
        .args(["--record-tags", "Env=prod"]))
    .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --record-tags"), "{out:?}");
}
