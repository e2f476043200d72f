//! The Redis slot store: standalone (`redis://`, `rediss://`, with AUTH in the URL) or
//! Redis Cluster (`redis+cluster://host:port,host:port`, `rediss+cluster://…` for TLS, or a
//! comma-separated list of node URLs). TLS trusts the web PKI roots, or only the CA given
//! in [`StoreOptions::ca_cert_pem`] (a private CA, as in most in-cluster Redis set-ups).
//!
//! Connections are made lazily and re-made after failures, so a Redis outage shows up as
//! `StoreError::Unavailable` on the requests it affects and the service recovers by itself.

mod batch;
mod key;

pub use batch::KeyResult;
pub use key::{
    slot_content, slot_key, KeyError, KeyScope, Namespace, SlotKey, MAX_KEY_BYTES,
    MAX_NAMESPACE_LEN,
};

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Client, IntoConnectionInfo, RedisResult, TlsCertificates};
use thiserror::Error;
use tokio::sync::Mutex;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("invalid Redis URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// The key holds another Redis type (a list, a hash…): retrying will not help.
    #[error(
        "slot key {} holds another Redis type, not a slot value",
        crate::text::shown(key)
    )]
    WrongType { key: String },
    /// Redis is at maxmemory and evicts nothing: retrying soon will not help.
    #[error(
        "Redis is out of memory (maxmemory reached and nothing could be evicted): {0}; free \
         memory or raise maxmemory (under noeviction, an eviction policy such as volatile-lru \
         also helps)"
    )]
    OutOfMemory(String),
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

// One per process: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Standalone(Client),
    Cluster(ClusterClient),
}

/// How to reach Redis, besides the URL.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Timeout of connecting and of each operation.
    pub timeout: Duration,
    /// PEM of the CA that signed the server certificate (TLS URLs only); `None` trusts the
    /// web PKI roots.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// AUTH password given apart from the URL (overrides one in the URL).
    pub password: Option<String>,
}

impl StoreOptions {
    pub fn with_timeout(timeout: Duration) -> Self {
        StoreOptions {
            timeout,
            ca_cert_pem: None,
            password: None,
        }
    }
}

pub struct SlotStore {
    target: Target,
    conn: Mutex<Option<Conn>>,
    timeout: Duration,
    description: String,
}

