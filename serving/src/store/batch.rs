//! Several keys in one round trip. A Compress of N documents reads N keys and writes up to N;
//! a Generate from N slot sets reads N: one command per key, each waiting for its reply,
//! would pay N network round trips where one suffices.
//!
//! Standalone Redis gets one pipeline of the N commands (sent together, replies read
//! together). A Redis Cluster refuses a pipeline whose keys live in different hash slots,
//! and our keys spread over all slots (they have no hash tag, so that one tenant's or
//! model's keys do not all land on one node): there the commands are sent concurrently over
//! the one multiplexed cluster connection, which writes them to each node without waiting
//! for replies — one round trip per node in practice, and correct for any slot layout.
//!
//! Each key gets its own outcome: one key holding another Redis type (WRONGTYPE) or a write
//! refused for memory (OOM) does not hide the others' results. Losing the connection or the
//! timeout fails the whole batch.

use redis::{Cmd, FromRedisValue, RedisResult};
use tokio::task::JoinSet;

use super::{classify, Conn, SlotStore, StoreError};

/// One key's outcome within a batch.
pub type KeyResult<T> = Result<T, StoreError>;

impl SlotStore {
    /// The values under `keys` (None where absent), in order, in one round trip.
    pub async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<KeyResult<Option<Vec<u8>>>>, StoreError> {
        let commands = keys.iter().map(|key| {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            (key.clone(), cmd)
        });
        self.batch("get", commands.collect()).await
    }

    /// The first `bytes` bytes (at least 1) of the value under each key, in order, in one
    /// round trip (GETRANGE), recorded as `op`: a reader fetches a header first, then
    /// exactly the bytes the header promised, and never more than it planned for. Empty
    /// where the key is absent.
    pub async fn get_prefixes(
        &self,
        op: &'static str,
        reads: &[(String, usize)],
    ) -> Result<Vec<KeyResult<Vec<u8>>>, StoreError> {
        let commands = reads.iter().map(|(key, bytes)| {
            let mut cmd = redis::cmd("GETRANGE");
            cmd.arg(key).arg(0).arg(bytes.saturating_sub(1));
            (key.clone(), cmd)
        });
        self.batch(op, commands.collect()).await
    }

    /// The values under `keys` (None where absent), in order, each with its expiry reset to
    /// `ttl_seconds` (GETEX), in one round trip.
    pub async fn get_refresh_many(
        &self,
        keys: &[String],
        ttl_seconds: u64,
    ) -> Result<Vec<KeyResult<Option<Vec<u8>>>>, StoreError> {
        let commands = keys.iter().map(|key| {
            let mut cmd = redis::cmd("GETEX");
            cmd.arg(key).arg("EX").arg(ttl_seconds);
            (key.clone(), cmd)
        });
        self.batch("getex", commands.collect()).await
    }

    /// Store every `(key, value)` for `ttl_seconds` (always with an expiry) in one round
    /// trip. All are attempted; the first failure in order is the error.
    pub async fn put_many(
        &self,
        entries: &[(&str, &[u8])],
        ttl_seconds: u64,
    ) -> Result<(), StoreError> {
        let commands = entries.iter().map(|(key, value)| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(*key).arg(*value).arg("EX").arg(ttl_seconds);
            (key.to_string(), cmd)
        });
        let results: Vec<KeyResult<()>> = self.batch("set", commands.collect()).await?;
        results.into_iter().collect()
    }

    /// Run `(key, command)` pairs in one round trip (see the module comment), recorded as
    /// one `op` in the Redis duration histogram.
    async fn batch<T>(
        &self,
        op: &'static str,
        commands: Vec<(String, Cmd)>,
    ) -> Result<Vec<KeyResult<T>>, StoreError>
    where
        T: FromRedisValue + Send + 'static,
    {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = commands.iter().map(|(key, _)| key.clone()).collect();
        let first = keys[0].clone();
        let results: Vec<RedisResult<T>> = self
            .run(op, &first, |conn: Conn| {
                let commands = commands.clone();
                async move {
                    match conn {
                        Conn::Standalone(mut c) => {
                            let mut pipe = redis::pipe();
                            pipe.ignore_errors();
                            for (_, cmd) in commands {
                                pipe.add_command(cmd);
                            }
                            pipe.query_async::<Vec<RedisResult<T>>>(&mut c).await
                        }
                        Conn::Cluster(c) => Ok(concurrently(c, commands).await),
                    }
                }
            })
            .await?;
        Ok(results
            .into_iter()
            .zip(&keys)
            .map(|(result, key)| result.map_err(|e| classify(e, key)))
            .collect())
    }
}

/// Send every command at once over the multiplexed cluster connection; results in order.
async fn concurrently<T>(
    conn: redis::cluster_async::ClusterConnection,
    commands: Vec<(String, Cmd)>,
) -> Vec<RedisResult<T>>
where
    T: FromRedisValue + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let count = commands.len();
    for (index, (_, cmd)) in commands.into_iter().enumerate() {
        let mut conn = conn.clone();
        tasks.spawn(async move { (index, cmd.query_async::<T>(&mut conn).await) });
    }
    let mut results: Vec<Option<RedisResult<T>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        // A task only ends by finishing (none is aborted), unless it panicked.
        if let Ok((index, result)) = joined {
            results[index] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a cluster command task failed",
                )))
            })
        })
        .collect()
}
