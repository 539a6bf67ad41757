//! CPU time used by this process and by the local broker and store processes over a benchmark
//! phase, read from `/proc` (Linux only; elsewhere every figure is absent).
//!
//! On a machine where the broker, the store and the benchmark share a few cores, throughput is
//! set by the sum of their CPU per message, so the benchmarks print where that time goes.

/// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system) used so far by process `pid`, or `None` if it cannot be read.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing ')' do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// Process ids whose command name (`/proc/<pid>/comm`) is `name`.
fn pids_named(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The processes a benchmark reports on: a label and the pids behind it.
pub struct CpuMeter {
    groups: Vec<(&'static str, Vec<String>)>,
    /// Per group, per pid: CPU seconds at the start of the phase.
    start: Vec<Vec<Option<f64>>>,
}

/// CPU seconds per group over one phase.
pub struct CpuUse {
    /// (label, CPU seconds) per group; `None` where no process was found or readable.
    pub groups: Vec<(&'static str, Option<f64>)>,
}

impl CpuMeter {
    /// This process and, per `(label, command name)`, every local process of that name (e.g.
    /// `("rabbitmq", "beam.smp")`, `("redis", "redis-server")`).
    pub fn new(others: &[(&'static str, &str)]) -> Self {
        let mut groups = vec![("this process", vec![std::process::id().to_string()])];
        groups.extend(
            others
                .iter()
                .map(|(label, comm)| (*label, pids_named(comm))),
        );
        let mut meter = CpuMeter {
            groups,
            start: Vec::new(),
        };
        meter.restart();
        meter
    }

    /// Starts a new phase now.
    pub fn restart(&mut self) {
        self.start = self
            .groups
            .iter()
            .map(|(_, pids)| pids.iter().map(|p| cpu_seconds(p)).collect())
            .collect();
    }

    /// CPU used since the phase started.
    pub fn read(&self) -> CpuUse {
        let groups = self
            .groups
            .iter()
            .zip(&self.start)
            .map(|((label, pids), start)| {
                // Processes that ended (or started) during the phase are left out: on a shared
                // machine other tests' short-lived servers come and go.
                let deltas: Vec<f64> = pids
                    .iter()
                    .zip(start)
                    .filter_map(|(p, a)| Some(cpu_seconds(p)? - (*a)?))
                    .collect();
                let used = (!deltas.is_empty()).then(|| deltas.iter().sum());
                (*label, used)
            })
            .collect();
        CpuUse { groups }
    }
}

impl CpuUse {
    /// `label: X µs` per message for each group, for a table cell.
    pub fn per_message(&self, messages: u64) -> String {
        self.groups
            .iter()
            .map(|(label, s)| match s {
                Some(s) => format!("{label} {:.0} µs", s * 1e6 / messages as f64),
                None => format!("{label} n/a"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The figures as JSON: CPU µs per message per group.
    pub fn json(&self, messages: u64) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (label, s) in &self.groups {
            let v = s.map(|s| (s * 1e6 / messages as f64).round());
            map.insert(label.replace(' ', "_"), serde_json::json!(v));
        }
        serde_json::Value::Object(map)
    }
}

/// CPU per process group summed over phases (all measured with the same groups).
pub fn sum<'a>(phases: impl Iterator<Item = &'a CpuUse>) -> CpuUse {
    let mut groups: Vec<(&'static str, Option<f64>)> = Vec::new();
    for p in phases {
        if groups.is_empty() {
            groups = p.groups.clone();
            continue;
        }
        for (sum, (_, s)) in groups.iter_mut().zip(&p.groups) {
            sum.1 = match (sum.1, s) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
    }
    CpuUse { groups }
}
