//! A small, strict parser for the subset of C that `src/bpf/eddy.h` uses, so that
//! the header is the one source of the shared types (`build.rs` generates the
//! C layout probe and the Rust mirrors from what this returns).
//!
//! Accepted, one construct per line: blank lines; `/* ... */` comments (also
//! spanning lines) and `//` comments; the include guard (`#ifndef X`, `#define X`,
//! `#endif`); `#define EDDY_NAME value` with a decimal or hex integer or a string
//! literal; `struct eddy_name {` ... `};` whose fields are `type name;` or
//! `type name[N];`, with `type` one of the fixed-width kernel types (`__u8` ...
//! `__s64`), `char`, or an earlier `struct eddy_*`, and `N` a number or an
//! integer `EDDY_*` constant. A comment just above a struct (no blank line
//! between) documents it; a comment at the end of a line, or on its own lines
//! just above a field, documents that constant or field.
//!
//! Everything else (unions, enums, typedefs, bitfields, pointers, several
//! declarators on one line, expressions, other preprocessor directives) is an
//! error naming the line: nothing is skipped silently.

use std::collections::HashMap;

/// What `eddy.h` declares, in order.
#[derive(Debug, Default)]
pub struct Header {
    pub defines: Vec<Define>,
    pub structs: Vec<Struct>,
}

/// `#define EDDY_NAME value`.
#[derive(Debug)]
pub struct Define {
    /// The C name, `EDDY_` included.
    pub name: String,
    pub value: Value,
    pub doc: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The literal as written (`0x10`, `512`) and its value.
    Int(String, u64),
    /// The literal as written, quotes included.
    Str(String),
}

/// `struct eddy_name { ... };`.
#[derive(Debug)]
pub struct Struct {
    /// The C name without `struct` (`eddy_flow`).
    pub name: String,
    pub doc: Vec<String>,
    pub fields: Vec<Field>,
}

#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    /// `Some` for an array.
    pub len: Option<Len>,
    pub doc: Vec<String>,
}

/// A field's element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// A fixed-width integer (or `char`), by its Rust type (`u8`, `i32`).
    Scalar(&'static str),
    /// An earlier struct of the header, by C name (`eddy_tuple`).
    Struct(String),
}

/// An array length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Len {
    Number(u64),
    /// An integer `#define`: its C name and value.
    Const(String, u64),
}

/// The scalar types accepted: C spelling → Rust type. `char` arrays in the header are
/// byte strings (`comm`), hence `u8` whatever the C compiler's `char` signedness.
pub const SCALARS: &[(&str, &str)] = &[
    ("__u8", "u8"),
    ("__u16", "u16"),
    ("__u32", "u32"),
    ("__u64", "u64"),
    ("__s8", "i8"),
    ("__s16", "i16"),
    ("__s32", "i32"),
    ("__s64", "i64"),
    ("char", "u8"),
];

/// Parses the header text; `Err` says which line (1-based) and why.
pub fn parse(text: &str) -> Result<Header, String> {
    let mut p = Parser::default();
    for (i, raw) in text.lines().enumerate() {
        p.lineno = i + 1;
        p.line(raw).map_err(|e| format!("eddy.h line {}: {e}: `{}`", i + 1, raw.trim()))?;
    }
    if p.in_comment {
        return Err(format!("eddy.h line {}: the comment that starts here is not closed", p.comment_at));
    }
    if let Some(s) = p.open {
        return Err(format!("eddy.h line {}: `struct {}` is not closed with `}};`", p.open_at, s.name));
    }
    Ok(p.header)
}

#[derive(Default)]
struct Parser {
    header: Header,
    /// Comment lines waiting for the item they document.
    pending: Vec<String>,
    /// The comment above the current group of constants (until a blank line).
    group: Vec<String>,
    in_comment: bool,
    guard: Option<String>,
    /// The struct being read.
    open: Option<Struct>,
    /// The line being read, and where the open comment and struct started (for errors).
    lineno: usize,
    comment_at: usize,
    open_at: usize,
    ints: HashMap<String, u64>,
}

