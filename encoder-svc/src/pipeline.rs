//! The compress pipeline in domain types: validate → tokenize → cache lookup → batcher →
//! encode → store. The gRPC handler only converts to and from these types.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use icae_core::slots::{decode_slots, encode_slots, SlotMeta};
use icae_core::tokenizer::TextTokenizer;
use icae_core::{check_token_ids, InputError, ModelSummary};
use icae_serving::metrics as names;
use icae_serving::store::{slot_key, Namespace, SlotStore};
use icae_serving::{Limits, ServiceError};

use crate::batcher::Batcher;

/// One document as the client sent it.
pub enum DocumentInput {
    Text(String),
    TokenIds(Vec<u32>),
    /// Neither text nor token ids.
    Missing,
}

pub struct CompressInput {
    pub documents: Vec<DocumentInput>,
    /// 0: the server's default.
    pub ttl_seconds: u32,
    pub namespace: String,
    pub return_slots: bool,
    /// Stored with the slots, so the decoder can link its trace to this request's.
    pub traceparent: Option<String>,
}

/// Where one document's slots are stored, and what they hold.
pub struct StoredSlots {
    pub key: String,
    pub num_slots: usize,
    pub num_tokens: usize,
    pub num_segments: usize,
    pub fingerprint: String,
    pub expires_at_unix: i64,
    pub cache_hit: bool,
    /// The stored value itself, when the client asked for it.
    pub value: Option<Vec<u8>>,
}

#[derive(Default)]
pub struct CompressTimings {
    pub queue_seconds: f64,
    pub tokenize_seconds: f64,
    pub store_seconds: f64,
    pub model_seconds: f64,
    pub total_seconds: f64,
}

pub struct CompressOutput {
    pub documents: Vec<StoredSlots>,
    pub timings: CompressTimings,
}

pub struct CompressPipeline {
    pub store: Arc<SlotStore>,
    pub tokenizer: Arc<TextTokenizer>,
    pub batcher: Batcher,
    pub limits: Limits,
}

impl CompressPipeline {
    pub async fn run(&self, input: CompressInput) -> Result<CompressOutput, ServiceError> {
        let started = Instant::now();
        let summary = self.batcher.summary()?.clone();
        let ttl = self.ttl(input.ttl_seconds)?;
        let namespace = Namespace::parse(&input.namespace)?;
        let count = input.documents.len();
        let max_documents = self.limits.max_documents_per_request;
        if count == 0 || count > max_documents {
            return Err(InputError::BadParameter {
                name: "documents",
                value: format!("{count} documents"),
                expected: format!("must hold 1..={max_documents} documents"),
            }
            .into());
        }
        let mut timings = CompressTimings::default();

        let tokenize_started = Instant::now();
        let token_ids = self.tokenize(input.documents, summary.vocab_size).await?;
        timings.tokenize_seconds = tokenize_started.elapsed().as_secs_f64();

        let store_started = Instant::now();
        let keys: Vec<String> = token_ids
            .iter()
            .map(|ids| slot_key(&namespace, &summary.fingerprint, ids))
            .collect();
        let mut stored = self.lookup(&keys, &summary, ttl).await?;
        timings.store_seconds = store_started.elapsed().as_secs_f64();

        let misses: Vec<usize> = (0..count).filter(|&i| stored[i].is_none()).collect();
        if !misses.is_empty() {
            let docs = misses.iter().map(|&i| token_ids[i].clone()).collect();
            let batch = self.batcher.compress(docs).await?;
            timings.queue_seconds = batch.queue_seconds;
            timings.model_seconds = batch.model_seconds;
            let put_started = Instant::now();
            let created_at = unix_now() as u64;
            for (&i, doc) in misses.iter().zip(batch.docs) {
                let meta = SlotMeta {
                    fingerprint: summary.fingerprint.clone(),
                    num_tokens: doc.num_tokens,
                    num_segments: doc.num_segments,
                    created_at,
                    traceparent: input.traceparent.clone(),
                };
                let value = encode_slots(&doc.slots, &meta)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                metrics::histogram!(names::SLOT_BYTES).record(value.len() as f64);
                self.store.put(&keys[i], &value, u64::from(ttl)).await?;
                let num_slots = doc.slots.size()[0] as usize;
                stored[i] = Some(stored_slots(&keys[i], num_slots, &meta, ttl, false, value));
            }
            timings.store_seconds += put_started.elapsed().as_secs_f64();
        }

        let documents = stored
            .into_iter()
            .flatten()
            .map(|mut doc| {
                if !input.return_slots {
                    doc.value = None;
                }
                doc
            })
            .collect();
        timings.total_seconds = started.elapsed().as_secs_f64();
        Ok(CompressOutput { documents, timings })
    }

