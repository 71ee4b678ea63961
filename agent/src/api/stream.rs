//! Large JSON arrays (`/flows` with up to 100,000 records) streamed to the client a chunk at a
//! time instead of serialised whole: the answer costs the copy of its records (taken under the
//! table's lock) plus [`QUEUED_CHUNKS`] chunks of [`CHUNK_BYTES`], not the whole JSON text
//! (60 MiB for 100,000 flows, twice over while the buffer grows).
//!
//! The records are serialised on the blocking pool. A client that stops reading holds at most the
//! queued chunks; one that goes away ends the serialisation. An error while serialising (not
//! expected for the agent's own records) is logged and aborts the body, so the client sees a
//! broken answer, never a truncated array that parses.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Size at which a chunk is handed to the connection.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Chunks waiting for a slow client.
pub const QUEUED_CHUNKS: usize = 2;

/// The receiving end as a body stream.
struct Chunks(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A body that is the JSON array of `items`, each written by `write`.
pub fn json_array<T, W>(items: Vec<T>, write: W) -> Body
where
    T: Send + 'static,
    W: Fn(&mut Vec<u8>, &T) -> serde_json::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2));
        buf.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            if let Err(e) = write(&mut buf, item) {
                tracing::error!(error = %e, "API answer could not be serialised; aborting it");
                let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                return;
            }
            if buf.len() >= CHUNK_BYTES {
                let chunk = Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(CHUNK_BYTES + (CHUNK_BYTES >> 2)),
                ));
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the client went away
                }
            }
        }
        buf.push(b']');
        let _ = tx.blocking_send(Ok(Bytes::from(buf)));
    });
    Body::from_stream(Chunks(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn arrays_come_whole_in_chunks() {
        let items: Vec<u32> = (0..50_000).collect();
        let body = json_array(items, |buf, n| serde_json::to_writer(buf, n));
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let back: Vec<u32> = serde_json::from_slice(&bytes).expect("a JSON array");
        assert_eq!(back, (0..50_000).collect::<Vec<u32>>());
        let empty =
            axum::body::to_bytes(json_array(Vec::<u32>::new(), |b, n| serde_json::to_writer(b, n)), 10)
                .await
                .expect("body");
        assert_eq!(&empty[..], b"[]");
    }
}
