//! `/flows?limit=&protocol=&task=`: which flows, and how many at most.
//!
//! `limit` (default [`DEFAULT_LIMIT`], 1–[`MAX_LIMIT`]) bounds the answer: open flows first,
//! then closed ones, newest first; `x-eddy-flows-total` (matching flows) and
//! `x-eddy-flows-truncated` say what was left out. `protocol` is `tcp` or `udp`; `task` is an
//! ECS task ARN or its id (the ARN's last path segment) and matches either end. Anything else
//! is a 400 with the reason.

use crate::flow::{FlowRecord, Protocol};

/// Flows answered when `limit` is not given (the default `closed_flow_retention`).
pub const DEFAULT_LIMIT: usize = 10_000;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 100_000;

/// A parsed `/flows` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    pub limit: usize,
    pub protocol: Option<Protocol>,
    pub task: Option<String>,
}

impl FlowQuery {
    /// From the query's `(name, value)` pairs; `Err` is the 400 message.
    pub fn parse(pairs: &[(String, String)]) -> Result<FlowQuery, String> {
        let mut q = FlowQuery { limit: DEFAULT_LIMIT, protocol: None, task: None };
        for (k, v) in pairs {
            match k.as_str() {
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit {v:?}: expected a number from 1 to {MAX_LIMIT}"))?
                }
                "protocol" => {
                    q.protocol = Some(match v.as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(format!("protocol {v:?}: expected tcp or udp")),
                    })
                }
                "task" => {
                    if v.is_empty() || v.len() > 2048 {
                        return Err("task: expected an ECS task ARN or task id".into());
                    }
                    q.task = Some(v.clone())
                }
                _ => return Err(format!("unknown parameter {k:?}: expected limit, protocol or task")),
            }
        }
        Ok(q)
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.protocol.is_none_or(|p| p == r.protocol)
            && self.task.as_deref().is_none_or(|t| {
                [&r.local, &r.remote].iter().any(|e| {
                    e.ecs.as_ref().and_then(|l| l.task_arn.as_deref()).is_some_and(|arn| {
                        arn == t || (!t.contains('/') && arn.rsplit('/').next() == Some(t))
                    })
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::EcsLabels;

    fn q(s: &[(&str, &str)]) -> Result<FlowQuery, String> {
        FlowQuery::parse(&s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
    }

    #[test]
    fn parses_defaults_and_rejects_bad_values() {
        assert_eq!(q(&[]), Ok(FlowQuery { limit: DEFAULT_LIMIT, protocol: None, task: None }));
        assert_eq!(
            q(&[("limit", "2"), ("protocol", "udp")]).map(|x| (x.limit, x.protocol)),
            Ok((2, Some(Protocol::Udp)))
        );
        for (bad, says) in [
            (("limit", "0"), "limit"),
            (("limit", "100001"), "limit"),
            (("limit", "x"), "limit"),
            (("protocol", "icmp"), "tcp or udp"),
            (("task", ""), "task"),
            (("nope", "1"), "unknown parameter"),
        ] {
            let e = q(&[bad]).expect_err("bad");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn task_matches_arn_or_id_on_either_end() {
        let arn = "arn:aws:ecs:us-east-1:123456789012:task/prod/0123abcd";
        let mut r = FlowRecord::test(Protocol::Tcp, 1, false);
        r.remote.ecs =
            Some(std::sync::Arc::new(EcsLabels { task_arn: Some(arn.into()), ..Default::default() }));
        for t in [arn, "0123abcd"] {
            assert!(q(&[("task", t)]).expect("q").matches(&r), "{t}");
        }
        for t in ["0123", "prod/0123abcd", "other"] {
            assert!(!q(&[("task", t)]).expect("q").matches(&r), "{t}");
        }
        assert!(!q(&[("protocol", "udp")]).expect("q").matches(&r));
    }
}
