//! The consumer processes of one scenario: spawned from the example binaries, SIGKILLed and
//! restarted, interrupted for a graceful stop, and their logs checked for panics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// A running consumer.
struct Consumer {
    pid: u32,
    child: Child,
    /// Its `group.instance.id` (Kafka static membership), if the pool uses them.
    slot: Option<String>,
}

/// The consumers of one scenario.
pub struct Pool {
    bin: PathBuf,
    args: Vec<String>,
    logs: PathBuf,
    live: Vec<Consumer>,
    /// Pids the harness SIGKILLed.
    pub killed: BTreeSet<u32>,
    /// Consumers that exited when asked to stop, with a failure status (pid, status text).
    pub unclean_exits: Vec<(u32, String)>,
    /// Consumers that died without being asked to.
    pub crashed: Vec<(u32, String)>,
    spawned: usize,
    /// Kafka static membership: every consumer gets a `--static-member` id, and a replacement
    /// reuses the id of the consumer it replaces.
    static_members: bool,
    free_slots: Vec<String>,
}

impl Pool {
    /// A pool of `bin` processes run with `args`, logging to files under `logs`.
    pub fn new(bin: PathBuf, args: Vec<String>, logs: PathBuf) -> Self {
        Pool {
            bin,
            args,
            logs,
            live: Vec::new(),
            killed: BTreeSet::new(),
            unclean_exits: Vec::new(),
            crashed: Vec::new(),
            spawned: 0,
            static_members: false,
            free_slots: Vec::new(),
        }
    }

    /// Gives every consumer a static group membership id (`kafka_orders --static-member`).
    pub fn with_static_members(mut self) -> Self {
        self.static_members = true;
        self
    }

    /// Starts one more consumer; returns its pid.
    pub fn spawn(&mut self) -> std::io::Result<u32> {
        self.spawned += 1;
        let log = std::fs::File::create(self.logs.join(format!("consumer-{}.log", self.spawned)))?;
        let slot = self.static_members.then(|| {
            self.free_slots
                .pop()
                .unwrap_or_else(|| format!("member-{}", self.spawned))
        });
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        if let Some(id) = &slot {
            cmd.args(["--static-member", id]);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_CONSUMER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            // kafka_orders logs to stdout, amqp_orders to stderr: keep both.
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("consumer exited at once"))?;
        self.live.push(Consumer { pid, child, slot });
        Ok(pid)
    }

    /// Pids of the running consumers.
    pub fn pids(&self) -> Vec<u32> {
        self.live.iter().map(|c| c.pid).collect()
    }

    /// Notes consumers that died on their own (a crash is a finding, not a fault we injected).
    pub fn reap(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            match self.live[i].child.try_wait() {
                Ok(Some(status)) => {
                    let c = self.live.remove(i);
                    self.crashed.push((c.pid, status.to_string()));
                }
                _ => i += 1,
            }
        }
    }

    /// SIGKILLs the consumer at `index` (modulo the pool size) and waits for it; returns its pid.
    pub async fn kill(&mut self, index: usize) -> Option<u32> {
        if self.live.is_empty() {
            return None;
        }
        let mut c = self.live.remove(index % self.live.len());
        let _ = c.child.start_kill();
        let _ = c.child.wait().await;
        self.killed.insert(c.pid);
        // The replacement spawned next takes the killed member's place.
        self.free_slots.extend(c.slot.take());
        Some(c.pid)
    }

    /// Asks one consumer to stop (SIGINT: stop fetching, finish in-flight work, flush commits)
    /// and waits up to `within` for it to exit.
    pub async fn stop(&mut self, pid: u32, within: Duration) {
        let Some(i) = self.live.iter().position(|c| c.pid == pid) else {
            return;
        };
        let mut c = self.live.remove(i);
        self.stop_one(&mut c, within).await;
    }

    /// Stops every consumer gracefully, in parallel.
    pub async fn stop_all(&mut self, within: Duration) {
        let live = std::mem::take(&mut self.live);
        for c in &live {
            interrupt(c.pid);
        }
        for mut c in live {
            self.wait_exit(&mut c, within).await;
        }
    }

    async fn stop_one(&mut self, c: &mut Consumer, within: Duration) {
        interrupt(c.pid);
        self.wait_exit(c, within).await;
    }

    async fn wait_exit(&mut self, c: &mut Consumer, within: Duration) {
        match tokio::time::timeout(within, c.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.unclean_exits.push((c.pid, status.to_string())),
            Ok(Err(e)) => self.unclean_exits.push((c.pid, e.to_string())),
            Err(_) => {
                let _ = c.child.start_kill();
                let _ = c.child.wait().await;
                self.unclean_exits
                    .push((c.pid, format!("did not stop within {within:?}")));
            }
        }
    }

    /// Log lines, over every consumer this pool ran, that report a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in 1..=self.spawned {
            let path = self.logs.join(format!("consumer-{n}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.extend(
                    text.lines()
                        .filter(|l| l.contains("panicked at"))
                        .map(|l| format!("{}: {l}", path.display())),
                );
            }
        }
        out
    }
}

/// SIGINT, the signal the examples treat as Ctrl-C.
fn interrupt(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
}

/// The example binary `name`, next to this harness's own binary (`target/<profile>/examples/`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build the examples first (cargo build --release --all-features --examples)",
            path.display()
        ))
    }
}
