//! A private local Redis Cluster for tests: six `redis-server --cluster-enabled yes` processes on
//! free loopback ports (three primaries with one replica each, `cluster-node-timeout` 1000 ms so a
//! killed primary's replica is promoted within seconds), created with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`.
//!
//! [`shared`] is one cluster per test binary (started on first use); [`RedisCluster::start`] a
//! private one for tests that kill nodes. Every server is started under a small shell watchdog
//! that kills it when the test process exits, so no server outlives the tests (statics are never
//! dropped). `IDEMQ_REDIS_CLUSTER_URL` (e.g. from `scripts/services.sh`) makes [`shared`] use an
//! existing cluster instead. Missing `redis-server` / `redis-cli`: skipped with a printed reason
//! outside CI, a panic under `CI=true`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nodes in a test cluster: three primaries, one replica each.
pub const NODES: usize = 6;

/// One node process.
struct Node {
    port: u16,
    bus: u16,
    child: Option<Child>,
}

/// A running cluster; its servers are killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// `requirepass` / `masterauth` of every node, when started with one.
    password: Option<String>,
}

/// The shared cluster of this test binary (or the one named by `IDEMQ_REDIS_CLUSTER_URL`), as a
/// `redis-cluster://` URL; `None` when it cannot run outside CI (reason printed).
pub fn shared_url() -> Option<String> {
    if let Ok(url) = std::env::var("IDEMQ_REDIS_CLUSTER_URL") {
        return Some(url);
    }
    static SHARED: OnceLock<Option<RedisCluster>> = OnceLock::new();
    SHARED
        .get_or_init(RedisCluster::start)
        .as_ref()
        .map(RedisCluster::url)
}

impl RedisCluster {
    /// Starts a private cluster; `None` (with a printed reason) when `redis-server` or
    /// `redis-cli` is missing outside CI; panics under CI.
    pub fn start() -> Option<Self> {
        Self::start_with_password(None)
    }

    /// [`Self::start`] with `requirepass` (and `masterauth`) set to `password` on every node.
    pub fn start_with_password(password: Option<&str>) -> Option<Self> {
        match Self::try_start(password) {
            Ok(c) => Some(c),
            Err(e) if !super::services::in_ci() => {
                eprintln!("SKIPPED: cannot start a local Redis Cluster: {e}");
                None
            }
            Err(e) => panic!("cannot start a local Redis Cluster under CI: {e}"),
        }
    }

    fn try_start(password: Option<&str>) -> Result<Self, String> {
        for tool in ["redis-server", "redis-cli"] {
            Command::new(tool)
                .arg("--version")
                .output()
                .map_err(|e| format!("{tool}: {e}"))?;
        }
        let dir = std::env::temp_dir().join(format!(
            "idemq-cluster-{}-{}",
            std::process::id(),
            super::services::unique("c")
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Hold all listeners until every port is chosen, so no two are the same.
        let listeners: Vec<TcpListener> = (0..NODES * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("free port: {e}"))?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("free port: {e}"))?;
        drop(listeners);
        let mut me = Self {
            nodes: (0..NODES)
                .map(|i| Node {
                    port: ports[i],
                    bus: ports[NODES + i],
                    child: None,
                })
                .collect(),
            dir,
            password: password.map(str::to_string),
        };
        for i in 0..NODES {
            me.spawn(i)?;
        }
        let addrs: Vec<String> = me
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .envs(me.password.as_ref().map(|p| ("REDISCLI_AUTH", p)))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        me.wait_healthy(Duration::from_secs(30))?;
        Ok(me)
    }

    /// Starts node `i` under a watchdog shell that kills it when this test process exits.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let (port, bus) = (self.nodes[i].port, self.nodes[i].bus);
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        let server = format!(
            "redis-server --port {port} --cluster-port {bus} --bind 127.0.0.1 --save '' \
             --appendonly no --cluster-enabled yes --cluster-config-file '{}' \
             --cluster-node-timeout 1000 --cluster-replica-validity-factor 0 \
             --cluster-allow-replica-migration no --dir '{}' --logfile '{}' --pidfile '{}'",
            conf.display(),
            self.dir.display(),
            self.dir.join(format!("{port}.log")).display(),
            self.pidfile(port).display()
        );
        let server = match &self.password {
            Some(pw) => format!("{server} --requirepass '{pw}' --masterauth '{pw}'"),
            None => server,
        };
        // `exec` in the inner shell: killing the watchdog's child kills the server itself.
        let script = format!(
            "{server} & r=$!; while kill -0 {parent} 2>/dev/null && kill -0 $r 2>/dev/null; do \
             sleep 0.5; done; kill -9 $r 2>/dev/null",
            parent = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("sh: {e}"))?;
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server did not listen on {port}"))
    }

    fn pidfile(&self, port: u16) -> PathBuf {
        self.dir.join(format!("{port}.pid"))
    }

    /// `redis-cluster://127.0.0.1:<p0>,127.0.0.1:<p1>,…` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }

