//! Processes under test: redis-server, encoder-svc, decoder-svc and the icae CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use icae_client::ConnectOptions;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::pki::TestCa;
pub use crate::ports::free_port;

/// A command for one of our binaries, pinned to f32 unless its arguments say `--dtype`:
/// `--dtype auto` would pick bf16 on a CI machine with AMX, and these tests compare outputs
/// that only f32 keeps identical across batch shapes.
pub fn our_command(name: &str) -> Command {
    let mut command = Command::new(bin(name));
    command.env("ICAE_DTYPE", "f32");
    command
}

/// Release binaries (built by scripts/setup.sh), or $ICAE_BIN_DIR.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("ICAE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace` first",
        path.display()
    );
    path
}

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("ICAE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/icae")
                });
            home.join(default)
        })
}

/// The default model directory (imported by scripts/setup.sh).
pub fn model_dir() -> PathBuf {
    env_path("ICAE_MODEL_DIR", "models/smollm2-135m-instruct")
}

/// The deterministic untrained adapter (written by scripts/setup.sh).
pub fn adapter_dir() -> PathBuf {
    env_path("ICAE_UNTRAINED_ADAPTER", "adapters/untrained-m32")
}

/// How clients must talk to a test Redis.
enum Security {
    Plain,
    Password(String),
    /// TLS only, with a server certificate signed by a private CA (PEM file paths).
    Tls {
        ca_cert: String,
        cert: String,
        key: String,
    },
}

/// A redis-server on a free loopback port, stopped by PID on drop.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    pid: Option<i32>,
    extra: Vec<String>,
    security: Security,
    _cert_dir: Option<TestCa>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// Start with extra redis-server arguments.
    pub fn start_with(extra: &[&str]) -> Redis {
        Self::start_secured(extra, Security::Plain)
    }

    /// Start with AUTH required (`requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Self::start_secured(
            &["--requirepass", password],
            Security::Password(password.into()),
        )
    }

    /// Start serving TLS only, with a server certificate for 127.0.0.1 from a fresh
    /// private CA (`ca_cert()`).
    pub fn start_tls() -> Redis {
        let ca = TestCa::new("icae-test-ca");
        let server = ca.server("server");
        let security = Security::Tls {
            ca_cert: ca.ca.cert_str().to_owned(),
            cert: server.cert_str().to_owned(),
            key: server.key_str().to_owned(),
        };
        let mut redis = Self::start_secured(&[], security);
        redis._cert_dir = Some(ca);
        redis
    }

    fn start_secured(extra: &[&str], security: Security) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            pid: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            security,
            _cert_dir: None,
        };
        redis.launch();
        redis
    }

    /// The URL services use, with the password or TLS scheme this server needs.
    pub fn url(&self) -> String {
        match &self.security {
            Security::Plain => format!("redis://127.0.0.1:{}", self.port),
            Security::Password(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            Security::Tls { .. } => format!("rediss://127.0.0.1:{}", self.port),
        }
    }

    /// The CA certificate of a TLS server.
    pub fn ca_cert(&self) -> Option<&Path> {
        match &self.security {
            Security::Tls { ca_cert, .. } => Some(Path::new(ca_cert)),
            _ => None,
        }
    }

    fn client(&self) -> redis::Client {
        match &self.security {
            Security::Tls { ca_cert, .. } => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca_cert).unwrap()),
                },
            ),
            _ => redis::Client::open(self.url()),
        }
        .unwrap()
    }

    fn launch(&mut self) {
        let pidfile = self.dir.path().join("redis.pid");
        let _ = std::fs::remove_file(&pidfile);
        let port = self.port.to_string();
        let listen: Vec<&str> = match &self.security {
            Security::Tls { ca_cert, cert, key } => vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca_cert,
                "--tls-auth-clients",
                "no",
            ],
            _ => vec!["--port", &port],
        };
        let status = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(&pidfile)
            .args(&self.extra)
            .stdout(Stdio::null())
            .status()
            .expect("redis-server must be installed (scripts/setup.sh installs it)");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                if self.ping() {
                    self.pid = Some(pid);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        self.client()
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A synchronous connection for poking at values directly.
    pub fn connection(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// Kill the server (SIGKILL) and wait until the port is closed.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.ping() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster on loopback (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                // The bus port would default to port + 10000: a port nobody reserved.
                let bus_port = free_port().to_string();
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus_port,
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|n| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut n.connection())
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return RedisCluster { nodes };
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Encoder,
    Decoder,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder-svc",
            Kind::Decoder => "decoder-svc",
        }
    }

    pub fn service_name(self) -> &'static str {
        match self {
            Kind::Encoder => icae_proto::ENCODER_SERVICE,
            Kind::Decoder => icae_proto::DECODER_SERVICE,
        }
    }
}

