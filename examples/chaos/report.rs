//! Judging a scenario against the processing contract, and the tables the harness prints.

use crate::effects::{by_key, Run};
use crate::procs::Pool;
use crate::workload::{Expect, Plan, CONFLICT};
use crate::DeadLetter;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL a consumer and start a replacement.
    Kill,
    /// Kill the Redis server and start it again.
    StoreOutage,
    /// Close the consumers' connections at RabbitMQ.
    ConnectionsClosed,
    /// A consumer joins the Kafka group and leaves it again.
    Rebalance,
    /// SIGKILL a Redis Cluster primary while its replica lags; the replica is promoted.
    PrimaryKill,
}

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::Kill => "SIGKILL + restart",
            FaultKind::StoreOutage => "Redis down/up",
            FaultKind::ConnectionsClosed => "AMQP connections closed",
            FaultKind::Rebalance => "Kafka rebalance",
            FaultKind::PrimaryKill => "Redis Cluster primary SIGKILL",
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// What was done.
    pub kind: FaultKind,
    /// Details for the log.
    pub detail: String,
    /// Time until the affected consumers ran handlers again; `None` if that was not seen.
    pub recovery: Option<Duration>,
}

impl FaultRecord {
    /// One log line.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} (recovered {})",
            self.kind.label(),
            self.detail,
            secs(self.recovery)
        )
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not seen".into())
}

/// What one scenario showed.
#[derive(Debug)]
pub struct Report {
    /// `broker-store`.
    pub scenario: String,
    /// Messages published.
    pub messages: usize,
    /// Distinct valid keys.
    pub valid_keys: usize,
    /// Bad inputs published (conflicting copies included).
    pub bad_inputs: usize,
    /// Faults injected.
    pub faults: Vec<FaultRecord>,
    /// Whether the store must show exactly one committed effect per key (Postgres).
    pub transactional: bool,
    /// Keys run twice where an earlier run's process was SIGKILLed (the Redis store's window
    /// between the effect and the outcome write).
    pub kill_window_doubles: Vec<(String, Vec<u32>)>,
    /// Keys run twice without a kill to explain it: always a violation.
    pub unexplained_doubles: Vec<(String, Vec<u32>)>,
    /// Keys run twice after a Redis Cluster primary kill on a store that does not `WAIT` for
    /// replicas: the write the promoted replica lacked (allowed there, reported apart).
    pub failover_doubles: Vec<(String, Vec<u32>)>,
    /// Transactional scenarios: handler executions whose transaction was rolled back (the
    /// process died first), so they left no effect.
    pub rolled_back_runs: usize,
    /// Valid keys whose handler never completed.
    pub never_processed: Vec<String>,
    /// Bad inputs found in the dead-letter destination with the right reason.
    pub bad_dead_lettered: usize,
    /// Bad inputs missing from the dead-letter destination or there with another reason.
    pub bad_missing: Vec<String>,
    /// Dead letters of valid messages (other than the losing side of a conflict).
    pub unexpected_dead_letters: Vec<String>,
    /// Dead-letter copies beyond the first of one message (at-least-once dead-lettering).
    pub dead_letter_repeats: usize,
    /// Messages left unacked (AMQP) or uncommitted (Kafka) after the drain.
    pub left: i64,
    /// Panic lines in the consumers' logs.
    pub panics: Vec<String>,
    /// Consumers that died without being killed, or did not stop cleanly when asked.
    pub bad_exits: Vec<String>,
    /// Handler executions over all processes.
    pub handler_runs: usize,
    /// Wall time of the scenario.
    pub elapsed: Duration,
}

