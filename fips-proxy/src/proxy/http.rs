//! HTTP routes: the client speaks plain HTTP/1.x to the local port; the proxy reads the request
//! head, rewrites it for the upstream and forwards everything else untouched over TLS.
//!
//! Rewrites: `Host` becomes the upstream's name (`server_name[:port]`); an absolute-form target
//! (`http://host/path`) becomes origin-form (`/path`); hop-by-hop headers (RFC 9110 §7.6.1:
//! `Connection`, `Keep-Alive`, `Proxy-Connection`, `Upgrade`, `TE`, `Trailer`,
//! `Proxy-Authenticate`, `Proxy-Authorization`, and every header named in a `Connection` or
//! `Proxy-Connection` header) are dropped and `Connection: close` is sent, so each client
//! connection carries one request. The framing headers `Content-Length` and `Transfer-Encoding`
//! are always forwarded (the body is relayed untouched, so the upstream needs them), even when a
//! `Connection` header names them; `Host` is always replaced.
//!
//! Answers of the proxy itself (text/plain body saying why, header `x-eddy-fips-proxy: error`):
//! 400 bad request head, 431 head over 64 KiB, 502 TLS handshake or certificate failure, 503
//! upstream unreachable, route unconfigured or connection limit reached.
//!
//! Limits: HTTP/1.x only (no HTTP/2 prior knowledge, no CONNECT); one request per connection.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::limits::Meter;
use super::{Route, record_failure, upstream};
use crate::config::Upstream;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];
/// Never dropped on a `Connection` header's say-so: the relayed body depends on them.
const FRAMING: &[&str] = &["content-length", "transfer-encoding"];

/// Why a request head is refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a complete request head")]
    Closed,
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves one client connection of an HTTP route.
/// Every byte read (from the client and the upstream) is added to `meter`.
pub async fn handle(mut client: TcpStream, route: &Route, meter: &Meter) {
    let name = &route.stats.name;
    let (buf, head_len) = match read_head(&mut client, route.idle_timeout, meter).await {
        Ok(h) => h,
        Err(HeadError::Closed) => return,
        Err(e) => {
            let code = if matches!(e, HeadError::TooLarge) { 431 } else { 400 };
            tracing::info!(route = %name, error = %e, "bad request from client");
            respond(client, code, &format!("eddy-fips-proxy: {e}\n")).await;
            return;
        }
    };
    let Some(up) = &route.upstream else {
        let e = upstream::UpstreamError::Unconfigured;
        record_failure(route, &e);
        respond(client, 503, &format!("eddy-fips-proxy: route {name}: {e}\n")).await;
        return;
    };
    let head = match rewrite(&buf[..head_len], up) {
        Ok(h) => h,
        Err(e) => {
            respond(client, 400, &format!("eddy-fips-proxy: {e}\n")).await;
            return;
        }
    };
    let mut tls = match upstream::connect(route).await {
        Ok(t) => t,
        Err(e) => {
            record_failure(route, &e);
            let code = if e.is_tls() { 502 } else { 503 };
            respond(client, code, &format!("eddy-fips-proxy: route {name}: {e}\n")).await;
            return;
        }
    };
    let first = [head.as_slice(), &buf[head_len..]].concat();
    if let Err(e) = tls.write_all(&first).await {
        record_failure(route, &upstream::UpstreamError::Connect { addr: up.authority(), source: e });
        respond(client, 503, &format!("eddy-fips-proxy: route {name}: upstream closed the connection\n"))
            .await;
        return;
    }
    route.stats.bytes_to_upstream.fetch_add(first.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let (sent, received) = upstream::relay(client, tls, route, meter).await;
    tracing::debug!(route = %name, bytes_up = sent + first.len() as u64, bytes_down = received, "request done");
}

/// Reads until a complete request head; returns the buffer and the head's length.
async fn read_head(
    client: &mut TcpStream,
    timeout: Duration,
    meter: &Meter,
) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => return Ok(n),
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(HeadError::Malformed(e.to_string())),
            }
            if buf.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Err(HeadError::Closed);
            }
            meter.add(n);
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let n = tokio::time::timeout(timeout, read).await.map_err(|_| HeadError::Timeout(timeout))??;
    Ok((buf, n))
}

