//! Prometheus metrics: a tower layer that counts and times every RPC, and a tiny HTTP/1.1
//! endpoint (`--metrics-listen`) serving `GET /metrics` in the Prometheus text format.
//!
//! Label sets are fixed: the Flight RPC names (anything else is `other`) and the 17 gRPC status
//! codes, so the registry is a fixed-size array allocated once — its size never depends on what
//! clients send. The engine's key figures (the rows of `system.stats`) follow as plain series.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use kalam_core::engine::Engine;
use kalam_core::stats::{FigureKind, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Flight RPC names; calls to any other path count as `other` (the last slot).
const METHODS: [&str; 11] = [
    "Handshake",
    "ListFlights",
    "GetFlightInfo",
    "PollFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoExchange",
    "DoAction",
    "ListActions",
    "other",
];

/// gRPC status code names, indexed by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Upper bounds of the latency histogram buckets, in seconds (`+Inf` is implied).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Count and latency histogram of one (method, code) pair.
#[derive(Debug, Default)]
struct Cell {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies, in microseconds.
    sum_micros: AtomicU64,
}

/// The RPC registry: `METHODS.len() × CODES.len()` cells, fixed at start.
#[derive(Debug)]
pub struct RpcMetrics {
    /// Indexed by `method * CODES.len() + code`.
    cells: Box<[Cell]>,
    /// The engine's counters; RPC totals are mirrored there for `system.stats`.
    stats: Arc<Stats>,
}

impl RpcMetrics {
    /// An empty registry that also bumps `stats.rpcs` / `stats.rpc_errors`.
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            cells: (0..METHODS.len() * CODES.len())
                .map(|_| Cell::default())
                .collect(),
            stats,
        }
    }

    fn record(&self, method: usize, code: usize, elapsed: Duration) {
        let code = if code < CODES.len() { code } else { UNKNOWN };
        let cell = &self.cells[method * CODES.len() + code];
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cell.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Stats::add(&self.stats.rpcs, 1);
        if code != 0 {
            Stats::add(&self.stats.rpc_errors, 1);
        }
    }

    /// Appends the RPC series (only pairs seen at least once) to `out`.
    fn render(&self, out: &mut String) {
        let mut counts = String::new();
        let mut hist = String::new();
        for (m, method) in METHODS.iter().enumerate() {
            for (c, code) in CODES.iter().enumerate() {
                let cell = &self.cells[m * CODES.len() + c];
                let per_bucket: Vec<u64> = cell
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let total: u64 = per_bucket.iter().sum();
                if total == 0 {
                    continue;
                }
                let labels = format!("method=\"{method}\",code=\"{code}\"");
                let _ = writeln!(counts, "kalam_rpc_requests_total{{{labels}}} {total}");
                let mut cumulative = 0;
                for (i, n) in per_bucket.iter().enumerate() {
                    cumulative += n;
                    let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                    let _ = writeln!(
                        hist,
                        "kalam_rpc_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let sum = cell.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(hist, "kalam_rpc_duration_seconds_sum{{{labels}}} {sum}");
                let _ = writeln!(hist, "kalam_rpc_duration_seconds_count{{{labels}}} {total}");
            }
        }
        out.push_str("# HELP kalam_rpc_requests_total RPCs answered, by method and gRPC code\n");
        out.push_str("# TYPE kalam_rpc_requests_total counter\n");
        out.push_str(&counts);
        out.push_str(
            "# HELP kalam_rpc_duration_seconds RPC latency until the last response byte\n",
        );
        out.push_str("# TYPE kalam_rpc_duration_seconds histogram\n");
        out.push_str(&hist);
    }
}

/// The whole `/metrics` page: RPC series, then the engine's key figures.
pub fn render(rpc: &RpcMetrics, engine: &Engine) -> String {
    let mut out = String::with_capacity(16 << 10);
    rpc.render(&mut out);
    for figure in engine.key_figures() {
        let (name, kind) = match figure.kind {
            FigureKind::Counter => (format!("kalam_{}_total", figure.name), "counter"),
            FigureKind::Gauge => (format!("kalam_{}", figure.name), "gauge"),
        };
        let _ = writeln!(out, "# HELP {name} {}", figure.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {}", figure.value);
    }
    out
}

/// Layer that adds [`MetricsService`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<RpcMetrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<RpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Times each call from its arrival to the end of its response body and records it under the
/// gRPC code found in the headers (trailers-only answers) or the trailers.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let name = req.uri().path().rsplit('/').next().unwrap_or("");
        let method = METHODS[..METHODS.len() - 1]
            .iter()
            .position(|m| *m == name)
            .unwrap_or(METHODS.len() - 1);
        // Recorded as CANCELLED unless an answer is seen first (the call may be dropped).
        let mut pending = Pending {
            metrics: Arc::clone(&self.metrics),
            method,
            start: Instant::now(),
            done: false,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(req).await;
            match response {
                Ok(response) => {
                    let header_code = grpc_code(response.headers());
                    let (parts, body) = response.into_parts();
                    let pending = match header_code {
                        Some(code) if body.is_end_stream() => {
                            pending.finish(code);
                            None
                        }
                        _ => Some(pending),
                    };
                    Ok(http::Response::from_parts(
                        parts,
                        MeteredBody {
                            inner: body,
                            pending,
                            header_code,
                        },
                    ))
                }
                Err(e) => {
                    pending.finish(UNKNOWN);
                    Err(e)
                }
            }
        })
    }
}