impl Parser {
    fn line(&mut self, raw: &str) -> Result<(), String> {
        let line = raw.trim();
        if self.in_comment {
            let (text, closed) = match line.split_once("*/") {
                Some((text, rest)) if rest.trim().is_empty() => (text, true),
                Some(_) => return Err("code after the end of a comment".into()),
                None => (line, false),
            };
            self.comment_text(text);
            self.in_comment = !closed;
            return Ok(());
        }
        if line.is_empty() {
            self.pending.clear();
            self.group.clear();
            return Ok(());
        }
        if let Some(body) = line.strip_prefix("/*") {
            match body.split_once("*/") {
                Some((text, rest)) if rest.trim().is_empty() => self.comment_text(text),
                Some(_) => return Err("code after a comment on the same line".into()),
                None => {
                    self.comment_text(body);
                    self.in_comment = true;
                    self.comment_at = self.lineno;
                }
            }
            return Ok(());
        }
        if let Some(text) = line.strip_prefix("//") {
            self.comment_text(text);
            return Ok(());
        }
        let (code, trailing) = split_trailing_comment(line)?;
        let mut above = std::mem::take(&mut self.pending);
        if above.last().is_some_and(String::is_empty) {
            above.pop();
        }
        if self.open.is_some() {
            self.struct_line(code, trailing.map_or(above, |t| vec![t]))
        } else {
            self.top_line(code, above, trailing)
        }
    }

    /// One line of comment text, without the `*` that starts a continuation line; an
    /// empty line inside a comment separates paragraphs.
    fn comment_text(&mut self, text: &str) {
        let t = text.trim();
        let t = t.strip_prefix('*').map_or(t, str::trim);
        if t.starts_with("SPDX-License-Identifier") {
            return;
        }
        if !t.is_empty() {
            self.pending.push(t.to_string());
        } else if self.pending.last().is_some_and(|l| !l.is_empty()) {
            self.pending.push(String::new());
        }
    }

    /// A line outside structs. A comment above a struct is its doc; a comment above a
    /// constant heads the group of constants down to the next blank line, and is a
    /// second paragraph of each one's doc after its own end-of-line comment.
    fn top_line(&mut self, code: &str, above: Vec<String>, trailing: Option<String>) -> Result<(), String> {
        let words: Vec<&str> = code.split_whitespace().collect();
        match words.as_slice() {
            ["#ifndef", name] if self.guard.is_none() => {
                self.guard = Some(name.to_string());
                Ok(())
            }
            ["#define", name] if self.guard.as_deref() == Some(*name) => Ok(()),
            ["#endif"] => Ok(()),
            ["#define", name, ..] => {
                if !above.is_empty() {
                    self.group = above;
                }
                let mut doc: Vec<String> = trailing.into_iter().collect();
                if !self.group.is_empty() {
                    if !doc.is_empty() {
                        doc.push(String::new());
                    }
                    doc.extend(self.group.iter().cloned());
                }
                self.define(name, code, doc)
            }
            ["struct", name, "{"] => {
                let name = name.to_string();
                if !name.starts_with("eddy_") || !is_ident(&name) {
                    return Err("struct names must be `eddy_*` identifiers".into());
                }
                if self.header.structs.iter().any(|s| s.name == name) {
                    return Err(format!("`struct {name}` is defined twice"));
                }
                self.group.clear();
                let doc = above.into_iter().chain(trailing).collect();
                self.open = Some(Struct { name, doc, fields: Vec::new() });
                self.open_at = self.lineno;
                Ok(())
            }
            ["struct", ..] => Err("expected `struct eddy_name {` on one line".into()),
            [first, ..] if ["union", "enum", "typedef"].contains(first) => {
                Err(format!("`{first}` is not supported: the shared types are plain structs"))
            }
            _ => Err("not a construct build.rs understands (see agent-ebpf/build/header.rs)".into()),
        }
    }

