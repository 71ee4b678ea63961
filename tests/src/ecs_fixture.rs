//! The ECS agent introspection API (`/v1/metadata`, `/v1/tasks`) as a loopback fixture,
//! answering from the vendored samples in `tests/fixtures/ecs` (shaped exactly as AWS
//! documents them), or badly on demand (malformed JSON, HTTP 500, a 5 s stall).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub const GOOD: u8 = 0;
pub const MALFORMED: u8 = 1;
pub const ERROR_500: u8 = 2;
pub const STALL: u8 = 3;

/// A vendored fixture file of `tests/fixtures/ecs`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ecs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Serves the introspection API on a loopback port; `mode` picks the behaviour per request.
pub fn introspection_fixture(mode: Arc<AtomicU8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fixture");
    let addr = listener.local_addr().expect("addr");
    let (metadata, tasks) =
        (fixture("introspection_v1_metadata.json"), fixture("introspection_v1_tasks.json"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (mode, metadata, tasks) = (mode.clone(), metadata.clone(), tasks.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match (mode.load(Ordering::SeqCst), path) {
                    (GOOD, "/v1/metadata") => (200, metadata),
                    (GOOD, "/v1/tasks") => (200, tasks),
                    (MALFORMED, _) => (200, tasks[..tasks.len() / 2].to_string()),
                    (ERROR_500, _) => (500, "{}".to_string()),
                    (STALL, _) => {
                        std::thread::sleep(Duration::from_secs(5));
                        (200, "{}".to_string())
                    }
                    _ => (404, String::new()),
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}