/// The `grpc-status` in a header map, as an index into [`CODES`].
fn grpc_code(headers: &http::HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map(|c| if c < CODES.len() { c } else { UNKNOWN })
}

/// A call not yet recorded.
struct Pending {
    metrics: Arc<RpcMetrics>,
    method: usize,
    start: Instant,
    done: bool,
}

impl Pending {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.metrics.record(self.method, code, self.start.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// A response body that records its call when the trailers pass (or the stream ends or is
/// dropped).
pub struct MeteredBody<B> {
    inner: B,
    /// `None` once recorded.
    pending: Option<Pending>,
    /// `grpc-status` of the response headers, used if the body ends without trailers.
    header_code: Option<usize>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code)
                    && let Some(mut p) = self.pending.take()
                {
                    p.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut p) = self.pending.take() {
                    p.finish(UNKNOWN);
                }
            }
            Poll::Ready(None) => {
                let code = self.header_code.unwrap_or(UNKNOWN);
                if let Some(mut p) = self.pending.take() {
                    p.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Bound on concurrently served `/metrics` connections; more wait in the accept queue.
const MAX_METRICS_CONNECTIONS: usize = 8;
/// Largest request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 << 10;
/// A scraper that does not send its request (or read the answer) within this is dropped.
const METRICS_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until the task is aborted. HTTP/1.1, one request per
/// connection (`Connection: close`); other paths get 404, other methods 405.
pub async fn serve(listener: TcpListener, rpc: Arc<RpcMetrics>, engine: Arc<Engine>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let rpc = Arc::clone(&rpc);
        let engine = Arc::clone(&engine);
        // Each connection task ends within METRICS_IO_TIMEOUT (twice) and holds a permit, so
        // at most MAX_METRICS_CONNECTIONS exist.
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &rpc, &engine).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, rpc: &RpcMetrics, engine: &Engine) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_REQUEST_HEAD {
                return Err(std::io::Error::other("request head too large"));
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(METRICS_IO_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(rpc, engine),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(METRICS_IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::other("response timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_into_fixed_cells() {
        let stats = Arc::new(Stats::default());
        let m = RpcMetrics::new(Arc::clone(&stats));
        m.record(5, 0, Duration::from_millis(3));
        m.record(5, 16, Duration::from_secs(60));
        m.record(10, 99, Duration::ZERO);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("kalam_rpc_requests_total{method=\"DoGet\",code=\"OK\"} 1"));
        assert!(out.contains(
            "kalam_rpc_duration_seconds_bucket{method=\"DoGet\",code=\"OK\",le=\"0.005\"} 1"
        ));
        assert!(out.contains(
            "kalam_rpc_duration_seconds_bucket{method=\"DoGet\",code=\"UNAUTHENTICATED\",le=\"10\"} 0"
        ));
        assert!(out.contains(
            "kalam_rpc_duration_seconds_bucket{method=\"DoGet\",code=\"UNAUTHENTICATED\",le=\"+Inf\"} 1"
        ));
        // Out-of-range codes count as UNKNOWN rather than growing the registry.
        assert!(out.contains("kalam_rpc_requests_total{method=\"other\",code=\"UNKNOWN\"} 1"));
        assert_eq!(Stats::get(&stats.rpcs), 3);
        assert_eq!(Stats::get(&stats.rpc_errors), 2);
    }
}