    fn define(&mut self, name: &str, code: &str, doc: Vec<String>) -> Result<(), String> {
        if !name.starts_with("EDDY_") || !is_ident(name) {
            return Err("constants must be named `EDDY_*`".into());
        }
        if self.header.defines.iter().any(|d| d.name == name) {
            return Err(format!("`{name}` is defined twice"));
        }
        let rest = code.trim_start_matches("#define").trim_start()[name.len()..].trim();
        let value = if let Some(s) = rest.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            if s.contains(['"', '\\']) {
                return Err("string constants may not contain quotes or backslashes".into());
            }
            Value::Str(rest.to_string())
        } else {
            let n = parse_int(rest).ok_or("a constant must be a decimal or 0x hex integer, or a string")?;
            if n > u64::from(u32::MAX) {
                return Err("integer constants are `u32` on the Rust side: this one does not fit".into());
            }
            self.ints.insert(name.to_string(), n);
            Value::Int(rest.to_string(), n)
        };
        self.header.defines.push(Define { name: name.to_string(), value, doc });
        Ok(())
    }

    fn struct_line(&mut self, code: &str, doc: Vec<String>) -> Result<(), String> {
        if code == "};" {
            let s = self.open.take().ok_or("`};` outside a struct")?;
            if s.fields.is_empty() {
                return Err(format!("`struct {}` has no fields", s.name));
            }
            self.header.structs.push(s);
            return Ok(());
        }
        if code.starts_with('}') {
            return Err("a struct must end with a bare `};` (no attributes or declarators)".into());
        }
        let decl = code.strip_suffix(';').ok_or("a field must be one `type name;` or `type name[N];`")?;
        for (c, why) in [
            (':', "bitfields are not supported"),
            (',', "one field per line"),
            ('*', "pointers are not supported"),
            ('(', "attributes and function pointers are not supported"),
            ('{', "nested definitions are not supported: define the struct first"),
        ] {
            if decl.contains(c) {
                return Err(why.into());
            }
        }
        let (decl, len) = match decl.split_once('[') {
            Some((d, l)) => (d, Some(self.len(l)?)),
            None => (decl, None),
        };
        let words: Vec<&str> = decl.split_whitespace().collect();
        let (ty, name) = match words.as_slice() {
            ["struct", s, name] => {
                if !self.header.structs.iter().any(|d| d.name == *s) {
                    return Err(format!("`struct {s}` is not defined earlier in eddy.h"));
                }
                (Type::Struct(s.to_string()), *name)
            }
            [t, name] => match SCALARS.iter().find(|(c, _)| c == t) {
                Some(&(_, rust)) => (Type::Scalar(rust), *name),
                None => {
                    let known: Vec<&str> = SCALARS.iter().map(|(c, _)| *c).collect();
                    return Err(format!("type `{t}` is not understood (use one of {})", known.join(" ")));
                }
            },
            [first, ..] if ["union", "enum"].contains(first) => {
                return Err(format!("`{first}` members are not supported"));
            }
            _ => return Err("a field must be one `type name;` or `type name[N];`".into()),
        };
        if !is_ident(name) {
            return Err(format!("`{name}` is not a field name"));
        }
        let open = self.open.as_mut().ok_or("field outside a struct")?;
        if open.fields.iter().any(|f| f.name == name) {
            return Err(format!("field `{name}` appears twice"));
        }
        open.fields.push(Field { name: name.to_string(), ty, len, doc });
        Ok(())
    }

    /// The text after `[`: `N]` or `EDDY_CONST]`.
    fn len(&self, text: &str) -> Result<Len, String> {
        let inner = text.strip_suffix(']').ok_or("an array length must be `[N]`, one dimension")?.trim();
        if inner.contains(['[', ']']) {
            return Err("multi-dimensional arrays are not supported".into());
        }
        if let Some(n) = parse_int(inner) {
            return Ok(Len::Number(n));
        }
        match self.ints.get(inner) {
            Some(&n) => Ok(Len::Const(inner.to_string(), n)),
            None => Err(format!(
                "array length `{inner}` is neither a number nor an earlier integer EDDY_* constant"
            )),
        }
    }
}

/// Splits `code /* comment */` (or `code // comment`) into the code and the comment text.
fn split_trailing_comment(line: &str) -> Result<(&str, Option<String>), String> {
    if let Some((code, rest)) = line.split_once("/*") {
        let text =
            rest.trim_end().strip_suffix("*/").ok_or("a comment after code must end on the same line")?;
        if text.contains("*/") {
            return Err("code after a comment on the same line".into());
        }
        return Ok((code.trim(), Some(text.trim().to_string()).filter(|t| !t.is_empty())));
    }
    if let Some((code, text)) = line.split_once("//") {
        return Ok((code.trim(), Some(text.trim().to_string()).filter(|t| !t.is_empty())));
    }
    Ok((line, None))
}

fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

fn is_ident(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}