/// The request head as sent upstream.
pub fn rewrite(head: &[u8], up: &Upstream) -> Result<Vec<u8>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(head).map_err(|e| HeadError::Malformed(e.to_string()))?;
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let target = origin_form(target);
    let mut out = Vec::with_capacity(head.len() + 64);
    out.extend_from_slice(format!("{method} {target} HTTP/1.{version}\r\n").as_bytes());
    out.extend_from_slice(format!("Host: {}\r\n", up.host_header()).as_bytes());
    let named = connection_tokens(req.headers);
    for h in req.headers.iter() {
        let framing = FRAMING.iter().any(|f| h.name.eq_ignore_ascii_case(f));
        if HOP_BY_HOP.iter().any(|hop| h.name.eq_ignore_ascii_case(hop))
            || (!framing && named.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(out)
}

/// Header names listed in `Connection` (and the legacy `Proxy-Connection`) headers: hop-by-hop
/// by RFC 9110 §7.6.1. Values that are not UTF-8 name nothing.
fn connection_tokens<'a>(headers: &[httparse::Header<'a>]) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("connection") || h.name.eq_ignore_ascii_case("proxy-connection")
        })
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// `http://host:port/path?q` → `/path?q`; origin-form targets are kept.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) else {
        return target;
    };
    match rest.find('/') {
        Some(i) => &rest[i..],
        None => "/",
    }
}

/// Answers the client with `code` and a text body, then closes (after draining briefly, so the
/// answer is not lost to a reset when the client is still sending).
pub async fn respond(mut client: TcpStream, code: u16, body: &str) {
    let reason = match code {
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\nx-eddy-fips-proxy: error\r\n\r\n{body}",
        body.len()
    );
    if client.write_all(msg.as_bytes()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The 503 for a connection over the route's limit.
pub async fn refuse_over_limit(client: TcpStream, limit: usize) {
    respond(
        client,
        503,
        &format!("eddy-fips-proxy: connection limit of this route ({limit}) reached; retry later\n"),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteKind;

    fn up(port: u16) -> Upstream {
        Upstream {
            kind: RouteKind::Http,
            host: "10.0.0.1".into(),
            port,
            server_name: "collector.example".into(),
            ca_file: None,
        }
    }

    #[test]
    fn host_rewritten_hop_by_hop_dropped_close_added() {
        let head = b"POST http://127.0.0.1:9804/v1/metrics HTTP/1.1\r\nHost: 127.0.0.1:9804\r\n\
                     Connection: keep-alive\r\nContent-Length: 3\r\nX-A: b\r\n\r\n";
        let out = String::from_utf8(rewrite(head, &up(4318)).expect("rewrite")).expect("utf8");
        assert_eq!(
            out,
            "POST /v1/metrics HTTP/1.1\r\nHost: collector.example:4318\r\nContent-Length: 3\r\nX-A: b\r\n\
             Connection: close\r\n\r\n"
        );
        let out =
            String::from_utf8(rewrite(b"GET / HTTP/1.0\r\n\r\n", &up(443)).expect("rewrite")).expect("utf8");
        assert!(out.starts_with("GET / HTTP/1.0\r\nHost: collector.example\r\n"), "{out}");
    }

    #[test]
    fn headers_named_in_connection_and_proxy_auth_dropped_framing_kept() {
        let head = b"POST / HTTP/1.1\r\nConnection: close, X-Secret-Hop , transfer-encoding\r\n\
                     X-Secret-Hop: 1\r\nx-secret-hop: 2\r\nProxy-Authorization: Basic eA==\r\n\
                     Proxy-Authenticate: Basic\r\nTransfer-Encoding: chunked\r\nX-Keep: k\r\n\r\n";
        let out = String::from_utf8(rewrite(head, &up(443)).expect("rewrite")).expect("utf8");
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: collector.example\r\nTransfer-Encoding: chunked\r\nX-Keep: k\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn malformed_head_is_refused() {
        assert!(matches!(rewrite(b"GET\x01 / HTTP/1.1\r\n\r\n", &up(443)), Err(HeadError::Malformed(_))));
        assert_eq!(origin_form("http://h"), "/");
        assert_eq!(origin_form("/a?b"), "/a?b");
    }
}
