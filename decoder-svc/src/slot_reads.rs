//! Reading a Generate's slot sets: from Redis in two round trips, headers first, then data.
//!
//! The headers (under 1 KiB at the start of each value) say how many slots each set holds
//! and how many bytes it takes. So a request whose slots cannot fit the decoder's context
//! is refused before any data is read, each distinct key is read once however often the
//! request names it, the data read asks Redis for exactly the bytes its header promised
//! (never more, whatever was written since), and those bytes come out of a budget shared by
//! all requests (`--max-slot-read-mib`): a few large requests can fill neither the process's
//! memory nor the one Redis connection that every request shares.
//!
//! Errors are the ones the first failing slot set gives, as if the sets were read one by
//! one: the sources are checked in order up to the first one that is unusable without
//! reading anything, only the keys before it are read, and a failed round trip is reported
//! at the first key. Stored data that is unusable is DATA_LOSS; inline data that is
//! unusable is the client's INVALID_ARGUMENT.

use std::sync::Arc;
use std::time::{Duration, Instant};

use icae_core::slots::{
    decode_slots, header_bytes, inspect_slot_prefix, inspect_slots, SlotError, SlotHeader,
};
use icae_core::{InputError, ModelSummary};
use icae_serving::store::{KeyResult, SlotKey, SlotStore, StoreError};
use icae_serving::telemetry::link_to;
use icae_serving::{ServiceError, Tenant};
use tch::Tensor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, Span};

/// One slot set as the client named it.
pub enum SlotSource {
    Key(String),
    Inline(Vec<u8>),
    /// Neither a key nor inline slots.
    Missing,
}

/// Bytes read first from each key: one read holds a header of ours; a longer one (up to
/// `MAX_SLOT_HEADER_BYTES`) takes a second.
const HEADER_PROBE_BYTES: usize = 4096;
/// The read budget counts KiB (one semaphore permit each).
const BUDGET_UNIT: usize = 1024;

pub struct SlotReader {
    store: Arc<SlotStore>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// How long a request waits for its share of the budget (the Redis timeout).
    wait: Duration,
}

impl SlotReader {
    pub fn new(store: Arc<SlotStore>, budget_bytes: usize, wait: Duration) -> Self {
        SlotReader {
            store,
            budget: Arc::new(Semaphore::new(budget_bytes.div_ceil(BUDGET_UNIT))),
            budget_bytes,
            wait,
        }
    }

    /// Every slot set, in order, decoded and checked against the model; refused before the
    /// data is read when the slots and `other_positions` (prompt, special tokens, new tokens)
    /// cannot fit the context.
    pub async fn read(
        &self,
        sources: Vec<SlotSource>,
        summary: &ModelSummary,
        tenant: Option<&Tenant>,
        other_positions: usize,
    ) -> Result<Vec<Tensor>, ServiceError> {
        let plans = plan_all(sources, &summary.fingerprint, tenant);
        let keys = distinct_keys(&plans);
        let headers = self.read_headers(&keys).await;

        let mut sets = Vec::with_capacity(plans.len());
        let mut value_bytes = vec![0; keys.len()];
        let mut slots = 0;
        for (index, plan) in plans.into_iter().enumerate() {
            let (set, header) = match plan? {
                Planned::Key(key) => {
                    let position = position_of(&keys, &key.key);
                    let prefix = match &headers {
                        Ok(headers) => headers[position].as_ref().map_err(|e| e.clone())?,
                        Err(e) => return Err(e.clone().into()),
                    };
                    let header = stored_header(&key.key, prefix)?;
                    value_bytes[position] = header.value_bytes;
                    (Sized::Stored { key, position }, header)
                }
                Planned::Inline(value) => {
                    let header =
                        inspect_slots(&value).map_err(|e| Origin::Inline(index).unusable(e))?;
                    (Sized::Inline { index, value }, header)
                }
            };
            check_header(&header, set.origin(), summary)?;
            slots += header.shape[0];
            sets.push(set);
        }
        let limit = summary.context_length;
        if slots + other_positions > limit {
            return Err(InputError::SlotsOverContext {
                slots,
                others: other_positions,
                limit,
            }
            .into());
        }

        let _reserved = self.reserve(value_bytes.iter().sum()).await?;
        let reads: Vec<(String, usize)> = keys.into_iter().zip(value_bytes).collect();
        let mut values = self.store.get_prefixes("get", &reads).await;
        let mut decoded: Vec<Option<Tensor>> = reads.iter().map(|_| None).collect();
        let mut tensors = Vec::with_capacity(sets.len());
        for set in &sets {
            let tensor = match set {
                Sized::Stored { position, .. } => match &decoded[*position] {
                    Some(tensor) => tensor.shallow_clone(),
                    None => {
                        let value = match &mut values {
                            Ok(values) => {
                                std::mem::replace(&mut values[*position], Ok(Vec::new()))?
                            }
                            Err(e) => return Err(e.clone().into()),
                        };
                        let tensor = decode(set.origin(), &value, summary)?;
                        decoded[*position] = Some(tensor.shallow_clone());
                        tensor
                    }
                },
                Sized::Inline { value, .. } => decode(set.origin(), value, summary)?,
            };
            tensors.push(tensor);
        }
        Ok(tensors)
    }

