//! Folds the layers (file, `EDDY_*` environment, flags) into one JSON tree shaped like
//! [`Config`], which serde reads once; errors name the key and where its value came from.
//!
//! The keys come from the definition itself (the serialized default configuration): a
//! section's field `timeout` in `otlp` has the flat name `otlp_timeout`, spelled
//! `EDDY_OTLP_TIMEOUT` in the environment and `--otlp-timeout` as a flag. Strings from the
//! environment and flags take the type of the key's default: `true/false/1/0/yes/no/on/off`
//! for booleans, numbers (with `_` separators) for integers, comma-separated lists; an empty
//! value means the default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::schema::flat;
use super::{Config, ConfigError};

/// The shorter names kept from the flat configuration of earlier versions.
pub const ALIASES: &[(&str, &str)] =
    &[("udp", "udp_enabled"), ("dns", "dns_enabled"), ("conntrack", "conntrack_enabled")];

/// What a string from the environment or a flag becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Integer,
    Float,
    List,
    Text,
}

/// One key: where it sits in the tree and its kind.
#[derive(Clone, Debug)]
pub struct Key {
    /// `""` for top-level keys.
    pub section: &'static str,
    pub field: &'static str,
    pub kind: Kind,
}

/// Every key by flat name, in definition order.
pub static KEYS: LazyLock<Vec<(&'static str, Key)>> = LazyLock::new(|| {
    let tree = serde_json::to_value(Config::default()).unwrap_or_default();
    let kind = |v: &Value| match v {
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_f64() => Kind::Float,
        Value::Number(_) => Kind::Integer,
        Value::Array(_) => Kind::List,
        _ => Kind::Text,
    };
    let leak = |s: String| -> &'static str { s.leak() };
    let mut keys = Vec::new();
    for f in Config::FIELDS {
        match tree.get(f.name) {
            Some(Value::Object(values)) => {
                let section: &'static str = f.name;
                for field in super::reference::fields(section) {
                    if let Some(v) = values.get(field.name) {
                        let k = Key { section, field: field.name, kind: kind(v) };
                        keys.push((leak(flat(section, field.name)), k));
                    }
                }
            }
            Some(v) => keys.push((f.name, Key { section: "", field: f.name, kind: kind(v) })),
            None => {}
        }
    }
    keys
});

/// The key a flat name (or alias) denotes.
pub fn key(name: &str) -> Option<(&'static str, &'static Key)> {
    let name = ALIASES.iter().find(|(a, _)| *a == name).map_or(name, |(_, to)| to);
    KEYS.iter().find(|(n, _)| *n == name).map(|(n, k)| (*n, k))
}

/// The tree being folded, and where each value came from (for errors).
#[derive(Debug, Default)]
pub struct Tree {
    root: Map<String, Value>,
    /// flat name → (origin, value as given)
    origins: BTreeMap<String, (String, String)>,
    file: Option<PathBuf>,
}

impl Tree {
    /// The file layer: sections as tables; flat names at the top are moved into theirs.
    pub fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let parse = |message: String| ConfigError::Parse { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        let value = serde_json::to_value(table).map_err(|e| parse(e.to_string()))?;
        let Value::Object(top) = value else { return Err(parse("not a table".into())) };
        for (name, v) in top {
            match (v, key(&name)) {
                // A section (`[otlp]`): merged with what is there.
                (Value::Object(add), _) => match self.root.get_mut(&name) {
                    Some(Value::Object(have)) => have.extend(add),
                    _ => drop(self.root.insert(name, Value::Object(add))),
                },
                // A flat name at the top (`otlp_timeout`, or `dns` for `[dns] enabled`).
                (v, Some((_, k))) if !k.section.is_empty() => self.put(k, v),
                (v, _) => drop(self.root.insert(name, v)),
            }
        }
        self.file = Some(path.to_path_buf());
        Ok(())
    }