impl SlotStore {
    /// Parse the URL (no network I/O happens here).
    pub fn new(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: redact(url),
            reason,
        };
        let nodes: Vec<String> = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            rest.split(',').map(|n| format!("redis://{n}")).collect()
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            rest.split(',').map(|n| format!("rediss://{n}")).collect()
        } else if url.contains(',') {
            url.split(',').map(str::to_owned).collect()
        } else {
            Vec::new()
        };
        let uses_tls = if nodes.is_empty() {
            url.starts_with("rediss://")
        } else {
            nodes.iter().all(|n| n.starts_with("rediss://"))
        };
        let certificates = match options.ca_cert_pem {
            Some(_) if !uses_tls => {
                return Err(bad(
                    "a CA certificate was given but the URL does not use TLS \
                     (rediss:// or rediss+cluster://)"
                        .into(),
                ))
            }
            Some(pem) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            }),
            None => None,
        };
        let timeout = options.timeout;
        let target = if nodes.is_empty() {
            let mut info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
            if let Some(password) = &options.password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            let client = match certificates {
                Some(certs) => Client::build_with_tls(info, certs),
                None => Client::open(info),
            };
            Target::Standalone(client.map_err(|e| bad(e.to_string()))?)
        } else {
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(password) = &options.password {
                builder = builder.password(password);
            }
            if let Some(certs) = certificates {
                builder = builder.certs(certs);
            }
            Target::Cluster(builder.build().map_err(|e| bad(e.to_string()))?)
        };
        Ok(SlotStore {
            target,
            conn: Mutex::new(None),
            timeout,
            description: redact(url),
        })
    }

    /// The URL with any password hidden, for logs and `Info`.
    pub fn describe(&self) -> &str {
        &self.description
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                let manager = self
                    .connect_within_timeout(client.get_connection_manager_with_config(config))
                    .await?;
                Conn::Standalone(manager)
            }
            Target::Cluster(client) => Conn::Cluster(
                self.connect_within_timeout(client.get_async_connection())
                    .await?,
            ),
        };
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Make a connection, failing as unavailable when it takes longer than the timeout.
    async fn connect_within_timeout<C>(
        &self,
        connect: impl std::future::Future<Output = RedisResult<C>>,
    ) -> Result<C, StoreError> {
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!("connecting timed out after {:?}", self.timeout))
            })?
            .map_err(unavailable)
    }

    /// Run one command on `key` with the operation timeout, recording its duration. A
    /// connection found broken (Redis restarted since it was last used) is re-made and the
    /// command sent once more within the same timeout: our commands are all idempotent.
    async fn run<T>(
        &self,
        op: &'static str,
        key: &str,
        f: impl AsyncOp<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let attempts = async {
            let conn = self.connection().await?;
            match f.call(conn).await {
                Err(e) if is_broken_connection(&e) => {
                    let conn = self.connection().await?;
                    f.call(conn).await.map_err(|e| classify(e, key))
                }
                result => result.map_err(|e| classify(e, key)),
            }
        };
        let result = tokio::time::timeout(self.timeout, attempts).await;
        metrics::histogram!(crate::metrics::REDIS_OP_DURATION, "op" => op)
            .record(started.elapsed().as_secs_f64());
        result.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "{op} timed out after {:?}",
                self.timeout
            )))
        })
    }

    /// Store `value` under `key` for `ttl` seconds (always with an expiry).
    pub async fn put(&self, key: &str, value: &[u8], ttl_seconds: u64) -> Result<(), StoreError> {
        self.put_many(&[(key, value)], ttl_seconds).await
    }

    /// The value under `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        single(self.get_many(&[key.to_string()]).await?)
    }

    /// The value under `key`, if present, with its expiry reset to `ttl_seconds` (GETEX).
    pub async fn get_refresh(
        &self,
        key: &str,
        ttl_seconds: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        single(
            self.get_refresh_many(&[key.to_string()], ttl_seconds)
                .await?,
        )
    }

    /// Seconds until `key` expires (None when it does not exist).
    pub async fn ttl(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let ttl: i64 = self
            .run("ttl", key, |mut conn: Conn| {
                let owned = key.to_string();
                async move {
                    match &mut conn {
                        Conn::Standalone(c) => c.ttl::<_, i64>(owned).await,
                        Conn::Cluster(c) => c.ttl::<_, i64>(owned).await,
                    }
                }
            })
            .await?;
        Ok((ttl >= 0).then_some(ttl))
    }
}

impl SlotStore {
    /// Refuse before expensive work when writing `bytes` would fail for lack of memory
    /// (Redis near maxmemory with `noeviction`). One INFO round trip; a Cluster is not
    /// checked (INFO would describe one node only) and relies on the write's own OOM error.
    pub async fn check_writable(&self, bytes: u64) -> Result<(), StoreError> {
        if matches!(self.target, Target::Cluster(_)) {
            return Ok(());
        }
        let info: String = self
            .run("info", "", |mut conn: Conn| async move {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("memory");
                match &mut conn {
                    Conn::Standalone(c) => cmd.query_async::<String>(c).await,
                    Conn::Cluster(c) => cmd.query_async::<String>(c).await,
                }
            })
            .await?;
        match memory_full(&info, bytes) {
            Some(detail) => Err(StoreError::OutOfMemory(detail)),
            None => Ok(()),
        }
    }
}

