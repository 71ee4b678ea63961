//! Turns a parsed `eddy.h` ([`Header`]) into generated source: the Rust constants,
//! the host C program that prints every struct's size, alignment and field offsets
//! as the C compiler lays them out, and the Rust `#[repr(C)]` mirrors with the
//! compile-time assertions that compare the two layouts.
//!
//! Naming: `struct eddy_dns_event` → `DnsEvent`, `EDDY_DNS_CAPTURE` →
//! `shared::DNS_CAPTURE`; field names are kept. Types: `__uN` → `uN`, `__sN` →
//! `iN`, `char` → `u8` (the header's `char` arrays are byte strings such as
//! `comm`), `struct eddy_x` → its mirror, `T name[N]` → `[T; N]`.

use std::fmt::Write as _;

use crate::header::{Header, Len, Struct, Type, Value};

/// Arrays longer than this have no `Default` in core: such structs get a written-out impl.
const DERIVE_DEFAULT_MAX_LEN: u64 = 32;

/// `pub const NAME: T = value;` for every `#define EDDY_NAME value`.
pub fn constants(h: &Header) -> String {
    let mut rs = String::new();
    for d in &h.defines {
        let name = const_name(&d.name);
        doc(&mut rs, "", &d.doc);
        match &d.value {
            Value::Str(lit) => line(&mut rs, format_args!("pub const {name}: &str = {lit};")),
            Value::Int(lit, _) => line(&mut rs, format_args!("pub const {name}: u32 = {lit};")),
        }
    }
    rs
}

/// A C program that prints, as Rust constants, `C_SIZEOF_<S>`, `C_ALIGNOF_<S>` and
/// `C_OFFSETOF_<S>_<FIELD>` for every struct (`<S>` = the C name in capitals).
pub fn layout_program(h: &Header, header_path: &str) -> String {
    let mut c = String::from("#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n");
    line(&mut c, format_args!("#include \"{header_path}\""));
    c.push_str("int main(void) {\n");
    for s in &h.structs {
        let (name, up) = (&s.name, s.name.to_uppercase());
        let print = |c: &mut String, konst: &str, expr: &str| {
            line(c, format_args!("printf(\"pub const {konst}: usize = %zu;\\n\", (size_t)({expr}));"));
        };
        print(&mut c, &format!("C_SIZEOF_{up}"), &format!("sizeof(struct {name})"));
        print(&mut c, &format!("C_ALIGNOF_{up}"), &format!("_Alignof(struct {name})"));
        for f in &s.fields {
            let konst = format!("C_OFFSETOF_{up}_{}", f.name.to_uppercase());
            print(&mut c, &konst, &format!("offsetof(struct {name}, {})", f.name));
        }
    }
    c.push_str("return 0;\n}\n");
    c
}

/// The Rust mirrors of every struct, their layout assertions and `aya::Pod` impls.
pub fn rust_types(h: &Header) -> String {
    let mut rs = String::new();
    for s in &h.structs {
        mirror(&mut rs, s);
        checks(&mut rs, s);
    }
    rs
}

fn mirror(rs: &mut String, s: &Struct) {
    let name = rust_name(&s.name);
    let mut docs = s.doc.clone();
    if !docs.is_empty() {
        docs.push(String::new());
    }
    docs.push(format!("Generated from `struct {}` in `src/bpf/eddy.h`.", s.name));
    doc(rs, "", &docs);
    let long = s.fields.iter().any(|f| f.len.as_ref().is_some_and(|l| len_value(l) > DERIVE_DEFAULT_MAX_LEN));
    let default = if long { "" } else { "Default, " };
    line(rs, format_args!("#[repr(C)]\n#[derive(Clone, Copy, Debug, {default}PartialEq, Eq, Hash)]"));
    line(rs, format_args!("pub struct {name} {{"));
    for f in &s.fields {
        doc(rs, "    ", &f.doc);
        line(rs, format_args!("    pub {}: {},", f.name, field_type(&f.ty, f.len.as_ref())));
    }
    rs.push_str("}\n\n");
    if long {
        line(rs, format_args!("impl Default for {name} {{\n    fn default() -> Self {{\n        Self {{"));
        for f in &s.fields {
            let zero = match (&f.ty, &f.len) {
                (Type::Scalar(_), None) => "0".to_string(),
                (Type::Struct(_), None) => "Default::default()".to_string(),
                (Type::Scalar(_), Some(l)) => format!("[0; {}]", len_expr(l)),
                (Type::Struct(_), Some(l)) => format!("[Default::default(); {}]", len_expr(l)),
            };
            line(rs, format_args!("            {}: {zero},", f.name));
        }
        rs.push_str("        }\n    }\n}\n\n");
    }
    line(rs, format_args!("#[cfg(feature = \"user\")]"));
    line(
        rs,
        format_args!(
            "// SAFETY: `{name}` is `#[repr(C)]` integers, integer arrays and other such structs, so"
        ),
    );
    line(rs, format_args!("// every bit pattern is valid; the assertions below rule out implicit padding."));
    line(rs, format_args!("unsafe impl aya::Pod for {name} {{}}\n"));
}