    fn ttl(&self, requested: u32) -> Result<u32, ServiceError> {
        let max = self.limits.max_ttl_seconds;
        match requested {
            0 => Ok(self.limits.default_ttl_seconds),
            t if t > max => Err(InputError::BadParameter {
                name: "ttl_seconds",
                value: t.to_string(),
                expected: format!("must be at most {max} (30 days)"),
            }
            .into()),
            t => Ok(t),
        }
    }

    /// Token ids of every document (off the async workers), checked against the limits.
    async fn tokenize(
        &self,
        documents: Vec<DocumentInput>,
        vocab: usize,
    ) -> Result<Vec<Vec<u32>>, ServiceError> {
        let tokenizer = self.tokenizer.clone();
        let limit = self.limits.max_input_tokens;
        tokio::task::spawn_blocking(move || tokenize_all(&tokenizer, documents, limit, vocab))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))?
    }

    /// Cache lookup: a stored value is reused (and its TTL refreshed); one that does not
    /// decode is treated as missing, so it is recomputed and overwritten.
    async fn lookup(
        &self,
        keys: &[String],
        summary: &ModelSummary,
        ttl: u32,
    ) -> Result<Vec<Option<StoredSlots>>, ServiceError> {
        let mut stored = Vec::with_capacity(keys.len());
        for key in keys {
            let hit = match self.store.get_refresh(key, u64::from(ttl)).await? {
                Some(value) => decode_slots(&value).ok().map(|(slots, meta)| {
                    let num_slots = slots.size()[0] as usize;
                    let meta = SlotMeta {
                        fingerprint: summary.fingerprint.clone(),
                        ..meta
                    };
                    stored_slots(key, num_slots, &meta, ttl, true, value)
                }),
                None => None,
            };
            let result = if hit.is_some() { "hit" } else { "miss" };
            metrics::counter!(names::CACHE_LOOKUPS_TOTAL, "result" => result).increment(1);
            stored.push(hit);
        }
        Ok(stored)
    }
}

fn stored_slots(
    key: &str,
    num_slots: usize,
    meta: &SlotMeta,
    ttl: u32,
    cache_hit: bool,
    value: Vec<u8>,
) -> StoredSlots {
    StoredSlots {
        key: key.to_string(),
        num_slots,
        num_tokens: meta.num_tokens,
        num_segments: meta.num_segments,
        fingerprint: meta.fingerprint.clone(),
        expires_at_unix: unix_now() + i64::from(ttl),
        cache_hit,
        value: Some(value),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn tokenize_all(
    tokenizer: &TextTokenizer,
    documents: Vec<DocumentInput>,
    limit: usize,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ServiceError> {
    documents
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            let ids = match doc {
                DocumentInput::Text(text) => {
                    if text.trim().is_empty() {
                        return Err(document_error(index, InputError::EmptyText));
                    }
                    tokenizer
                        .encode(&text)
                        .map_err(|e| ServiceError::Internal(e.to_string()))?
                }
                DocumentInput::TokenIds(ids) => ids,
                DocumentInput::Missing => return Err(document_error(index, InputError::EmptyText)),
            };
            check_token_ids(&ids, limit, vocab).map_err(|e| document_error(index, e))?;
            Ok(ids)
        })
        .collect()
}

/// Name the document so a batch request says which one failed.
fn document_error(index: usize, error: InputError) -> ServiceError {
    ServiceError::Input(InputError::Document {
        index,
        error: Box::new(error),
    })
}
