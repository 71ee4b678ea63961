//! One GET of a JSON document from a metadata endpoint (the ECS agent's introspection API,
//! task metadata v4), with the four ways it fails told apart for counters and backoff.
//!
//! Bodies are read through [`crate::body::read_capped`] with a cap per document (the callers'
//! constants): an oversized answer is an error like a malformed one, so the refresher keeps
//! its last good snapshot and counts it.

use serde::de::DeserializeOwned;

use crate::body::BodyError;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: malformed response: {reason}")]
    Decode { url: String, reason: String },
    #[error("GET {url}: response body larger than {limit} bytes (cap); ignored")]
    TooLarge { url: String, limit: usize },
}

impl FetchError {
    /// Picks the counter name for this failure from `[unreachable, http_errors, malformed, oversized]`.
    pub fn kind(&self, names: &[&'static str; 4]) -> &'static str {
        match self {
            FetchError::Http { .. } => names[0],
            FetchError::Status { .. } => names[1],
            FetchError::Decode { .. } => names[2],
            FetchError::TooLarge { .. } => names[3],
        }
    }
}

/// GETs `url` and decodes its JSON body, at most `limit` bytes of it. Errors name the URL
/// redacted ([`crate::redact::url`]).
pub async fn get_json<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
    limit: usize,
) -> Result<T, FetchError> {
    let http = |url: &str, e: reqwest::Error| FetchError::Http {
        url: crate::redact::url(url),
        reason: e.without_url().to_string(),
    };
    let resp = client.get(&url).send().await.map_err(|e| http(&url, e))?;
    let url = crate::redact::url(&url);
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status { url, status: status.as_u16() });
    }
    let bytes = crate::body::read_capped(resp, limit).await.map_err(|e| match e {
        BodyError::TooLarge { limit } => FetchError::TooLarge { url: url.clone(), limit },
        BodyError::Read(reason) => FetchError::Http { url: url.clone(), reason },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| FetchError::Decode { url, reason: e.to_string() })
}
