//! What `eddy-agent` and `eddy-fips-proxy` share, so that neither keeps a copy of the other's
//! code (the proxy does not depend on the agent):
//! - [`redact`]: credentials in URLs masked before they reach a log line or a status page;
//! - [`probe`]: the one-shot HTTP GET behind both binaries' `healthcheck` subcommand (ECS
//!   container health checks without curl in a `FROM scratch` image).
//!
//! Limits: no TLS, no HTTP client features beyond one request on loopback.

pub mod probe;
pub mod redact;