    /// `EDDY_<FLAT NAME>=value`.
    pub fn env(&mut self, var: &str, value: &str) -> Result<(), ConfigError> {
        let name = var.strip_prefix("EDDY_").unwrap_or(var).to_ascii_lowercase();
        let Some((_, k)) = key(&name) else {
            let known: Vec<String> =
                KEYS.iter().map(|(n, _)| format!("EDDY_{}", n.to_ascii_uppercase())).collect();
            return Err(ConfigError::UnknownEnv { var: var.to_string(), known: known.join(", ") });
        };
        self.set(k, &name, value, format!("environment {var}"))
    }

    /// `--flat-name value`.
    pub fn flag(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let origin = format!("flag --{}", name.replace('_', "-"));
        let Some((_, k)) = key(name) else {
            return Err(ConfigError::Invalid {
                origin,
                key: name.to_string(),
                value: value.to_string(),
                reason: "unknown key".into(),
            });
        };
        self.set(k, name, value, origin)
    }

    fn put(&mut self, k: &Key, v: Value) {
        if k.section.is_empty() {
            self.root.insert(k.field.to_string(), v);
            return;
        }
        let section = self.root.entry(k.section).or_insert_with(|| Value::Object(Map::new()));
        if !section.is_object() {
            *section = Value::Object(Map::new());
        }
        if let Value::Object(m) = section {
            m.insert(k.field.to_string(), v);
        }
    }

    fn remove(&mut self, k: &Key) {
        match (k.section.is_empty(), self.root.get_mut(k.section)) {
            (true, _) => drop(self.root.remove(k.field)),
            (false, Some(Value::Object(m))) => drop(m.remove(k.field)),
            _ => {}
        }
    }

    /// Sets a key from its string form, typed by its default.
    fn set(&mut self, k: &Key, name: &str, value: &str, origin: String) -> Result<(), ConfigError> {
        let flat_name = flat(k.section, k.field);
        let bad = |reason: &str| ConfigError::Invalid {
            origin: origin.clone(),
            key: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let v = value.trim();
        let typed = if v.is_empty() {
            None
        } else {
            Some(match k.kind {
                Kind::Bool => Value::Bool(super::boolean(v).ok_or_else(|| bad("expected true or false"))?),
                Kind::Integer => {
                    let n: u64 = v
                        .replace('_', "")
                        .parse()
                        .map_err(|e: std::num::ParseIntError| bad(&e.to_string()))?;
                    Value::from(n)
                }
                Kind::Float => {
                    let n: f64 = v.parse().map_err(|_| bad("expected a number, e.g. 5 or 0.5"))?;
                    serde_json::Number::from_f64(n)
                        .map(Value::Number)
                        .ok_or_else(|| bad("not a finite number"))?
                }
                Kind::List => Value::Array(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::from(s.to_string()))
                        .collect(),
                ),
                Kind::Text => Value::from(v.to_string()),
            })
        };
        match typed {
            Some(t) => self.put(k, t),
            None => self.remove(k),
        }
        self.origins.insert(flat_name, (origin, value.to_string()));
        Ok(())
    }

    /// Reads the folded tree into the typed configuration.
    pub fn read(self) -> Result<Config, ConfigError> {
        let Tree { root, origins, file } = self;
        serde_path_to_error::deserialize(Value::Object(root)).map_err(|e| {
            let segments: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
            let name = match segments.as_slice() {
                [section, field, ..] => flat(section, field),
                [one] => one.clone(),
                [] => String::new(),
            };
            let reason = e.into_inner().to_string();
            match origins.get(&name) {
                Some((origin, value)) => {
                    ConfigError::Invalid { origin: origin.clone(), key: name, value: value.clone(), reason }
                }
                None => {
                    let message = if name.is_empty() { reason } else { format!("{name}: {reason}") };
                    match file {
                        Some(path) => ConfigError::Parse { path, message },
                        None => ConfigError::Validation(message),
                    }
                }
            }
        })
    }
}
