//! The header parser and generator of `build.rs`, run on the host: the real
//! `eddy.h` parses into what the agent uses; a field added to the header reaches
//! the Rust mirror and its layout checks; constructs the parser does not know
//! fail with their line number instead of being skipped.

#[path = "../build/emit.rs"]
mod emit;
#[path = "../build/header.rs"]
mod header;

use header::{Len, Type, Value};

const EDDY_H: &str = include_str!("../src/bpf/eddy.h");

fn parse_err(text: &str) -> String {
    match header::parse(text) {
        Ok(h) => panic!("expected an error, parsed {h:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_real_header_parses_into_the_agents_types() {
    let h = header::parse(EDDY_H).expect("eddy.h parses");
    let names: Vec<String> = h.structs.iter().map(|s| emit::rust_name(&s.name)).collect();
    assert_eq!(names, ["Tuple", "Flow", "UdpKey", "DnsEvent", "Owner"]);
    let flow = &h.structs[1];
    assert_eq!(flow.fields[0].ty, Type::Struct("eddy_tuple".into()));
    let comm = flow.fields.iter().find(|f| f.name == "comm").expect("comm");
    assert_eq!((&comm.ty, &comm.len), (&Type::Scalar("u8"), &Some(Len::Const("EDDY_COMM_LEN".into(), 16))));
    assert_eq!(flow.fields.iter().find(|f| f.name == "sk_err").expect("sk_err").ty, Type::Scalar("i32"));
    assert_eq!(flow.fields[1].doc, ["socket cookie"]);
    assert!(flow.doc[0].starts_with("Per-connection state"), "{:?}", flow.doc);
    let paragraphs =
        header::parse("/*\n * One.\n *\n * Two.\n *\n */\nstruct eddy_p {\n\t__u8 a;\n};\n").expect("parses");
    assert_eq!(paragraphs.structs[0].doc, ["One.", "", "Two."]);
    let capture = h.defines.iter().find(|d| d.name == "EDDY_DNS_CAPTURE").expect("EDDY_DNS_CAPTURE");
    assert_eq!(capture.value, Value::Int("512".into(), 512));
    let closed = h.defines.iter().find(|d| d.name == "EDDY_MAP_CLOSED").expect("EDDY_MAP_CLOSED");
    assert_eq!(closed.value, Value::Str("\"CLOSED\"".into()));
}

#[test]
fn generated_rust_keeps_the_public_names_and_types() {
    let h = header::parse(EDDY_H).expect("eddy.h parses");
    let rs = emit::rust_types(&h);
    for want in [
        "pub struct Tuple {",
        "pub struct DnsEvent {",
        "    pub local_addr: [u8; 16],",
        "    pub tuple: Tuple,",
        "    pub comm: [u8; shared::COMM_LEN as usize],",
        "    pub payload: [u8; shared::DNS_CAPTURE as usize],",
        "    pub sk_err: i32,",
        "unsafe impl aya::Pod for Owner {}",
        "impl Default for DnsEvent {",
        "            payload: [0; shared::DNS_CAPTURE as usize],",
        "assert!(offset_of!(Flow, comm) == shared::C_OFFSETOF_EDDY_FLOW_COMM,",
    ] {
        assert!(rs.contains(want), "missing `{want}` in:\n{rs}");
    }
    let consts = emit::constants(&h);
    assert!(consts.contains("pub const MAP_CLOSED: &str = \"CLOSED\";"), "{consts}");
    assert!(consts.contains("pub const FLAG_CLOSED: u32 = 0x02;"), "{consts}");
    // An end-of-line comment, then the comment heading the group, as docs.
    let flag = "#[doc = \" the socket is gone; the record is final\"]\n#[doc = \"\"]\n#[doc = \" struct eddy_flow.flags\"]";
    assert!(consts.contains(flag), "{consts}");
}

/// The drift scenario: someone adds a field to the header, and nothing else.
#[test]
fn a_field_added_to_the_header_reaches_the_mirror_and_its_checks() {
    let edited = EDDY_H.replacen(
        "\t__u8 direction;         /* EDDY_DIR_* */",
        "\t__u32 mark;             /* new: skb mark */\n\t__u8 direction;         /* EDDY_DIR_* */",
        1,
    );
    assert_ne!(edited, EDDY_H, "the anchor line of the test is gone from eddy.h");
    let h = header::parse(&edited).expect("edited eddy.h parses");
    let rs = emit::rust_types(&h);
    assert!(rs.contains("    #[doc = \" new: skb mark\"]\n    pub mark: u32,\n    #[doc = \" EDDY_DIR_\\\\*\"]\n    pub direction: u8,"), "{rs}");
    assert!(rs.contains("offset_of!(Flow, mark) == shared::C_OFFSETOF_EDDY_FLOW_MARK"), "{rs}");
    assert!(rs.contains("size_of::<i32>() + size_of::<u32>() + size_of::<u8>()"), "{rs}");
    let c = emit::layout_program(&h, "eddy.h");
    assert!(c.contains("offsetof(struct eddy_flow, mark)"), "{c}");
    assert!(c.contains("#include \"eddy.h\""), "{c}");
}

#[test]
fn unknown_constructs_fail_with_their_line() {
    let s = |body: &str| {
        format!("#ifndef EDDY_H\n#define EDDY_H\nstruct eddy_x {{\n\t__u32 a;\n{body}\n}};\n#endif\n")
    };
    for (text, want) in [
        (s("\t__be32 b;"), "line 5: type `__be32` is not understood"),
        (s("\t__u32 b : 3;"), "line 5: bitfields are not supported"),
        (s("\t__u32 b, c;"), "line 5: one field per line"),
        (s("\t__u8 *p;"), "line 5: pointers are not supported"),
        (s("\tunion eddy_u u;"), "line 5: `union` members are not supported"),
        (s("\t__u8 b[EDDY_NOPE];"), "line 5: array length `EDDY_NOPE` is neither"),
        (s("\t__u8 b[2][2];"), "line 5: multi-dimensional arrays are not supported"),
        (s("\tstruct eddy_y y;"), "line 5: `struct eddy_y` is not defined earlier"),
        (s("\t__u32 a;"), "line 5: field `a` appears twice"),
        (s("\t__u32 b"), "line 5: a field must be one"),
        ("#include <linux/types.h>\n".into(), "line 1: not a construct build.rs understands"),
        ("union eddy_u {\n".into(), "line 1: `union` is not supported"),
        ("#define EDDY_X (1 << 3)\n".into(), "line 1: a constant must be a decimal or 0x hex integer"),
        ("#define OTHER 1\n".into(), "line 1: constants must be named `EDDY_*`"),
        ("\n#define EDDY_BIG 0x100000000\n".into(), "line 2: integer constants are `u32`"),
        ("struct eddy_x {\n\t__u8 a;\n} __attribute__((packed));\n".into(), "line 3: a struct must end"),
        ("\nstruct eddy_x {\n\t__u8 a;\n".into(), "line 2: `struct eddy_x` is not closed"),
        ("\n/* open\n *\n".into(), "line 2: the comment that starts here is not closed"),
    ] {
        let e = parse_err(&text);
        assert!(e.contains(want), "for {text:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn names_and_long_arrays() {
    assert_eq!(emit::rust_name("eddy_dns_event"), "DnsEvent");
    assert_eq!(emit::rust_name("eddy_udp_key"), "UdpKey");
    let h = header::parse("#define EDDY_N 64\nstruct eddy_big {\n\t__u8 a[EDDY_N];\n\t__u64 b[2];\n};\n")
        .expect("parses");
    let rs = emit::rust_types(&h);
    assert!(rs.contains("#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\npub struct Big {"), "{rs}");
    assert!(rs.contains("            a: [0; shared::N as usize],\n            b: [0; 2],"), "{rs}");
}