/// `Some(detail)` when INFO memory says `bytes` more would not fit: maxmemory set, no
/// eviction. (Redis refuses a write while its memory, counting the write's own buffers, is
/// above maxmemory; after the refusal INFO shows it below again.)
fn memory_full(info: &str, bytes: u64) -> Option<String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    let (used, max) = (number("used_memory")?, number("maxmemory")?);
    let full = max > 0
        && used.saturating_add(bytes) > max
        && field("maxmemory_policy") == Some("noeviction");
    full.then(|| {
        format!("used_memory {used} bytes + {bytes} bytes to store > maxmemory {max} bytes")
    })
}

/// The one result of a batch of one key.
fn single<T>(results: Vec<KeyResult<T>>) -> Result<T, StoreError> {
    results
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(StoreError::Unavailable("Redis returned no reply".into())))
}

/// An async closure over a cloned connection, callable again for a retry (a named trait
/// keeps `run` readable).
trait AsyncOp<T> {
    fn call(&self, conn: Conn) -> impl std::future::Future<Output = RedisResult<T>> + Send;
}

impl<T, F, Fut> AsyncOp<T> for F
where
    F: Fn(Conn) -> Fut,
    Fut: std::future::Future<Output = RedisResult<T>> + Send,
{
    fn call(&self, conn: Conn) -> impl std::future::Future<Output = RedisResult<T>> + Send {
        self(conn)
    }
}

/// The connection broke under the command (a reset, a broken pipe, an end of stream): the
/// connection manager re-makes it, and the command can be sent again.
fn is_broken_connection(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Errors that retrying cannot fix get their own kinds; the rest mean "unavailable".
fn classify(e: redis::RedisError, key: &str) -> StoreError {
    match e.code() {
        Some("WRONGTYPE") => StoreError::WrongType {
            key: key.to_string(),
        },
        Some("OOM") => StoreError::OutOfMemory(e.to_string()),
        _ => unavailable(e),
    }
}

/// Hide the password of `redis://user:password@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("rediss://user:pw@host:1"),
            "rediss://user:***@host:1"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    fn parse(url: &str, ca_cert_pem: Option<Vec<u8>>) -> Result<SlotStore, StoreError> {
        let options = StoreOptions {
            ca_cert_pem,
            ..StoreOptions::with_timeout(Duration::from_secs(1))
        };
        SlotStore::new(url, options)
    }

    #[test]
    fn a_full_noeviction_redis_is_out_of_memory() {
        let info = |used, policy| {
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\n\
                 maxmemory:1048576\r\nmaxmemory_policy:{policy}\r\n"
            )
        };
        // Below maxmemory, but not by the 100,000 bytes about to be written.
        let detail = memory_full(&info(1_000_000, "noeviction"), 100_000).unwrap();
        assert!(
            detail.contains("1000000") && detail.contains("1048576"),
            "{detail}"
        );
        assert!(memory_full(&info(1_000, "noeviction"), 100_000).is_none());
        assert!(memory_full(&info(1_000_000, "allkeys-lru"), 100_000).is_none());
        let unlimited = "used_memory:5\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction";
        assert!(memory_full(unlimited, 100_000).is_none());
    }

    #[test]
    fn urls_are_parsed_without_connecting() {
        assert!(parse("redis://127.0.0.1:1", None).is_ok());
        assert!(parse("redis+cluster://127.0.0.1:1,127.0.0.1:2", None).is_ok());
        assert!(parse("rediss+cluster://127.0.0.1:1,127.0.0.1:2", None).is_ok());
        let err = parse("http://nope", None).err().unwrap().to_string();
        assert!(err.contains("http://nope"), "{err}");
    }

    #[test]
    fn a_ca_certificate_needs_a_tls_url() {
        let pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        for url in [
            "redis://:pw@127.0.0.1:1",
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        ] {
            let err = parse(url, Some(pem.clone())).err().unwrap().to_string();
            assert!(err.contains("does not use TLS"), "{err}");
            assert!(!err.contains("pw"), "the password leaked: {err}");
        }
    }
}
