//! The `Host` values the API accepts (see [`crate::api::host`] for the guard): `localhost`,
//! `127.0.0.1`, `[::1]` and the literal `listen` address, each without a port or with the
//! `listen` port, plus the `api_allowed_hosts` entries (`name`: without a port or with the
//! `listen` port; `name:port`: exactly; `*`: anything). No HTTP here, so the configuration can
//! validate entries ([`check_entry`]) without depending on the API.

use std::net::{IpAddr, SocketAddr};

/// Allowed `Host` values.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    port: u16,
    /// (lower-case host, required port or `None` for "none or the listen port").
    entries: Vec<(String, Option<u16>)>,
    any: bool,
}

impl AllowedHosts {
    /// The defaults for `listen` plus `extra` (`api_allowed_hosts`; validated by [`check_entry`]).
    pub fn new(listen: SocketAddr, extra: &[String]) -> AllowedHosts {
        let mut entries: Vec<(String, Option<u16>)> =
            ["localhost", "127.0.0.1", "[::1]"].iter().map(|h| (h.to_string(), None)).collect();
        if !listen.ip().is_unspecified() {
            entries.push((bracketed(listen.ip()), None));
        }
        let mut any = false;
        for e in extra {
            if e.trim() == "*" {
                any = true;
            } else if let Ok((h, p)) = split(e.trim()) {
                entries.push((h.to_ascii_lowercase(), p));
            }
        }
        AllowedHosts { port: listen.port(), entries, any }
    }

    /// Whether a `Host` header value is allowed.
    pub fn permits(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Ok((name, port)) = split(host.trim()) else { return false };
        let name = name.to_ascii_lowercase();
        self.entries.iter().any(|(h, p)| {
            *h == name
                && match p {
                    Some(p) => port == Some(*p),
                    None => port.is_none_or(|x| x == self.port),
                }
        })
    }
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => return Err(format!("{s:?}: unclosed `[`")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) || (host.contains(':') && !host.starts_with('[')) {
        return Err(format!("{s:?} is not a host name or address"));
    }
    let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"))).transpose()?;
    Ok((host, port))
}

/// Validates one `api_allowed_hosts` entry.
pub fn check_entry(s: &str) -> Result<(), String> {
    if s.trim() == "*" { Ok(()) } else { split(s.trim()).map(|_| ()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_allow_loopback_names_with_the_listen_port_only() {
        let a = AllowedHosts::new("127.0.0.1:9780".parse().expect("addr"), &[]);
        for ok in ["localhost", "localhost:9780", "127.0.0.1:9780", "[::1]:9780", "LOCALHOST:9780", "[::1]"] {
            assert!(a.permits(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:9780", "localhost:80", "127.0.0.1:1", "::1", "", "a@b"] {
            assert!(!a.permits(bad), "{bad}");
        }
    }

    #[test]
    fn listen_address_and_configured_names() {
        let extra = vec!["eddy.internal".to_string(), "proxy.example:443".to_string()];
        let a = AllowedHosts::new("10.0.0.5:9780".parse().expect("addr"), &extra);
        assert!(a.permits("10.0.0.5:9780") && a.permits("eddy.internal:9780") && a.permits("eddy.internal"));
        assert!(
            a.permits("proxy.example:443") && !a.permits("proxy.example") && !a.permits("eddy.internal:1")
        );
        let any = AllowedHosts::new("0.0.0.0:9780".parse().expect("addr"), &["*".to_string()]);
        assert!(any.permits("whatever.example:1"));
        assert!(
            check_entry("[fe80::1]:80").is_ok() && check_entry("a:b").is_err() && check_entry("x/y").is_err()
        );
    }
}
