//! The README's configuration reference, generated from the one definition (names, defaults,
//! meanings and ranges); a test keeps the README equal to it.

use serde_json::Value;

use super::layers::{ALIASES, KEYS};
use super::schema::Field;
use super::{Api, Aws, Config, Conntrack, Cost, Dns, Ecs, Fips, Otlp, Udp};

/// Where the generated table sits in the README.
pub const BEGIN: &str = "<!-- config-reference:begin (generated from agent/src/config; do not edit) -->";
pub const END: &str = "<!-- config-reference:end -->";

/// The fields of a section (`""`: the top level), in definition order.
pub fn fields(section: &str) -> &'static [Field] {
    match section {
        "udp" => Udp::FIELDS,
        "otlp" => Otlp::FIELDS,
        "ecs" => Ecs::FIELDS,
        "aws" => Aws::FIELDS,
        "fips" => Fips::FIELDS,
        "dns" => Dns::FIELDS,
        "conntrack" => Conntrack::FIELDS,
        "api" => Api::FIELDS,
        "cost" => Cost::FIELDS,
        _ => Config::FIELDS,
    }
}

fn shown_default(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "unset".into(),
        Some(Value::Array(a)) if a.is_empty() => "none".into(),
        Some(Value::Array(a)) => {
            let items: Vec<String> =
                a.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).collect();
            format!("`{}`", items.join(","))
        }
        Some(Value::Number(n)) if n.as_u64() == Some(0) => "auto".into(),
        Some(Value::String(s)) => format!("`{s}`"),
        Some(other) => format!("`{other}`"),
    }
}

/// The reference table (Markdown), one row per key.
pub fn markdown() -> String {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut out = String::from(
        "| key: file (`[section] name`), environment, flag | default | meaning |\n|---|---|---|\n",
    );
    for (name, key) in KEYS.iter() {
        let Some(field) = fields(key.section).iter().find(|f| f.name == key.field) else { continue };
        let default = if key.section.is_empty() {
            defaults.get(key.field)
        } else {
            defaults.get(key.section).and_then(|s| s.get(key.field))
        };
        let in_file = if key.section.is_empty() {
            format!("`{}`", key.field)
        } else {
            format!("`[{}] {}`", key.section, key.field)
        };
        let names: Vec<&str> = std::iter::once(*name)
            .chain(ALIASES.iter().filter(|(_, to)| to == name).map(|(a, _)| *a))
            .collect();
        let spelled: Vec<String> = names
            .iter()
            .map(|n| format!("`EDDY_{}` `--{}`", n.to_ascii_uppercase(), n.replace('_', "-")))
            .collect();
        let mut meaning = field.doc.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        if let Some((lo, hi)) = (field.range)() {
            meaning.push_str(&format!(" Range: {lo} to {hi}."));
        }
        out.push_str(&format!(
            "| {in_file}<br>{} | {} | {} |\n",
            spelled.join(" or "),
            shown_default(default),
            meaning.trim().replace('|', "\\|")
        ));
    }
    out
}

/// The README with its reference replaced by `table` (`None` when the markers are missing).
pub fn splice(readme: &str, table: &str) -> Option<String> {
    let start = readme.find(BEGIN)? + BEGIN.len();
    let end = readme[start..].find(END)? + start;
    Some(format!("{}\n{}{}", &readme[..start], table, &readme[end..]))
}

/// The doc comment of a key, on one line.
pub fn doc(key: &super::layers::Key) -> String {
    fields(key.section)
        .iter()
        .find(|f| f.name == key.field)
        .map(|f| f.doc.lines().map(str::trim).collect::<Vec<_>>().join(" ").trim().to_string())
        .unwrap_or_default()
}