    /// The start of each value, long enough to hold its header (empty where the key is
    /// absent): one round trip, and a second for the rare header longer than the probe.
    async fn read_headers(&self, keys: &[String]) -> Result<Vec<KeyResult<Vec<u8>>>, StoreError> {
        let probes: Vec<(String, usize)> = keys
            .iter()
            .map(|k| (k.clone(), HEADER_PROBE_BYTES))
            .collect();
        let mut prefixes = self.store.get_prefixes("get_header", &probes).await?;
        let longer: Vec<(usize, (String, usize))> = prefixes
            .iter()
            .enumerate()
            .filter_map(|(i, prefix)| {
                let prefix = prefix.as_ref().ok()?;
                let needed = header_bytes(prefix).ok()?;
                (needed > prefix.len() && prefix.len() == HEADER_PROBE_BYTES)
                    .then(|| (i, (keys[i].clone(), needed)))
            })
            .collect();
        if !longer.is_empty() {
            let reads: Vec<(String, usize)> = longer.iter().map(|(_, r)| r.clone()).collect();
            let again = self.store.get_prefixes("get_header", &reads).await?;
            for ((i, _), prefix) in longer.into_iter().zip(again) {
                prefixes[i] = prefix;
            }
        }
        Ok(prefixes)
    }

    /// Take `bytes` from the budget all requests share, waiting at most the Redis timeout.
    async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ServiceError> {
        if bytes > self.budget_bytes {
            return Err(ServiceError::SlotReadTooLarge {
                bytes,
                limit: self.budget_bytes,
            });
        }
        // Fits u32: the flag's bound keeps the whole budget under 2^32 units.
        let units = bytes.div_ceil(BUDGET_UNIT) as u32;
        let started = Instant::now();
        let acquired =
            tokio::time::timeout(self.wait, self.budget.clone().acquire_many_owned(units)).await;
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ServiceError::Internal("the slot read budget closed".into())),
            Err(_) => Err(ServiceError::SlotReadsBusy {
                bytes,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }
}

/// A slot set checked as far as possible without reading Redis.
enum Planned {
    Key(SlotKey),
    Inline(Vec<u8>),
}

/// A slot set whose header passed: a distinct key's position, or the inline value.
enum Sized {
    Stored { key: SlotKey, position: usize },
    Inline { index: usize, value: Vec<u8> },
}

impl Sized {
    fn origin(&self) -> Origin<'_> {
        match self {
            Sized::Stored { key, .. } => Origin::Stored(key),
            Sized::Inline { index, .. } => Origin::Inline(*index),
        }
    }
}

/// Where a slot value came from: it decides whose fault an unusable value is (stored:
/// DATA_LOSS; inline: the client's INVALID_ARGUMENT) and how errors name it.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Stored(&'a SlotKey),
    Inline(usize),
}

impl Origin<'_> {
    fn unusable(self, source: SlotError) -> ServiceError {
        match self {
            Origin::Stored(key) => ServiceError::Corrupt {
                key: key.key.clone(),
                source,
            },
            Origin::Inline(index) => ServiceError::BadInlineSlots { index, source },
        }
    }

    fn name(self) -> String {
        match self {
            Origin::Stored(key) => key.key.clone(),
            Origin::Inline(index) => format!("inline slot set {index}"),
        }
    }
}

