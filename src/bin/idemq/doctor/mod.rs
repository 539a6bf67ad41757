//! `idemq doctor`: checks a store against what idemq needs in production (docs/redis.md
//! "Operating Redis for idemq", docs/postgres.md) and says how to fix what fails. Read-only.

#[cfg(feature = "postgres")]
mod postgres;
mod redis;

use crate::args::{DoctorArgs, Output};
use crate::Failure;
use serde_json::json;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// As production needs it.
    Pass,
    /// Works, but is risky or could not be verified.
    Warn,
    /// Breaks a guarantee idemq documents (exit 1).
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug)]
pub struct Check {
    /// Short stable name (`maxmemory-policy`, `table`, …), the same in text and JSON.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do, unless it passed.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// `idemq doctor`
pub async fn run(a: &DoctorArgs, out: Output) -> Result<(), Failure> {
    let scheme = a.store.split("://").next().unwrap_or_default();
    let (backend, checks) = match scheme {
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => {
            ("redis", redis::checks(&a.store).await?)
        }
        "postgres" | "postgresql" => ("postgres", postgres_checks(&a.store).await?),
        "memory" | "mem" => (
            "memory",
            vec![Check::fail(
                "backend",
                "the memory store keeps records inside one process: they are lost when it exits \
                 and not shared with other consumers",
                "use redis://, redis-cluster:// or postgres:// in production",
            )],
        ),
        other => {
            return Err(Failure::Usage(format!(
                "unknown store URL scheme {other:?}: expected redis://, rediss://, redis-cluster://, rediss-cluster://, postgres:// or memory"
            )))
        }
    };
    print(out, backend, &checks);
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::ChecksFailed(format!(
            "{} check(s) failed: {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}

#[cfg(feature = "postgres")]
async fn postgres_checks(url: &str) -> Result<Vec<Check>, Failure> {
    postgres::checks(url).await
}

#[cfg(not(feature = "postgres"))]
async fn postgres_checks(_: &str) -> Result<Vec<Check>, Failure> {
    Err(Failure::Usage(
        "built without the `postgres` feature".into(),
    ))
}

fn print(out: Output, backend: &str, checks: &[Check]) {
    let worst = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    match out {
        Output::Json => {
            let items: Vec<_> = checks
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "status": c.status.as_str(),
                        "detail": c.detail,
                        "fix": c.fix,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({ "store": backend, "ok": worst != Status::Fail, "checks": items })
            );
        }
        Output::Text => {
            for c in checks {
                println!(
                    "{:<5} {:<17} {}",
                    c.status.as_str().to_uppercase(),
                    c.name,
                    c.detail
                );
                if let Some(fix) = &c.fix {
                    println!("{:<23} fix: {fix}", "");
                }
            }
            let n = |s| checks.iter().filter(|c| c.status == s).count();
            println!(
                "{backend}: {} passed, {} warning(s), {} failed",
                n(Status::Pass),
                n(Status::Warn),
                n(Status::Fail)
            );
        }
    }
}
