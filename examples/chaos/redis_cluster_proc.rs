//! A private Redis Cluster for the `*-redis-cluster` scenarios: six `redis-server` processes on
//! free loopback ports (three primaries with one replica each, `cluster-node-timeout` 1000 ms),
//! and the primary-kill fault: a primary dies with SIGKILL while its replica lags, the cluster
//! promotes the replica, and the old primary comes back as the new primary's replica.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Nodes: three primaries, one replica each.
const NODES: usize = 6;

struct Node {
    port: u16,
    bus: u16,
    child: Option<Child>,
}

/// A private cluster; its servers are killed on drop.
pub struct PrivateCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl PrivateCluster {
    /// Starts the nodes with their files in `dir` and creates the cluster.
    pub fn start(dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Hold every listener until all ports are chosen, so no two are the same.
        let listeners: Vec<std::net::TcpListener> = (0..NODES * 2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
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
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e} (install redis-tools)"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        me.wait_healthy(Duration::from_secs(30))?;
        Ok(me)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let (port, bus) = (self.nodes[i].port, self.nodes[i].bus);
        let file = |name: String| self.dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--cluster-config-file", &file(format!("nodes-{port}.conf"))])
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--logfile", &file(format!("{port}.log"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (install redis-server)"))?;
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

    /// `redis-cluster://127.0.0.1:<p0>,…` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    fn primaries(&self) -> Vec<u16> {
        self.live()
            .filter(|n| cli(n.port, &["ROLE"]).is_ok_and(|r| r.starts_with("master")))
            .map(|n| n.port)
            .collect()
    }

    /// The port of the replica of the primary on `port`.
    fn replica_of(&self, port: u16) -> Option<u16> {
        let nodes = cli(port, &["CLUSTER", "NODES"]).ok()?;
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

    /// Every live node answers `cluster_state:ok` with all slots, three primaries, and every
    /// replica's link is up.
    fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let ok = self.live().all(|n| {
                cli(n.port, &["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
                }) && cli(n.port, &["INFO", "replication"])
                    .is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
            });
            if ok && self.primaries().len() == 3 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("Redis Cluster not healthy within {within:?}"))
    }

    /// The primary-kill fault on primary `pick % 3`: its replica is made to lag (stopped, with a
    /// 32 MiB write queued ahead of the replication stream), `lag` later the primary is killed
    /// with SIGKILL, the replica resumes and is promoted, and the old primary restarts and
    /// rejoins as its replica. Returns a description and the time from the kill until the
    /// cluster was healthy again.
    pub fn kill_primary(
        &mut self,
        pick: usize,
        lag: Duration,
    ) -> Result<(String, Duration), String> {
        let primaries = self.primaries();
        let victim = *primaries
            .get(pick % primaries.len().max(1))
            .ok_or("no primary")?;
        let replica = self
            .replica_of(victim)
            .ok_or("the primary has no replica")?;
        let replica_pid = self.pid(replica)?;
        signal(replica_pid, "STOP")?;
        let filler = fill(victim);
        std::thread::sleep(lag);
        let at = Instant::now();
        self.kill(victim);
        signal(replica_pid, "CONT")?;
        filler?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.primaries().contains(&replica) {
            if Instant::now() > deadline {
                return Err(format!("replica {replica} was not promoted"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let promoted = at.elapsed();
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == victim)
            .ok_or("no such node")?;
        self.spawn(i)?;
        self.wait_healthy(Duration::from_secs(60))?;
        Ok((
            format!(
                "primary {victim} SIGKILLed while its replica {replica} lagged {} ms; replica promoted after {:.2} s",
                lag.as_millis(),
                promoted.as_secs_f64()
            ),
            at.elapsed(),
        ))
    }

    fn pid(&self, port: u16) -> Result<u32, String> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(Child::id)
            .ok_or_else(|| format!("no process for node {port}"))
    }

    fn kill(&mut self, port: u16) {
        if let Some(mut c) = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .and_then(|n| n.child.take())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("kill: {e}"))?
        .success();
    ok.then_some(())
        .ok_or_else(|| format!("kill -{signal} {pid} failed"))
}

/// A 32 MiB write to a key of `primary`'s own slots, so its replication stream backs up.
fn fill(primary: u16) -> Result<(), String> {
    let nodes = cli(primary, &["CLUSTER", "NODES"])?;
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
        .map(|i| format!("chaos-filler{{{i}}}"))
        .find(|k| {
            cli(primary, &["CLUSTER", "KEYSLOT", k])
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .is_some_and(|slot| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        })
        .ok_or("no key in the primary's slots")?;
    cli(
        primary,
        &[
            "EVAL",
            "redis.call('SET', KEYS[1], string.rep('x', 33554432)) return 1",
            "1",
            &key,
        ],
    )
    .map(|_| ())
}

fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