/// A running service binary; killed on drop unless it already exited.
pub struct Service {
    pub kind: Kind,
    pub port: u16,
    /// How the harness itself connects (TLS when the service serves TLS).
    pub client: ConnectOptions,
    child: Child,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// What it was started with, to start it again on the same port.
    launch: Launch,
}

/// A service's command line, kept to start it again.
struct Launch {
    kind: Kind,
    port: u16,
    redis_url: String,
    adapter: PathBuf,
    extra: Vec<String>,
}

impl Launch {
    /// Start the process, its stderr appended to `log`.
    fn spawn(&self, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        our_command(self.kind.binary())
            .arg("--model")
            .arg(model_dir())
            .arg("--adapter")
            .arg(&self.adapter)
            .args([
                "--redis-url",
                &self.redis_url,
                "--port",
                &self.port.to_string(),
                "--device",
                "cpu",
                "--redis-timeout-ms",
                "1000",
                // Loopback only, and no metrics port unless a test asks (the default
                // metrics port would collide between the services a test starts).
                "--host",
                "127.0.0.1",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                "0",
            ])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

impl Service {
    /// Start with the default model and adapter on CPU; `extra` flags override.
    pub async fn start(kind: Kind, redis_url: &str, extra: &[&str]) -> Service {
        Self::start_with_adapter(kind, redis_url, &adapter_dir(), extra).await
    }

    /// Start with `extra` flags (e.g. --tls-cert) and reach it, readiness included, with
    /// `client` (its `tls` makes the address https://).
    pub async fn start_with_client(
        kind: Kind,
        redis_url: &str,
        extra: &[&str],
        client: ConnectOptions,
    ) -> Service {
        Self::launch(kind, redis_url, &adapter_dir(), extra, client).await
    }

    pub async fn start_with_adapter(
        kind: Kind,
        redis_url: &str,
        adapter: &Path,
        extra: &[&str],
    ) -> Service {
        Self::launch(kind, redis_url, adapter, extra, ConnectOptions::default()).await
    }

    async fn launch(
        kind: Kind,
        redis_url: &str,
        adapter: &Path,
        extra: &[&str],
        client: ConnectOptions,
    ) -> Service {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("service.log");
        let launch = Launch {
            kind,
            port: free_port(),
            redis_url: redis_url.to_string(),
            adapter: adapter.to_path_buf(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        let mut service = Service {
            kind,
            port: launch.port,
            client,
            child: launch.spawn(&log),
            log,
            _log_dir: log_dir,
            launch,
        };
        service.wait_ready().await;
        service
    }

    /// Start the service again, on the same port and with the same flags, once it has
    /// exited (a pod replaced in a rollout); its log goes on in the same file.
    pub async fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "only a service that has exited is started again"
        );
        self.child = self.launch.spawn(&self.log);
        self.wait_ready().await;
    }

    pub fn url(&self) -> String {
        let scheme = if self.client.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited early with {status}:\n{}",
                    self.kind.binary(),
                    self.logs()
                );
            }
            if self.health(self.kind.service_name()).await == Some(ServingStatus::Serving) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready:\n{}",
                self.kind.binary(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// grpc.health.v1 status of `service` ("" for the server as a whole).
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = icae_client::channel(&self.url(), &self.client).await.ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    pub fn sigterm(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Wait for the process to exit (None on timeout).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Resident memory of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `icae COMMAND` on the default model and the tests' adapter, on the CPU, with `args`
/// and `--json`; the JSON it prints last.
pub fn icae_on_model(command: &str, args: &[&str]) -> serde_json::Value {
    let (model, adapter) = (model_dir(), adapter_dir());
    let mut all = vec![
        command,
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ];
    all.extend_from_slice(args);
    icae_json(&all)
}

/// Run the icae CLI and parse the JSON it prints last.
pub fn icae_json(args: &[&str]) -> serde_json::Value {
    let output = our_command("icae").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "icae {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Token ids of `text` as the default model's tokenizer gives them (`icae tokenize`).
pub fn tokenize(text: &str) -> Vec<u32> {
    let model = model_dir();
    let args = [
        "tokenize",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ];
    icae_json(&args)["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}
