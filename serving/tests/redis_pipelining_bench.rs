//! Before/after of pipelining the store (ignored: a measurement, not a check; run with
//! `cargo test --release -p icae-serving --test redis_pipelining_bench -- --ignored --nocapture`).
//!
//! Against a real redis-server on loopback, alternating in one run: the per-key loop the
//! services ran before (one command per key, each waiting for its reply) and the batched
//! call they run now, for the three request shapes — a Compress of 16 documents that all
//! hit (GETEX), its writes when all miss (SET EX), and a Generate from 8 slot sets (GET).
//! Values are the size the default model stores (32 slots x 576 x f32 plus header). Round
//! trips are counted by Redis itself: `total_reads_processed`, its read events (for the
//! writes, 1.2 MB of values arrive in several reads however they are sent).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use icae_serving::store::{SlotStore, StoreOptions};

const ROUNDS: usize = 40;
const VALUE_BYTES: usize = 32 * 576 * 4 + 400;

struct RedisServer(Child, u16);

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let server = RedisServer(child, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }

    fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }

    /// Read events so far, asked over `conn` (kept open: opening and closing a connection
    /// per call would add read events of its own).
    fn reads(conn: &mut redis::Connection) -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_reads_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Median seconds and read events per call of `run`, over the rounds.
struct Measured {
    median_ms: f64,
    reads_per_call: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run explicitly"]
async fn per_key_vs_pipelined() {
    let redis = RedisServer::start();
    let store = SlotStore::new(
        &redis.url(),
        StoreOptions::with_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let keys: Vec<String> = (0..16).map(|i| format!("icae:v1:bench:{i:064}")).collect();
    let value = vec![7u8; VALUE_BYTES];
    let entries: Vec<(&str, &[u8])> = keys
        .iter()
        .map(|k| (k.as_str(), value.as_slice()))
        .collect();
    store.put_many(&entries, 3600).await.unwrap();

    // Each shape: (name, per-key as before, batched as now), alternated round by round.
    let mut times: Vec<[Vec<f64>; 2]> = (0..3).map(|_| [Vec::new(), Vec::new()]).collect();
    let mut reads: Vec<[u64; 2]> = vec![[0; 2]; 3];
    let mut info = redis.connection().unwrap();
    for round in 0..ROUNDS {
        for shape in 0..3 {
            for batched in [round % 2 == 0, round % 2 != 0] {
                let before = RedisServer::reads(&mut info);
                let started = Instant::now();
                match (shape, batched) {
                    (0, false) => {
                        for key in &keys {
                            store.get_refresh(key, 3600).await.unwrap().unwrap();
                        }
                    }
                    (0, true) => {
                        store.get_refresh_many(&keys, 3600).await.unwrap();
                    }
                    (1, false) => {
                        for (key, value) in &entries {
                            store.put(key, value, 3600).await.unwrap();
                        }
                    }
                    (1, true) => store.put_many(&entries, 3600).await.unwrap(),
                    (2, false) => {
                        for key in &keys[..8] {
                            store.get(key).await.unwrap().unwrap();
                        }
                    }
                    _ => {
                        store.get_many(&keys[..8]).await.unwrap();
                    }
                }
                let elapsed = started.elapsed().as_secs_f64();
                // The INFO call itself is one read event.
                let events = RedisServer::reads(&mut info) - before - 1;
                times[shape][batched as usize].push(elapsed * 1e3);
                reads[shape][batched as usize] += events;
            }
        }
    }
    let names = [
        "compress 16 hits (GETEX)",
        "compress 16 misses, writes (SET EX)",
        "generate 8 slot sets (GET)",
    ];
    for (shape, name) in names.iter().enumerate() {
        let [per_key, batched] = [0, 1].map(|b| Measured {
            median_ms: median(times[shape][b].clone()),
            reads_per_call: reads[shape][b] as f64 / ROUNDS as f64,
        });
        println!(
            "{name}: per-key {:.3} ms, {:.1} read events; pipelined {:.3} ms, {:.1} read \
             events; latency ratio {:.2}x",
            per_key.median_ms,
            per_key.reads_per_call,
            batched.median_ms,
            batched.reads_per_call,
            per_key.median_ms / batched.median_ms
        );
    }
}

/// What verifying slot values costs against reading them (ignored: a measurement; run with
/// `cargo test --release -p icae-serving --test redis_pipelining_bench -- --ignored
/// --nocapture`): a Generate from 8 slot sets of the default model's size, read the way the
/// decoder reads them (headers, then exactly the data), then decoded with the checks the
/// decoder runs (header, SHA-256 of the data, finite values), alternating in one run.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run explicitly"]
async fn verifying_slot_values_against_reading_them() {
    use icae_core::slots::{decode_slots, encode_slots, inspect_slot_prefix, SlotMeta};
    use tch::{Kind, Tensor};

    let redis = RedisServer::start();
    let store = SlotStore::new(
        &redis.url(),
        StoreOptions::with_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let meta = SlotMeta {
        fingerprint: "bench".into(),
        num_tokens: 128,
        num_segments: 1,
        created_at: 1,
        traceparent: None,
        token_digest: Some("0".repeat(64)),
        fidelity: Default::default(),
    };
    let keys: Vec<String> = (0..8).map(|i| format!("icae:v1:bench:{i:064}")).collect();
    let values: Vec<Vec<u8>> = keys
        .iter()
        .map(|_| {
            encode_slots(
                &Tensor::randn([32, 576], (Kind::Float, tch::Device::Cpu)),
                &meta,
            )
            .unwrap()
        })
        .collect();
    let entries: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    store.put_many(&entries, 3600).await.unwrap();

    let (mut read_ms, mut verify_ms) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let probes: Vec<(String, usize)> = keys.iter().map(|k| (k.clone(), 4096)).collect();
        let headers = store.get_prefixes("get_header", &probes).await.unwrap();
        let reads: Vec<(String, usize)> = keys
            .iter()
            .zip(&headers)
            .map(|(k, h)| {
                let header = inspect_slot_prefix(h.as_ref().unwrap()).unwrap();
                (k.clone(), header.value_bytes)
            })
            .collect();
        let data = store.get_prefixes("get", &reads).await.unwrap();
        read_ms.push(started.elapsed().as_secs_f64() * 1e3);

        let started = Instant::now();
        for value in &data {
            let _slots = decode_slots(value.as_ref().unwrap()).unwrap();
        }
        verify_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (read, verify) = (median(read_ms), median(verify_ms));
    println!(
        "generate 8 slot sets of {} bytes: read (headers, then data) {read:.3} ms; decode and \
         verify (SHA-256, finite) {verify:.3} ms; verify/read {:.2}",
        values[0].len(),
        verify / read
    );
}