    /// The ports of all nodes.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Ports of the nodes that are currently primaries (from `ROLE`), sorted.
    pub fn primaries(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| {
                self.cli(n.port, &["ROLE"])
                    .is_ok_and(|r| r.starts_with("master"))
            })
            .map(|n| n.port)
            .collect();
        out.sort_unstable();
        out
    }

    /// Kills the node on `port` with SIGKILL (no shutdown handshake, as a crash).
    pub fn kill(&mut self, port: u16) {
        let pidfile = self.pidfile(port);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            // SIGKILL the server itself (the watchdog then exits).
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "kill -9 $(cat '{}' 2>/dev/null) 2>/dev/null || true",
                    pidfile.display()
                ))
                .status();
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Makes the replica on `replica` lag behind its primary on `primary`, as a replica on a slow
    /// link would: the replica is stopped (SIGSTOP) and the primary gets a 32 MiB write to
    /// replicate, more than the socket buffers between them hold, so whatever the primary
    /// acknowledges next waits in its own output buffer. [`Self::resume`] lets the replica go on.
    pub fn lag_replica(&self, primary: u16, replica: u16) -> Result<(), String> {
        self.signal(replica, "STOP")?;
        // A key in one of the primary's own slots.
        let nodes = self.cli(primary, &["CLUSTER", "NODES"])?;
        let mine = nodes
            .lines()
            .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
            .ok_or("no myself line")?;
        let ranges: Vec<(u16, u16)> = mine
            .split(' ')
            .skip(8)
            .filter_map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        let key = (0..10_000)
            .map(|i| format!("idemq-test-filler{{{i}}}"))
            .find(|k| {
                self.cli(primary, &["CLUSTER", "KEYSLOT", k])
                    .ok()
                    .and_then(|s| s.trim().parse::<u16>().ok())
                    .is_some_and(|slot| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            })
            .ok_or("no key for the primary's slots")?;
        let script = format!(
            "redis-cli -h 127.0.0.1 -p {primary} EVAL \"redis.call('SET', KEYS[1], string.rep('x', 33554432)) return 1\" 1 '{key}'"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !String::from_utf8_lossy(&out.stdout).contains('1') {
            return Err(format!(
                "filler write failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Lets a node stopped by [`Self::lag_replica`] run again (SIGCONT).
    pub fn resume(&self, port: u16) -> Result<(), String> {
        self.signal(port, "CONT")
    }

    fn signal(&self, port: u16, signal: &str) -> Result<(), String> {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "kill -{signal} $(cat '{}')",
                self.pidfile(port).display()
            ))
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} of the node on {port} failed"))
        }
    }

    /// Starts the killed node on `port` again with its old cluster config: it rejoins the cluster
    /// (as a replica of whoever was promoted in its place).
    pub fn restart(&mut self, port: u16) -> Result<(), String> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .ok_or_else(|| format!("no node on {port}"))?;
        self.kill(port);
        self.spawn(i)
    }

    /// The replica that serves the same slots as the primary on `port`, from `CLUSTER NODES`.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let nodes = self.cli(port, &["CLUSTER", "NODES"]).ok()?;
        let id = nodes
            .lines()
            .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))?
            .split(' ')
            .next()?
            .to_string();
        nodes
            .lines()
            .find(|l| l.split(' ').nth(3) == Some(id.as_str()))?
            .split(' ')
            .nth(1)?
            .split(['@', ':'])
            .nth(1)?
            .parse()
            .ok()
    }

    /// Waits until every live node reports `cluster_state:ok`, all slots are served and every
    /// replica's link to its primary is up.
    pub fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| n.port)
                .collect();
            let ok = live
                .iter()
                .all(|&p| match self.cli(p, &["CLUSTER", "INFO"]) {
                    Ok(info) => {
                        last = info.clone();
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                })
                && live
                    .iter()
                    .all(|&p| match self.cli(p, &["INFO", "replication"]) {
                        Ok(info) => {
                            info.contains("role:master") || info.contains("master_link_status:up")
                        }
                        Err(_) => false,
                    });
            if ok && self.primaries().len() == 3 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("cluster not healthy within {within:?}: {last}"))
    }

    /// Runs `redis-cli -p <port> args…` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        cli_as(self.password.as_deref(), port, args)
    }

    /// `redis-cluster://[:password@]127.0.0.1:<p0>,…`.
    pub fn url_with_auth(&self) -> String {
        match &self.password {
            Some(pw) => self.url().replacen("://", &format!("://:{pw}@"), 1),
            None => self.url(),
        }
    }

    /// Number of keys matching `pattern` on each current primary (port, count).
    pub fn keys_per_primary(&self, pattern: &str) -> Vec<(u16, usize)> {
        keys_per_primary(&self.primaries(), pattern)
    }
}

/// Number of keys matching `pattern` on each of `ports` (by `redis-cli --scan`).
pub fn keys_per_primary(ports: &[u16], pattern: &str) -> Vec<(u16, usize)> {
    ports
        .iter()
        .map(|&p| {
            let n = cli(p, &["--scan", "--pattern", pattern])
                .map(|out| out.lines().filter(|l| !l.is_empty()).count())
                .unwrap_or(0);
            (p, n)
        })
        .collect()
}

/// The ports of the primaries of the cluster behind `url` (a `redis-cluster://` URL of
/// 127.0.0.1 nodes), by `ROLE` on each node named.
pub fn primaries_of(url: &str) -> Vec<u16> {
    let hosts = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let mut out: Vec<u16> = hosts
        .split(',')
        .filter_map(|h| h.rsplit_once(':')?.1.parse().ok())
        .filter(|&p| cli(p, &["ROLE"]).is_ok_and(|r| r.starts_with("master")))
        .collect();
    out.sort_unstable();
    out
}

fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    cli_as(None, port, args)
}

/// `redis-cli` on `port`, authenticating with `password` (`REDISCLI_AUTH`) when given.
fn cli_as(password: Option<&str>, port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .envs(password.map(|p| ("REDISCLI_AUTH", p)))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for p in ports {
            self.kill(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
