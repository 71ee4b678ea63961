//! One DNS message → what the statistics need: id, query or response, rcode, the first
//! question's name and type. The message is parsed with `simple-dns`, on a copy whose record
//! counts are cut to the question (captures stop at 512 bytes, and the answers are not
//! needed); the question name is walked first with a hop limit, because the crate follows
//! compression pointers without one.

/// Why a message is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("not exactly one question")]
    QuestionCount,
    #[error("bad question name (truncated, label too long or a compression loop)")]
    Name,
    #[error("rejected by the DNS parser")]
    Invalid,
}

/// What one message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    /// Response code (low 4 bits of the header; extended codes are not combined).
    pub rcode: u8,
    /// Lower-cased question name without the trailing dot (`.` for the root).
    pub name: String,
    pub qtype: u16,
}

const HEADER: usize = 12;
/// Compression pointers followed at most, per name.
const MAX_HOPS: usize = 16;
/// RFC 1035: 255 bytes of name on the wire.
const MAX_NAME: usize = 255;

/// Parses a DNS message (no TCP length prefix).
pub fn parse(msg: &[u8]) -> Result<Message, ParseError> {
    if msg.len() < HEADER {
        return Err(ParseError::Short);
    }
    if u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return Err(ParseError::QuestionCount);
    }
    let end = name_end(msg, HEADER)?;
    // The question: name, type, class. The copy keeps only header and question.
    let question_end = end.checked_add(4).filter(|e| *e <= msg.len()).ok_or(ParseError::Name)?;
    let mut copy = msg[..question_end].to_vec();
    copy[6..12].fill(0);
    let packet = simple_dns::Packet::parse(&copy).map_err(|_| ParseError::Invalid)?;
    let q = packet.questions.first().ok_or(ParseError::QuestionCount)?;
    let mut name = q.qname.to_string().to_ascii_lowercase();
    if name.is_empty() {
        name.push('.');
    }
    Ok(Message {
        id: packet.id(),
        response: msg[2] & 0x80 != 0,
        rcode: msg[3] & 0x0f,
        name,
        qtype: u16::from(q.qtype),
    })
}

/// Offset just past the name at `start`, checking labels, length and pointers (each must
/// point backwards, at most [`MAX_HOPS`] of them).
fn name_end(msg: &[u8], start: usize) -> Result<usize, ParseError> {
    let mut pos = start;
    let mut end = None;
    let mut hops = 0;
    let mut total = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(ParseError::Name)?;
        match len {
            0 => return Ok(end.unwrap_or(pos + 1)),
            l if l & 0xc0 == 0xc0 => {
                let low = *msg.get(pos + 1).ok_or(ParseError::Name)?;
                let target = usize::from(u16::from_be_bytes([l & 0x3f, low]));
                hops += 1;
                if target >= pos || hops > MAX_HOPS {
                    return Err(ParseError::Name);
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            l if l & 0xc0 != 0 => return Err(ParseError::Name),
            l => {
                total += usize::from(l) + 1;
                if total > MAX_NAME {
                    return Err(ParseError::Name);
                }
                pos += usize::from(l) + 1;
            }
        }
    }
}

/// `NOERROR`, `NXDOMAIN`, … (RFC 1035/2136/6891 names), else `RCODE<n>`.
pub fn rcode_name(rcode: u8) -> String {
    let known = match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => return format!("RCODE{rcode}"),
    };
    known.to_string()
}

/// `A`, `AAAA`, … for common types, else `TYPE<n>` (RFC 3597 spelling).
pub fn qtype_name(qtype: u16) -> String {
    let known = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{qtype}"),
    };
    known.to_string()
}
