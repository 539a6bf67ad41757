//! Memory over a long run: the process's resident set size (`VmRSS` in `/proc/self/status`, Linux
//! only) at every 10% of the messages, and its growth from 20% to 100% (the first fifth is warm-up:
//! connection buffers, allocator arenas, caches filling up to their bounds).

/// Messages of a soak run unless `--messages` says otherwise.
pub const SOAK_MESSAGES: u64 = 1_000_000;

/// Resident set size of this process in KiB, or `None` where `/proc` cannot tell.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// RSS samples taken as a run passes 10%, 20%, … 100% of its messages.
pub struct RssSamples {
    total: u64,
    /// (percent, messages done when sampled, KiB).
    samples: Vec<(u32, u64, Option<u64>)>,
}

impl RssSamples {
    /// Samples for a run of `total` messages.
    pub fn new(total: u64) -> Self {
        RssSamples {
            total,
            samples: Vec::new(),
        }
    }

    /// Records a sample for every 10% step that `done` messages reached and not sampled yet;
    /// call it often (every few milliseconds) with the count of finished messages.
    pub fn observe(&mut self, done: u64) {
        loop {
            let pct = (self.samples.len() as u32 + 1) * 10;
            if pct > 100 || done.saturating_mul(100) < self.total.saturating_mul(pct as u64) {
                return;
            }
            let rss = rss_kib();
            self.samples.push((pct, done, rss));
            eprintln!("  {pct:>3}%: {done} messages, RSS {}", fmt_kib(rss));
        }
    }

    /// KiB at 10%, 20%, … (as far as the run got); `null` where unknown.
    pub fn kib_at_pct(&self) -> Vec<Option<u64>> {
        self.samples.iter().map(|s| s.2).collect()
    }

    /// (RSS at 100% − RSS at 20%) / RSS at 20%, when both were sampled.
    pub fn growth_20_to_100(&self) -> Option<f64> {
        let at = |pct: u32| self.samples.iter().find(|s| s.0 == pct).and_then(|s| s.2);
        let (a, b) = (at(20)?, at(100)?);
        Some((b as f64 - a as f64) / a as f64)
    }

    /// The samples as a Markdown table.
    pub fn print_table(&self) {
        println!("| progress | messages | RSS |");
        println!("|---:|---:|---:|");
        for (pct, done, rss) in &self.samples {
            println!("| {pct}% | {done} | {} |", fmt_kib(*rss));
        }
        match self.growth_20_to_100() {
            Some(g) => println!("RSS growth 20% → 100%: {:+.1}%", g * 100.0),
            None => println!("RSS growth 20% → 100%: n/a"),
        }
    }

    /// `rss_kib_at_pct` and `rss_growth_20_to_100` (a fraction, rounded to 4 places).
    pub fn json_fields(&self, map: &mut serde_json::Map<String, serde_json::Value>) {
        map.insert(
            "rss_kib_at_pct".into(),
            serde_json::json!(self.kib_at_pct()),
        );
        map.insert(
            "rss_growth_20_to_100".into(),
            serde_json::json!(self
                .growth_20_to_100()
                .map(|g| (g * 10_000.0).round() / 10_000.0)),
        );
    }
}

fn fmt_kib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}
