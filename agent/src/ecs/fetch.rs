//! One GET of a JSON document from a metadata endpoint (the ECS agent's introspection API,
//! task metadata v4), with the three ways it fails told apart for counters and backoff.

use serde::de::DeserializeOwned;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: malformed response: {reason}")]
    Decode { url: String, reason: String },
}

impl FetchError {
    /// Picks the counter name for this failure from `[unreachable, http_errors, malformed]`.
    pub fn kind(&self, names: &[&'static str; 3]) -> &'static str {
        match self {
            FetchError::Http { .. } => names[0],
            FetchError::Status { .. } => names[1],
            FetchError::Decode { .. } => names[2],
        }
    }
}

/// GETs `url` and decodes its JSON body. Errors name the URL redacted ([`crate::redact::url`]).
pub async fn get_json<T: DeserializeOwned>(client: &reqwest::Client, url: String) -> Result<T, FetchError> {
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
    let bytes = resp.bytes().await.map_err(|e| http(&url, e))?;
    serde_json::from_slice(&bytes).map_err(|e| FetchError::Decode { url, reason: e.to_string() })
}
