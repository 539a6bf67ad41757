//! A private `redis-server` child process for tests that must stop, pause, flush or kill
//! connections (never done to the shared Redis other tests use).

#[cfg(feature = "redis")]
use redis::aio::MultiplexedConnection;
#[cfg(feature = "redis")]
use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private Redis; killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port with persistence off and `extra` arguments
    /// (e.g. `["--requirepass", "pw"]`). `None` (with a printed reason) when the binary is missing
    /// outside CI; panics under CI.
    pub fn start(extra: &[&str]) -> Option<Self> {
        let port = free_port();
        let mut me = Self {
            child: None,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        match me.spawn() {
            Ok(()) => Some(me),
            Err(e) if !super::services::in_ci() => {
                eprintln!("SKIPPED: cannot start a private redis-server: {e}");
                None
            }
            Err(e) => panic!("cannot start a private redis-server under CI: {e}"),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        // With TLS files among the extra arguments, serve TLS only on our port.
        let tls = self.extra.iter().any(|a| a == "--tls-cert-file");
        let ports = if tls {
            [
                "--port".to_string(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
            ]
        } else {
            [
                "--port".to_string(),
                self.port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
            ]
        };
        let child = Command::new("redis-server")
            .args(&ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server did not listen on {}", self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would: no shutdown handshake).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("restart redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[cfg(feature = "redis")]
/// A plain connection for inspecting or disturbing a server behind the store's back.
pub async fn admin(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

#[cfg(feature = "redis")]
/// Calls per command from `INFO commandstats`.
pub async fn commandstats(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}
