//! Upstream side of a connection: TCP connect plus TLS handshake under one timeout, and the
//! byte relay with an idle timeout and per-route byte counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Route;
use super::limits::Meter;
use crate::status::Health;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "this route has no upstream configured (set EDDY_FIPS_ROUTES, or EDDY_FIPS_OTLP_UPSTREAM for the otlp route)"
    )]
    Unconfigured,
    #[error("cannot resolve upstream {authority}: {source}")]
    Resolve { authority: String, source: std::io::Error },
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no TCP connection to upstream {authority} within {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("TLS handshake with upstream {authority} (name {server_name}) failed: {source}{}", hint(source))]
    Handshake { authority: String, server_name: String, source: std::io::Error },
    #[error("no TLS handshake with upstream {authority} within {after:?}")]
    HandshakeTimeout { authority: String, after: Duration },
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// What a negotiation failure most likely means for a FIPS-only client.
fn hint(source: &std::io::Error) -> &'static str {
    let text = source.to_string();
    let negotiation = ["HandshakeFailure", "InsufficientSecurity", "ProtocolVersion", "PeerIncompatible"];
    if negotiation.iter().any(|n| text.contains(n)) {
        " (the upstream offers no FIPS-approved parameters in common: TLS 1.2/1.3, AES-GCM, ECDHE on P-256/P-384, \
         extended master secret on TLS 1.2)"
    } else {
        ""
    }
}

impl UpstreamError {
    /// TLS-level failure (handshake, certificate, algorithm negotiation): answered 502.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamError::Handshake { .. } | UpstreamError::HandshakeTimeout { .. })
    }
}

/// Connects to the route's upstream and completes the TLS handshake.
pub async fn connect(route: &Route) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let (Some(up), Some(connector)) = (&route.upstream, &route.connector) else {
        return Err(UpstreamError::Unconfigured);
    };
    let authority = up.authority();
    let after = route.connect_timeout;
    let tcp = tokio::time::timeout(after, async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&authority)
            .await
            .map_err(|source| UpstreamError::Resolve { authority: authority.clone(), source })?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(source) => last = Some(UpstreamError::Connect { addr: addr.to_string(), source }),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Resolve {
            authority: authority.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        }))
    })
    .await
    .map_err(|_| UpstreamError::ConnectTimeout { authority: authority.clone(), after })??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(up.server_name.clone())
        .map_err(|_| UpstreamError::ServerName(up.server_name.clone()))?;
    let tls = tokio::time::timeout(after, connector.connect(name, tcp))
        .await
        .map_err(|_| UpstreamError::HandshakeTimeout { authority: authority.clone(), after })?
        .map_err(|source| UpstreamError::Handshake {
            authority: authority.clone(),
            server_name: up.server_name.clone(),
            source,
        })?;
    let (_, session) = tls.get_ref();
    let negotiated = format!(
        "{} {} {}",
        session.protocol_version().map_or("?".to_string(), |v| format!("{v:?}")),
        session.negotiated_cipher_suite().map_or("?".to_string(), |s| format!("{:?}", s.suite())),
        session.negotiated_key_exchange_group().map_or("?".to_string(), |g| format!("{:?}", g.name())),
    );
    tracing::debug!(route = %route.stats.name, upstream = %authority, tls = %negotiated, fips = session.fips(),
        "upstream TLS established");
    route.stats.set_handshake(negotiated);
    route.stats.set_health(Health::Up, None);
    Ok(tls)
}

/// Relays bytes both ways until both directions end; returns (to upstream, from upstream).
/// Every byte read is also added to the connection's `meter`.
pub async fn relay<C, U>(client: C, upstream: U, route: &Route, meter: &Meter) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let idle = route.idle_timeout;
    let up = pump(cr, uw, &route.stats.bytes_to_upstream, meter, idle);
    let down = pump(ur, cw, &route.stats.bytes_from_upstream, meter, idle);
    tokio::join!(up, down)
}

/// Copies `r` to `w` until EOF, an error, or `idle` without data; then shuts `w` down.
async fn pump<R, W>(mut r: R, mut w: W, counter: &AtomicU64, meter: &Meter, idle: Duration) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        meter.add(n);
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = w.shutdown().await;
    total
}