/// Size, alignment and every offset equal to the C compiler's, and no implicit padding.
fn checks(rs: &mut String, s: &Struct) {
    let (name, c, up) = (rust_name(&s.name), &s.name, s.name.to_uppercase());
    line(rs, format_args!("const _: () = {{\n    use core::mem::{{align_of, offset_of, size_of}};"));
    let check = |rs: &mut String, lhs: &str, konst: &str, what: &str| {
        line(
            rs,
            format_args!(
                "    assert!({lhs} == shared::{konst}, \"{what} differs from struct {c} in eddy.h\");"
            ),
        );
    };
    check(rs, &format!("size_of::<{name}>()"), &format!("C_SIZEOF_{up}"), &format!("size of {name}"));
    check(rs, &format!("align_of::<{name}>()"), &format!("C_ALIGNOF_{up}"), &format!("alignment of {name}"));
    for f in &s.fields {
        let konst = format!("C_OFFSETOF_{up}_{}", f.name.to_uppercase());
        let what = format!("offset of {name}.{}", f.name);
        check(rs, &format!("offset_of!({name}, {})", f.name), &konst, &what);
    }
    let sum: Vec<String> =
        s.fields.iter().map(|f| format!("size_of::<{}>()", field_type(&f.ty, f.len.as_ref()))).collect();
    line(rs, format_args!("    assert!(\n        size_of::<{name}>() == {},", sum.join(" + ")));
    line(rs, format_args!("        \"struct {c} has implicit padding: add explicit _pad fields in eddy.h\""));
    rs.push_str("    );\n};\n\n");
}

/// `eddy_dns_event` → `DnsEvent`.
pub fn rust_name(c_name: &str) -> String {
    let base = c_name.strip_prefix("eddy_").unwrap_or(c_name);
    base.split('_')
        .map(|w| {
            let mut ch = w.chars();
            ch.next().map(|f| f.to_ascii_uppercase().to_string() + ch.as_str()).unwrap_or_default()
        })
        .collect()
}

fn const_name(c_name: &str) -> &str {
    c_name.strip_prefix("EDDY_").unwrap_or(c_name)
}

fn field_type(ty: &Type, len: Option<&Len>) -> String {
    let elem = match ty {
        Type::Scalar(rust) => rust.to_string(),
        Type::Struct(s) => rust_name(s),
    };
    match len {
        Some(l) => format!("[{elem}; {}]", len_expr(l)),
        None => elem,
    }
}

fn len_expr(l: &Len) -> String {
    match l {
        Len::Number(n) => n.to_string(),
        Len::Const(name, _) => format!("shared::{} as usize", const_name(name)),
    }
}

fn len_value(l: &Len) -> u64 {
    match l {
        Len::Number(n) | Len::Const(_, n) => *n,
    }
}

/// `#[doc = " text"]` per line (what `///` expands to). C comments are not Markdown:
/// `CONFIG[0]` would be a broken link and `EDDY_DIR_*` start emphasis, so `[ ] * < >`
/// are escaped (backquoted code stays code).
fn doc(rs: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let mut text = String::with_capacity(l.len() + 1);
        if !l.is_empty() {
            text.push(' ');
        }
        let mut code = false;
        for c in l.chars() {
            code ^= c == '`';
            if !code && matches!(c, '[' | ']' | '*' | '<' | '>' | '\\') {
                text.push('\\');
            }
            text.push(c);
        }
        line(rs, format_args!("{indent}#[doc = {text:?}]"));
    }
}

fn line(s: &mut String, args: std::fmt::Arguments<'_>) {
    s.write_fmt(args).expect("formatting into a String cannot fail");
    s.push('\n');
}
