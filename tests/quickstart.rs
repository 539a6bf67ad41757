//! The README's first command, `./scripts/quickstart.sh`, run exactly as a newcomer runs it (a
//! release build of the `quickstart` example, then the run: an in-process Kafka mock cluster and
//! the in-memory store). It must exit 0 and print its own check: the handler ran once per
//! distinct key and every order was committed (the example exits non-zero when the check fails).
//!
//! Slow the first time (the release build); the build prerequisites it would install are
//! already there when `scripts/test.sh` runs it.
#![cfg(unix)]

use std::process::Command;

#[test]
fn the_readme_quickstart_runs_as_written() {
    let out = Command::new("./scripts/quickstart.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("start ./scripts/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    assert!(
        out.status.success(),
        "quickstart exited with {}\nstdout:\n{stdout}\nstderr (last lines, newest first):\n{}",
        out.status,
        tail.join("\n")
    );
    assert!(
        stdout.lines().any(
            |l| l.trim().starts_with("check: handler runs == distinct keys")
                && l.trim_end().ends_with("OK")
        ),
        "no passing check line in:\n{stdout}"
    );
}
