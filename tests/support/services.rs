//! Finding the local services integration tests need.
//!
//! Outside CI a missing service skips the test with a printed reason; with `CI=true` it fails the
//! test, so CI can never go green by skipping.

use std::net::TcpStream;
use std::time::Duration;

/// Redis URL for tests (`IDEMQ_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("IDEMQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Postgres URL for tests (`IDEMQ_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_url() -> String {
    std::env::var("IDEMQ_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// AMQP URL for tests (`IDEMQ_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`).
pub fn amqp_url() -> String {
    std::env::var("IDEMQ_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Whether we run under CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` if `host:port` accepts TCP connections. When it does not: panics under CI,
/// otherwise prints why the test is skipped and returns `false`.
pub fn require(service: &str, addr: &str) -> bool {
    let reachable = addr
        .parse()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    if reachable {
        return true;
    }
    if in_ci() {
        panic!(
            "{service} is not reachable at {addr}, and CI=true: integration tests must not skip"
        );
    }
    eprintln!(
        "SKIPPED: {service} is not reachable at {addr} (start it, e.g. with scripts/services.sh)"
    );
    false
}

/// [`require`] for the local Redis.
pub fn require_redis() -> bool {
    require("Redis", &host_port(&redis_url(), 6379))
}

/// [`require`] for the local Postgres.
pub fn require_postgres() -> bool {
    require("PostgreSQL", &host_port(&postgres_url(), 5432))
}

/// [`require`] for the local RabbitMQ.
pub fn require_rabbitmq() -> bool {
    require("RabbitMQ", &host_port(&amqp_url(), 5672))
}

/// `host:port` of a URL like `scheme://user:pw@host:port/path`.
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hp = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = if hp == "localhost" || hp.starts_with("localhost:") {
        hp.replacen("localhost", "127.0.0.1", 1)
    } else {
        hp.to_string()
    };
    if hp.contains(':') {
        hp
    } else {
        format!("{hp}:{default_port}")
    }
}

/// A unique name for test isolation (prefixes, scopes, queues, topics).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `target/<profile>/examples/<name>`, next to this test binary's `deps/` directory. When it is
/// missing: panics under CI, otherwise prints why the test is skipped and returns `None`.
/// (`cargo test` builds the examples before running tests; `cargo test --test X` does not.)
pub fn example_binary(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: run `cargo build --all-features --example {name}` first",
        path.display()
    );
    if in_ci() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}
