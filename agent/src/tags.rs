//! Static tags (`tags`, `EDDY_TAGS=env:prod,team:payments`): `key:value` pairs set per
//! deployment and carried by every record — flow and aggregate JSON lines and `/flows`
//! (a `tags` object), every `/metrics` sample (extra labels) and the OTLP resource
//! (attributes).
//!
//! Keys must be valid label names (`[a-z_][a-z0-9_]*`, at most 64 characters) that no
//! Eddy metric uses already; values are at most 256 printable characters; at most
//! [`MAX_TAGS`] tags.

use std::collections::BTreeMap;

use serde::Serialize;

/// Tags per deployment, at most.
pub const MAX_TAGS: usize = 32;

/// Label names Eddy's own metrics use; a tag may not shadow them.
const RESERVED: &[&str] = &[
    "protocol",
    "family",
    "direction",
    "local_addr",
    "remote_addr",
    "server_port",
    "local_task",
    "local_container",
    "remote_task",
    "remote_container",
    "reason",
    "le",
    "quantile",
    "cause",
    "event",
    "map",
    "capability",
    "hook",
    "result",
    "version",
    "collector",
    "provider",
    "job",
    "instance",
    "tags",
];

/// Parsed, validated tags (sorted by key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(pub BTreeMap<String, String>);

impl Tags {
    /// Parses `key:value` entries; the error says which entry and why.
    pub fn parse(entries: &[String]) -> Result<Tags, String> {
        let mut tags = BTreeMap::new();
        for e in entries {
            let (k, v) = e.split_once(':').ok_or_else(|| format!("tag {e:?} is not key:value"))?;
            let (k, v) = (k.trim(), v.trim());
            let key_ok = k.len() <= 64
                && k.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !key_ok {
                return Err(format!("tag key {k:?} must match [a-z_][a-z0-9_]* (at most 64 characters)"));
            }
            if RESERVED.contains(&k) {
                return Err(format!("tag key {k:?} is a label Eddy uses itself; choose another"));
            }
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                return Err(format!("tag {k:?}: value must be 1-256 printable characters"));
            }
            if tags.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("tag key {k:?} given twice"));
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(format!("{} tags given; at most {MAX_TAGS}", tags.len()));
        }
        Ok(Tags(tags))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A record with the deployment's tags beside its own fields.
#[derive(Serialize)]
pub struct Tagged<'a, T: Serialize> {
    #[serde(flatten)]
    pub record: &'a T,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    pub tags: &'a Tags,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Tags, String> {
        Tags::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_and_rejects() {
        let t = parse(&["env:prod", " team : payments "]).expect("valid");
        assert_eq!(t.0.get("team").map(String::as_str), Some("payments"));
        assert!(parse(&["env"]).is_err_and(|e| e.contains("key:value")));
        assert!(parse(&["Env:prod"]).is_err_and(|e| e.contains("[a-z_]")));
        assert!(parse(&["protocol:x"]).is_err_and(|e| e.contains("uses itself")));
        assert!(parse(&["env:"]).is_err());
        assert!(parse(&["env:a", "env:b"]).is_err_and(|e| e.contains("twice")));
        assert_eq!(parse(&["url:http://x:80"]).expect("colons in values").0["url"], "http://x:80");
    }

    #[test]
    fn tagged_records_carry_a_tags_object_only_when_there_are_tags() {
        #[derive(Serialize)]
        struct R {
            a: u8,
        }
        let t = parse(&["env:prod"]).expect("valid");
        let v = serde_json::to_value(Tagged { record: &R { a: 1 }, tags: &t }).expect("json");
        assert_eq!(v, serde_json::json!({"a": 1, "tags": {"env": "prod"}}));
        let v = serde_json::to_value(Tagged { record: &R { a: 1 }, tags: &Tags::default() }).expect("json");
        assert_eq!(v, serde_json::json!({"a": 1}));
    }
}
