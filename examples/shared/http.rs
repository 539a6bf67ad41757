//! `--metrics-addr` for the order examples (included with `#[path]`): a Prometheus recorder and a
//! tiny HTTP/1.1 server on tokio serving
//!
//! - `GET /metrics`: the Prometheus text exposition of every idemq metric,
//! - `GET /healthz`: liveness, 200 or 503 with the consumer's health report as JSON,
//! - `GET /readyz`: readiness, the same way.
//!
//! Hand-written on purpose: three read-only endpoints do not need a web framework. One request per
//! connection (`Connection: close`), request heads up to 8 KiB, 5 s to send one.

use idemq::health::HealthHandle;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs a Prometheus recorder as the process's `metrics` recorder; call it before building
/// the consumer so no metric is missed. Its handle renders the text exposition.
pub fn install_prometheus() -> std::io::Result<PrometheusHandle> {
    // Buckets make histograms Prometheus histograms (`_bucket`, `_sum`, `_count`), which the
    // shipped Grafana dashboard queries; without them the exporter renders summaries.
    let recorder = PrometheusBuilder::new()
        .set_buckets(idemq::metrics::SECONDS_BUCKETS)
        .map_err(std::io::Error::other)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(std::io::Error::other)?;
    // HELP and TYPE lines for every idemq metric, even before its first sample.
    idemq::metrics::describe();
    Ok(handle)
}

/// Binds `addr` (port 0 picks a free one) and serves the endpoints on a background task until
/// the process exits. Returns the bound address.
pub async fn serve(
    addr: &str,
    prometheus: PrometheusHandle,
    health: HealthHandle,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (prometheus, health) = (prometheus.clone(), health.clone());
                    tokio::spawn(async move {
                        if let Err(err) = answer(stream, &prometheus, &health).await {
                            tracing::debug!(%err, "metrics connection");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%err, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(bound)
}

/// Reads one request head and writes the answer.
async fn answer(
    mut stream: TcpStream,
    prometheus: &PrometheusHandle,
    health: &HealthHandle,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()), // too slow: just close
    };
    let Some(head) = head else {
        return respond(&mut stream, "400 Bad Request", TEXT, b"bad request\n").await;
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", TEXT, b"only GET\n").await;
    }
    match path {
        "/metrics" => {
            let body = prometheus.render();
            respond(&mut stream, "200 OK", PROMETHEUS_TEXT, body.as_bytes()).await
        }
        "/healthz" | "/readyz" => {
            let report = health.report();
            let ok = if path == "/healthz" {
                report.is_live()
            } else {
                report.is_ready()
            };
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let mut body = serde_json::to_vec(&report).unwrap_or_default();
            body.push(b'\n');
            respond(&mut stream, status, JSON, &body).await
        }
        _ => respond(&mut stream, "404 Not Found", TEXT, b"not found\n").await,
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The request head up to the blank line; `None` when it is too long, not UTF-8, or the client
/// closed first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(String::from_utf8(buf).ok());
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
