//! Bounded reads of HTTP response bodies: every body the agent reads from the network (ECS
//! agent introspection, task metadata, IMDS, OTLP answers) goes through [`read_capped`].
//!
//! How: a `Content-Length` above the cap fails before anything is read; otherwise chunks are
//! appended until the cap would be exceeded, and the read stops there (the connection is
//! dropped with the response). Memory per read is therefore at most the cap plus one chunk.
//!
//! Limits: the caps are per body, chosen by each caller (documented beside its constant).

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("response body larger than {limit} bytes (cap); not read")]
    TooLarge { limit: usize },
    #[error("reading the response body: {0}")]
    Read(String),
}

/// Reads `resp`'s body, at most `limit` bytes.
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| BodyError::Read(e.without_url().to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
