//! The runnable examples started as processes, the way users run them: stdout and stderr are
//! collected line by line while the process runs, SIGTERM stops it, and a failed test never leaves
//! it running.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Lines = Arc<Mutex<Vec<String>>>;

/// A running example process.
pub struct ExampleProcess {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

fn collect(pipe: impl Read + Send + 'static, sink: Lines) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    })
}

impl ExampleProcess {
    /// Starts `cmd` with `RUST_LOG=rust_log`, collecting both output streams.
    pub fn start(mut cmd: Command, rust_log: &str) -> ExampleProcess {
        let mut child = cmd
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start example");
        let (stdout, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        ExampleProcess {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Lines written to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    /// Lines written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lines").clone()
    }

    /// Waits (at most `within`) for a stderr line for which `find` returns something.
    pub async fn wait_for_stderr<T>(
        &self,
        within: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.stderr_lines().iter().find_map(|l| find(l)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "expected line not written to stderr within {within:?}: {:?}",
                self.stderr_lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (at most 30 s) for the exit: its status, stdout lines and stderr text.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>, String) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM sent");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipes close with the process: the readers finish with everything it wrote.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.stdout_lines(), self.stderr_lines().join("\n"))
    }
}

impl Drop for ExampleProcess {
    fn drop(&mut self) {
        // A failed assertion must not leave the process running.
        let _ = self.child.kill();
    }
}
