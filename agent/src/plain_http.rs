//! HTTP clients for the plain-http endpoints of the host: the ECS agent's introspection API,
//! task metadata and IMDS. They never speak TLS, so they are built without the system's CA
//! store: a host or image without `ca-certificates` must not lose ECS labels (a default
//! client fails to build there: "No CA certificates were loaded from the system").
//!
//! Limits: an `https://` URL given to such a client fails at connect time (no trust anchors);
//! redirects are not followed.

use std::time::Duration;

/// A client for `http://` endpoints with the given connect and whole-request timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds() {
        assert!(client(Duration::from_secs(1)).is_ok());
    }
}