impl Report {
    /// Checks one scenario's results against its plan.
    #[allow(clippy::too_many_arguments)]
    pub fn judge(
        scenario: &str,
        plan: &Plan,
        runs: &[Run],
        committed: Option<&BTreeMap<String, i64>>,
        dead: &[DeadLetter],
        left: i64,
        pool: &Pool,
        faults: Vec<FaultRecord>,
        elapsed: Duration,
    ) -> Report {
        let per_key = by_key(runs);
        let mut kill_window_doubles = Vec::new();
        let mut unexplained_doubles = Vec::new();
        let mut never_processed = Vec::new();
        let mut rolled_back_runs = 0;
        match committed {
            // Transactional store: the committed rows are the effects; exactly one per key.
            Some(rows) => {
                for key in &plan.valid_keys {
                    match rows.get(key).copied().unwrap_or(0) {
                        0 => never_processed.push(key.clone()),
                        1 => {}
                        n => unexplained_doubles.push((key.clone(), vec![0; n as usize])),
                    }
                }
                let committed_total: i64 = rows.values().sum();
                rolled_back_runs = runs.len().saturating_sub(committed_total as usize);
            }
            None => {
                for key in &plan.valid_keys {
                    match per_key.get(key) {
                        None => never_processed.push(key.clone()),
                        Some(pids) if pids.len() > 1 => {
                            // A run is explained when its process was SIGKILLed afterwards: it
                            // did the effect but died before the outcome was stored.
                            let explained = pids[..pids.len() - 1]
                                .iter()
                                .all(|p| pool.killed.contains(p));
                            let entry = (key.clone(), pids.clone());
                            if explained {
                                kill_window_doubles.push(entry);
                            } else {
                                unexplained_doubles.push(entry);
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }

        // A Redis Cluster store without `WAIT` loses what a killed primary had not replicated:
        // double runs are then expected (`-wait` scenarios must show none).
        let failover_doubles = if faults.iter().any(|f| f.kind == FaultKind::PrimaryKill)
            && !scenario.ends_with("-wait")
        {
            std::mem::take(&mut unexplained_doubles)
        } else {
            Vec::new()
        };

        // Dead letters: by id (several copies of one are allowed: dead-lettering is
        // at-least-once when a consumer dies between the confirm and the ack/commit).
        let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for d in dead {
            by_id
                .entry(d.id.as_str())
                .or_default()
                .push(d.reason.as_str());
        }
        let dead_letter_repeats = by_id.values().map(|v| v.len() - 1).sum();
        let mut bad_dead_lettered = 0;
        let mut bad_missing = Vec::new();
        for (id, want) in &plan.bad {
            match by_id.get(id.as_str()) {
                Some(reasons) if reasons.iter().all(|r| r == want) => bad_dead_lettered += 1,
                Some(reasons) => bad_missing.push(format!("{id}: reason {reasons:?}, want {want}")),
                None => bad_missing.push(format!("{id}: not dead-lettered (want {want})")),
            }
        }
        // Conflicts: per key, one side ran and one message was dead-lettered as a conflict.
        let conflict_dead: BTreeSet<&str> = dead
            .iter()
            .filter(|d| d.reason == CONFLICT)
            .filter_map(|d| d.key.as_deref())
            .collect();
        // A conflict key whose first record a failover lost (no `WAIT`) runs both payloads: that
        // key is already among the failover doubles, the loss it stands for is reported there.
        let lost_in_failover: BTreeSet<&str> =
            failover_doubles.iter().map(|(k, _)| k.as_str()).collect();
        for key in &plan.conflict_keys {
            if conflict_dead.contains(key.as_str()) || lost_in_failover.contains(key.as_str()) {
                bad_dead_lettered += 1;
            } else {
                bad_missing.push(format!("{key}: no conflict dead-lettered"));
            }
        }
        let expect: BTreeMap<&str, &Expect> = plan
            .msgs
            .iter()
            .map(|m| (m.id.as_str(), &m.expect))
            .collect();
        let unexpected_dead_letters = dead
            .iter()
            .filter(|d| match expect.get(d.id.as_str()) {
                Some(Expect::Valid) | Some(Expect::Conflict) => {
                    let conflict_loser = d.reason == CONFLICT
                        && d.key
                            .as_ref()
                            .is_some_and(|k| plan.conflict_keys.contains(k));
                    !conflict_loser
                }
                Some(Expect::DeadLetter(_)) => false,
                None => true,
            })
            .map(|d| format!("{} ({})", d.id, d.reason))
            .collect();

        let mut bad_exits: Vec<String> = pool
            .crashed
            .iter()
            .map(|(p, s)| format!("pid {p} died on its own: {s}"))
            .collect();
        bad_exits.extend(
            pool.unclean_exits
                .iter()
                .map(|(p, s)| format!("pid {p} did not stop cleanly: {s}")),
        );
        Report {
            scenario: scenario.into(),
            messages: plan.msgs.len(),
            valid_keys: plan.valid_keys.len(),
            bad_inputs: plan.bad.len() + plan.conflict_keys.len(),
            faults,
            transactional: committed.is_some(),
            kill_window_doubles,
            unexplained_doubles,
            failover_doubles,
            rolled_back_runs,
            never_processed,
            bad_dead_lettered,
            bad_missing,
            unexpected_dead_letters,
            dead_letter_repeats,
            left,
            panics: pool.panics(),
            bad_exits,
            handler_runs: runs.len(),
            elapsed,
        }
    }

    /// The broken invariants, one line each (empty: everything held).
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let list = |items: &[String]| {
            let mut s = items.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
            if items.len() > 5 {
                s.push_str(&format!("; … {} more", items.len() - 5));
            }
            s
        };
        if !self.unexplained_doubles.is_empty() {
            let what = if self.transactional {
                "keys with more than one committed effect"
            } else {
                "keys run twice without a kill in between"
            };
            let items: Vec<String> = self
                .unexplained_doubles
                .iter()
                .map(|(k, p)| format!("{k} by pids {p:?}"))
                .collect();
            v.push(format!("{} {what}: {}", items.len(), list(&items)));
        }
        if !self.never_processed.is_empty() {
            v.push(format!(
                "{} valid keys never processed: {}",
                self.never_processed.len(),
                list(&self.never_processed)
            ));
        }
        if !self.bad_missing.is_empty() {
            v.push(format!(
                "{} bad inputs not dead-lettered with the right reason: {}",
                self.bad_missing.len(),
                list(&self.bad_missing)
            ));
        }
        if !self.unexpected_dead_letters.is_empty() {
            v.push(format!(
                "{} valid messages dead-lettered: {}",
                self.unexpected_dead_letters.len(),
                list(&self.unexpected_dead_letters)
            ));
        }
        if self.left != 0 {
            v.push(format!("{} messages left unacked/uncommitted", self.left));
        }
        if !self.panics.is_empty() {
            v.push(format!("consumer panics: {}", list(&self.panics)));
        }
        if !self.bad_exits.is_empty() {
            v.push(format!("consumer exits: {}", list(&self.bad_exits)));
        }
        v
    }
}

/// Prints the invariants table and the fault recovery table.
pub fn print_tables(reports: &[Report]) {
    println!("| scenario | messages | valid keys | handler runs | faults (kill/store/broker) | double runs: kill window | double runs: other | never processed | bad inputs dead-lettered | valid msgs dead-lettered | left unacked/uncommitted | panics / bad exits | time | verdict |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let count = |k: FaultKind| r.faults.iter().filter(|f| f.kind == k).count();
        let doubles_window = if r.transactional {
            format!("n/a ({} rolled back)", r.rolled_back_runs)
        } else {
            r.kill_window_doubles.len().to_string()
        };
        println!(
            "| {} | {} | {} | {} | {}/{}/{} | {} | {} | {} | {}/{} | {} | {} | {}/{} | {:.0} s | {} |",
            r.scenario,
            r.messages,
            r.valid_keys,
            r.handler_runs,
            count(FaultKind::Kill),
            count(FaultKind::StoreOutage) + count(FaultKind::PrimaryKill),
            count(FaultKind::ConnectionsClosed) + count(FaultKind::Rebalance),
            doubles_window,
            r.unexplained_doubles.len(),
            r.never_processed.len(),
            r.bad_dead_lettered,
            r.bad_inputs,
            r.unexpected_dead_letters.len(),
            r.left,
            r.panics.len(),
            r.bad_exits.len(),
            r.elapsed.as_secs_f64(),
            if r.violations().is_empty() { "PASS" } else { "FAIL" },
        );
    }
    println!();
    println!("| scenario | fault | injected | recovered (median) | recovered (max) | not seen |");
    println!("|---|---|---|---|---|---|");
    for r in reports {
        for kind in [
            FaultKind::Kill,
            FaultKind::StoreOutage,
            FaultKind::ConnectionsClosed,
            FaultKind::Rebalance,
            FaultKind::PrimaryKill,
        ] {
            let of_kind: Vec<&FaultRecord> = r.faults.iter().filter(|f| f.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let mut seen: Vec<Duration> = of_kind.iter().filter_map(|f| f.recovery).collect();
            seen.sort();
            let median = seen.get(seen.len() / 2).copied();
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                kind.label(),
                of_kind.len(),
                secs(median),
                secs(seen.last().copied()),
                of_kind.len() - seen.len()
            );
        }
    }
    failover_table(reports);
}

/// The Redis Cluster scenarios: double runs after a primary kill, without and with `WAIT`.
fn failover_table(reports: &[Report]) {
    let cluster: Vec<&Report> = reports
        .iter()
        .filter(|r| r.faults.iter().any(|f| f.kind == FaultKind::PrimaryKill))
        .collect();
    if cluster.is_empty() {
        return;
    }
    println!();
    println!("| scenario | primary kills | double runs after failover (allowed without WAIT) | double runs: other | verdict |");
    println!("|---|---|---|---|---|");
    for r in cluster {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario,
            r.faults
                .iter()
                .filter(|f| f.kind == FaultKind::PrimaryKill)
                .count(),
            r.failover_doubles.len(),
            r.unexplained_doubles.len(),
            if r.violations().is_empty() {
                "PASS"
            } else {
                "FAIL"
            },
        );
    }
}
