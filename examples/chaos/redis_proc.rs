//! A private `redis-server` for the Redis-store scenarios, so the outage fault never touches a
//! shared Redis. It writes an append-only file fsynced on every write (`appendfsync always`),
//! the configuration a deployment that relies on Redis for idempotency needs: a killed server
//! restarts with every acknowledged claim and outcome.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Redis; killed on drop.
pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port with its data in `dir`.
    pub fn start(dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("free port: {e}"))?;
        let mut me = PrivateRedis {
            port,
            dir,
            child: None,
        };
        me.up()?;
        Ok(me)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data directory; waits until it listens.
    pub fn up(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (install redis-server)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Listening is not enough: while loading the AOF Redis answers LOADING.
            if ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `true` when the server answers `PING` with `PONG`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}
