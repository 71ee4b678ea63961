//! A minimal OTLP/HTTP metrics receiver for the tests, built on the same proto types as the agent
//! (`opentelemetry-proto`): accepts `POST /v1/metrics` (protobuf, optionally gzip), decodes and keeps
//! every request, and answers with a configurable status (200, or e.g. 503 with `Retry-After`, or a
//! redirect with a `Location`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// One received request.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub request: ExportMetricsServiceRequest,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Requests answered (any status).
    requests: AtomicU64,
    /// Status to answer with.
    status: AtomicU16,
    /// `Location` sent with 3xx answers.
    location: Mutex<String>,
    stop: AtomicBool,
}

/// A running receiver; stops (and closes its port) on drop or [`OtlpReceiver::stop`].
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Listens on `addr` (port 0: any free loopback port).
    pub fn start(addr: SocketAddr) -> OtlpReceiver {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind OTLP receiver {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State { status: AtomicU16::new(200), ..Default::default() });
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(stream, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        OtlpReceiver { addr, state, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/v1/metrics`
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/metrics", self.addr)
    }

    /// Status code for the following requests (503 answers also carry `Retry-After: 1`).
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Answers the following requests with `status` (a 3xx) and `Location: location`.
    pub fn redirect(&self, status: u16, location: &str) {
        *self.state.location.lock().expect("lock") = location.to_string();
        self.answer(status);
    }

    /// Requests answered so far (any status).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests accepted with 200, decoded.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// Closes the port (connections are refused until a new receiver binds it).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(stream: TcpStream, st: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    // Keep-alive: several requests per connection, until the peer closes or we stop.
    while !st.stop.load(Ordering::SeqCst) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => return,
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = st.status.load(Ordering::SeqCst);
        st.requests.fetch_add(1, Ordering::SeqCst);
        if status == 200 {
            let gz = headers.iter().any(|(k, v)| k == "content-encoding" && v.contains("gzip"));
            let raw = if gz {
                let mut out = Vec::new();
                if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_err() {
                    return;
                }
                out
            } else {
                body
            };
            if let Ok(request) = ExportMetricsServiceRequest::decode(&raw[..]) {
                st.received.lock().expect("lock").push(Received { headers, request });
            }
        }
        let reason = if status == 200 { "OK" } else { "Unavailable" };
        let extra = match status {
            503 => "Retry-After: 1\r\n".to_string(),
            300..=399 => format!("Location: {}\r\n", st.location.lock().expect("lock")),
            _ => String::new(),
        };
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n{extra}\r\n");
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A string attribute.
pub fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s)) }) => Some(s.clone()),
        _ => None,
    })
}

/// An integer attribute.
pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs.iter().find(|a| a.key == key).and_then(|a| match &a.value {
        Some(AnyValue { value: Some(any_value::Value::IntValue(i)) }) => Some(*i),
        _ => None,
    })
}

/// Sum of the `eddy.network.io` points in a request for one server port, flow direction
/// (`outgoing`/`incoming`) and io direction (`transmit`/`receive`).
pub fn io_sum(req: &ExportMetricsServiceRequest, port: u16, flow_direction: &str, io: &str) -> i64 {
    sum_points(req, "eddy.network.io")
        .into_iter()
        .filter(|(a, _)| {
            attr_int(a, "server.port") == Some(i64::from(port))
                && attr_str(a, "eddy.flow.direction").as_deref() == Some(flow_direction)
                && attr_str(a, "network.io.direction").as_deref() == Some(io)
        })
        .map(|(_, v)| v)
        .sum()
}

/// Integer sum data points of `metric` in a request, with their attributes.
pub fn sum_points(req: &ExportMetricsServiceRequest, metric_name: &str) -> Vec<(Vec<KeyValue>, i64)> {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == metric_name)
        .flat_map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s
                .data_points
                .iter()
                .filter_map(|p| match p.value {
                    Some(number_data_point::Value::AsInt(v)) => Some((p.attributes.clone(), v)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}