/// The plans in order, up to and including the first source refused without reading.
fn plan_all(
    sources: Vec<SlotSource>,
    fingerprint: &str,
    tenant: Option<&Tenant>,
) -> Vec<Result<Planned, ServiceError>> {
    let mut plans = Vec::with_capacity(sources.len());
    for (index, source) in sources.into_iter().enumerate() {
        let plan = plan(index, source, fingerprint, tenant);
        let refused = plan.is_err();
        plans.push(plan);
        if refused {
            break;
        }
    }
    plans
}

/// Check what can be checked before reading: the key's schema, tenant and model.
fn plan(
    index: usize,
    source: SlotSource,
    fingerprint: &str,
    tenant: Option<&Tenant>,
) -> Result<Planned, ServiceError> {
    match source {
        SlotSource::Key(raw) => {
            let key = SlotKey::parse(&raw, tenant)?;
            // The key names the model that made it: no need to read another model's.
            if key.fingerprint != fingerprint {
                return Err(ServiceError::WrongModel {
                    key: key.key,
                    found: key.fingerprint,
                    expected: fingerprint.to_string(),
                });
            }
            Ok(Planned::Key(key))
        }
        SlotSource::Inline(value) => Ok(Planned::Inline(value)),
        SlotSource::Missing => Err(InputError::BadParameter {
            name: "slots",
            value: format!("item {index} is empty"),
            expected: "each item needs a key or inline_slots".into(),
        }
        .into()),
    }
}

/// Each key the plans name, once, in the order first named.
fn distinct_keys(plans: &[Result<Planned, ServiceError>]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for plan in plans {
        if let Ok(Planned::Key(key)) = plan {
            if !keys.contains(&key.key) {
                keys.push(key.key.clone());
            }
        }
    }
    keys
}

fn position_of(keys: &[String], key: &str) -> usize {
    keys.iter()
        .position(|k| k == key)
        .expect("every planned key is among the distinct keys")
}

/// The header of a stored value from its first bytes (empty: the key does not exist).
fn stored_header(key: &str, prefix: &[u8]) -> Result<SlotHeader, ServiceError> {
    if prefix.is_empty() {
        return Err(ServiceError::NotFound { key: key.into() });
    }
    inspect_slot_prefix(prefix).map_err(|source| ServiceError::Corrupt {
        key: key.into(),
        source,
    })
}

/// What a header alone shows: the model that made the slots and their width.
fn check_header(
    header: &SlotHeader,
    origin: Origin<'_>,
    summary: &ModelSummary,
) -> Result<(), ServiceError> {
    if header.meta.fingerprint != summary.fingerprint {
        return Err(ServiceError::WrongModel {
            key: origin.name(),
            found: header.meta.fingerprint.clone(),
            expected: summary.fingerprint.clone(),
        });
    }
    if header.shape[1] != summary.hidden_size {
        return Err(origin.unusable(SlotError::BadShape(header.shape.to_vec())));
    }
    // Another document's valid value written under this key is not this key's slots.
    if let (Origin::Stored(key), Some(found)) = (origin, &header.meta.token_digest) {
        if *found != key.token_digest {
            return Err(origin.unusable(SlotError::OtherDocument {
                found: found.clone(),
                expected: key.token_digest.clone(),
            }));
        }
    }
    Ok(())
}

/// Decode a value whose header passed. A stored value was read to the length its header
/// promised (empty: the key was deleted since) and its header is checked again: the value
/// may have been rewritten between the two reads.
fn decode(
    origin: Origin<'_>,
    value: &[u8],
    summary: &ModelSummary,
) -> Result<Tensor, ServiceError> {
    if let Origin::Stored(key) = origin {
        if value.is_empty() {
            return Err(ServiceError::NotFound {
                key: key.key.clone(),
            });
        }
        let header = inspect_slots(value).map_err(|e| origin.unusable(e))?;
        check_header(&header, origin, summary)?;
    }
    let (slots, meta) = decode_slots(value).map_err(|e| origin.unusable(e))?;
    // Link this request's trace to the encoder request that made the slots.
    if let Some(encoder_trace) = &meta.traceparent {
        link_to(&Span::current(), encoder_trace);
    }
    let name = origin.name();
    debug!(slots = %name, encoder_traceparent = meta.traceparent.as_deref().unwrap_or(""), "slots fetched");
    Ok(slots)
}
