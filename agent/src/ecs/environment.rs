//! Where the agent runs, decided in one place from the environment, so that no
//! provider reaches anything it has no reason to believe exists (a laptop gets
//! `Plain`, and nothing beyond loopback is ever probed).

use std::collections::HashMap;

/// Default ECS agent introspection address on a container instance.
pub const DEFAULT_AGENT_URI: &str = "http://127.0.0.1:51678";

/// The detected environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Environment {
    /// ECS on EC2 (or ECS Anywhere): the ECS agent's introspection API at `agent_uri`.
    EcsOnEc2 { agent_uri: String, why: &'static str },
    /// Fargate: task metadata v4 at `metadata_uri` (no eBPF there).
    Fargate { metadata_uri: String },
    /// Not ECS, or not detectable: no ECS provider runs.
    Plain,
}

/// What detection looks at.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Process environment (`ECS_CONTAINER_METADATA_URI_V4`, `AWS_EXECUTION_ENV`).
    pub env: HashMap<String, String>,
    /// `ecs_agent_uri` from the configuration (`EDDY_ECS_AGENT_URI`).
    pub configured_agent_uri: Option<String>,
    /// The ECS agent answered on loopback (127.0.0.1:51678).
    pub agent_on_loopback: bool,
}

/// Decides the environment.
pub fn detect(i: &Inputs) -> Environment {
    if let Some(uri) = &i.configured_agent_uri {
        return Environment::EcsOnEc2 { agent_uri: uri.clone(), why: "configured (ecs_agent_uri)" };
    }
    let exec = i.env.get("AWS_EXECUTION_ENV").map(String::as_str);
    let tmds = i.env.get("ECS_CONTAINER_METADATA_URI_V4").filter(|v| !v.is_empty());
    if exec == Some("AWS_ECS_FARGATE")
        && let Some(uri) = tmds
    {
        return Environment::Fargate { metadata_uri: uri.clone() };
    }
    if tmds.is_some() || exec == Some("AWS_ECS_EC2") || exec == Some("AWS_ECS_EXTERNAL") {
        return Environment::EcsOnEc2 {
            agent_uri: DEFAULT_AGENT_URI.into(),
            why: "ECS task environment variables",
        };
    }
    if i.agent_on_loopback {
        return Environment::EcsOnEc2 {
            agent_uri: DEFAULT_AGENT_URI.into(),
            why: "ECS agent answers on loopback",
        };
    }
    Environment::Plain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(env: &[(&str, &str)]) -> Inputs {
        Inputs {
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn laptop_is_plain() {
        assert_eq!(detect(&inputs(&[("HOME", "/root")])), Environment::Plain);
    }

    #[test]
    fn configuration_wins() {
        let mut i = inputs(&[
            ("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE"),
            ("ECS_CONTAINER_METADATA_URI_V4", "http://x"),
        ]);
        i.configured_agent_uri = Some("http://127.0.0.1:9".into());
        assert!(
            matches!(detect(&i), Environment::EcsOnEc2 { agent_uri, .. } if agent_uri == "http://127.0.0.1:9")
        );
    }

    #[test]
    fn fargate_needs_its_metadata_uri() {
        let i = inputs(&[
            ("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE"),
            ("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/x"),
        ]);
        assert_eq!(detect(&i), Environment::Fargate { metadata_uri: "http://169.254.170.2/v4/x".into() });
        assert_eq!(detect(&inputs(&[("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE")])), Environment::Plain);
    }

    #[test]
    fn ec2_from_task_env_or_loopback_agent() {
        let i =
            inputs(&[("AWS_EXECUTION_ENV", "AWS_ECS_EC2"), ("ECS_CONTAINER_METADATA_URI_V4", "http://x")]);
        assert!(
            matches!(detect(&i), Environment::EcsOnEc2 { agent_uri, .. } if agent_uri == DEFAULT_AGENT_URI)
        );
        let mut i = inputs(&[]);
        i.agent_on_loopback = true;
        assert!(matches!(detect(&i), Environment::EcsOnEc2 { why: "ECS agent answers on loopback", .. }));
    }
}
