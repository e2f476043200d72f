//! The compress pipeline in domain types: validate → tokenize → cache lookup (verified) →
//! batcher → encode → store. The gRPC handler only converts to and from these types.
//! Everything a request may cost is checked before the work: text bytes before tokenizing,
//! tokens and the response size before the model, Redis memory before computing.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use icae_core::refine::DEFAULT_LEARNING_RATE;
use icae_core::slots::{decode_slots, encode_slots, inspect_slots, token_digest, SlotMeta};
use icae_core::tokenizer::TextTokenizer;
use icae_core::{
    check_slots_per_segment, check_token_ids, InputError, ModelSummary, RefineOptions, SlotDtype,
};
use icae_serving::metrics as names;
use icae_serving::store::{slot_content, slot_key, KeyScope, Namespace, SlotStore, StoreError};
use icae_serving::{check_text_bytes, is_blank, EncoderLimits, ServiceError, Tenant};

use crate::batcher::Batcher;
use crate::ttl::SlotTtl;

/// One document as the client sent it.
pub enum DocumentInput {
    Text(String),
    TokenIds(Vec<u32>),
    /// Neither text nor token ids.
    Missing,
}

pub struct CompressInput {
    pub documents: Vec<DocumentInput>,
    /// How long Redis keeps the slots (the server's default when the request left it unset).
    pub ttl: SlotTtl,
    pub namespace: String,
    pub return_slots: bool,
    /// Stored with the slots, so the decoder can link its trace to this request's.
    pub traceparent: Option<String>,
    /// The authenticated caller: its keys live under its tenant.
    pub tenant: Option<Tenant>,
    /// Refinement steps asked for (0: plain ICAE) and the target loss.
    pub refine_steps: u32,
    pub target_loss: Option<f64>,
    /// Measure the reconstruction loss of plain slots too.
    pub reconstruction_loss: bool,
    /// Slots per segment (0: the adapter's mem_size, the rate it was trained for).
    pub slots_per_segment: u32,
}

/// Bytes a returned document adds besides its slot data (header, key, handle fields).
const RETURNED_DOCUMENT_OVERHEAD: usize = 2048;

/// Where one document's slots are stored, and what they hold.
pub struct StoredSlots {
    pub key: String,
    pub num_slots: usize,
    pub num_tokens: usize,
    pub num_segments: usize,
    pub fingerprint: String,
    /// When the key expires: when it was stored or refreshed, plus the TTL.
    pub expire_time: SystemTime,
    pub cache_hit: bool,
    /// Refinement steps run and the reconstruction loss, when measured.
    pub refine_steps: usize,
    pub reconstruction_loss: Option<f64>,
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
    pub limits: EncoderLimits,
    /// What slots are stored in (`--slot-dtype`), whatever the model computes them in.
    pub slot_dtype: SlotDtype,
}

impl CompressPipeline {
    pub async fn run(&self, input: CompressInput) -> Result<CompressOutput, ServiceError> {
        let started = Instant::now();
        let summary = self.batcher.summary()?.clone();
        let ttl = input.ttl;
        let refine = self.refine_options(&input)?;
        let slots_per_segment = match input.slots_per_segment as usize {
            0 => summary.mem_size,
            k => {
                check_slots_per_segment(k, summary.mem_size)?;
                k
            }
        };
        // Fewer slots than the adapter's: a rate it was not trained for, stored under its
        // own key (the suffix names the slots per segment).
        let rate_suffix = (slots_per_segment != summary.mem_size).then_some(slots_per_segment);
        let scope = KeyScope {
            tenant: input.tenant,
            namespace: Namespace::parse(&input.namespace)?,
        };
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
        self.check_request_tokens(&token_ids)?;
        if refine.is_some() {
            self.check_refine_tokens(&token_ids)?;
        }
        if input.return_slots {
            self.check_response_size(&token_ids, &summary, slots_per_segment)?;
        }

        let store_started = Instant::now();
        // Each document's content address, computed once: its key, the check of a cached
        // value and the metadata of a new one all use it.
        let digests: Vec<String> = token_ids.iter().map(|ids| token_digest(ids)).collect();
        let (steps, target) = refine.map_or((0, None), |r| (r.steps, r.target_loss));
        let keys: Vec<String> = digests
            .iter()
            .map(|digest| {
                let content = slot_content(digest, rate_suffix, steps, target);
                slot_key(&scope, &summary.fingerprint, &content)
            })
            .collect();
        let wanted = Wanted {
            slots_per_segment,
            refine_steps: steps,
            target_loss: target,
            scored: refine.is_some(),
        };
        let mut stored = self
            .lookup(&keys, &token_ids, &digests, &summary, ttl, wanted)
            .await?;
        timings.store_seconds = store_started.elapsed().as_secs_f64();

        let misses: Vec<usize> = (0..count).filter(|&i| stored[i].is_none()).collect();
        if !misses.is_empty() {
            // Computing is the expensive part: refuse first when the result cannot be stored.
            let bytes: usize = misses
                .iter()
                .map(|&i| self.slot_value_bytes(&summary, token_ids[i].len(), slots_per_segment))
                .sum();
            self.store.check_writable(bytes as u64).await?;
            let docs = misses.iter().map(|&i| token_ids[i].clone()).collect();
            let batch = self
                .batcher
                .compress(docs, slots_per_segment, refine)
                .await?;
            timings.queue_seconds = batch.queue_seconds;
            timings.model_seconds = batch.model_seconds;
            let put_started = Instant::now();
            let created_at = unix_now() as u64;
            let mut values = Vec::with_capacity(misses.len());
            for ((&i, doc), fidelity) in misses.iter().zip(batch.docs).zip(batch.fidelity) {
                let meta = SlotMeta {
                    fingerprint: summary.fingerprint.clone(),
                    num_tokens: doc.num_tokens,
                    num_segments: doc.num_segments,
                    created_at,
                    traceparent: input.traceparent.clone(),
                    token_digest: Some(digests[i].clone()),
                    fidelity,
                };
                let value = encode_slots(&self.slot_dtype.cast(&doc.slots), &meta)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                metrics::histogram!(names::SLOT_BYTES).record(value.len() as f64);
                let num_slots = doc.slots.size()[0] as usize;
                values.push((i, num_slots, meta, value));
            }
            // Every new value in one round trip, each with its TTL.
            let entries: Vec<(&str, &[u8])> = values
                .iter()
                .map(|(i, _, _, value)| (keys[*i].as_str(), value.as_slice()))
                .collect();
            self.store
                .put_many(&entries, u64::from(ttl.seconds()))
                .await?;
            let slots_stored: usize = values.iter().map(|(_, num_slots, _, _)| num_slots).sum();
            metrics::counter!(names::SLOTS_STORED_TOTAL).increment(slots_stored as u64);
            for (i, num_slots, meta, value) in values {
                stored[i] = Some(stored_slots(&keys[i], num_slots, &meta, ttl, false, value));
            }
            timings.store_seconds += put_started.elapsed().as_secs_f64();
        }

        let mut documents = Vec::with_capacity(count);
        for mut doc in stored.into_iter().flatten() {
            doc.value = match doc.value.take() {
                Some(value) if input.return_slots => Some(returned_copy(&value)?),
                _ => None,
            };
            documents.push(doc);
        }
        timings.total_seconds = started.elapsed().as_secs_f64();
        let input_tokens: usize = token_ids.iter().map(Vec::len).sum();
        metrics::counter!(names::INPUT_TOKENS_TOTAL).increment(input_tokens as u64);
        Ok(CompressOutput { documents, timings })
    }

    /// What the request asks of refinement: None for a plain compression without a score;
    /// refused when the server does not refine or the values are out of bounds.
    fn refine_options(&self, input: &CompressInput) -> Result<Option<RefineOptions>, ServiceError> {
        let steps = input.refine_steps as usize;
        if input.target_loss.is_some() && steps == 0 {
            return Err(InputError::BadParameter {
                name: "target_loss",
                value: format!("{:?}", input.target_loss.unwrap_or_default()),
                expected: "is only used with refine_steps > 0".into(),
            }
            .into());
        }
        if steps == 0 && !input.reconstruction_loss {
            return Ok(None);
        }
        let max = self.limits.max_refine_steps;
        if max == 0 {
            return Err(InputError::BadParameter {
                name: if steps > 0 {
                    "refine_steps"
                } else {
                    "reconstruction_loss"
                },
                value: if steps > 0 {
                    steps.to_string()
                } else {
                    "true".into()
                },
                expected: "but refinement and fidelity scores are off on this encoder \
                           (--max-refine-steps 0)"
                    .into(),
            }
            .into());
        }
        let options = RefineOptions {
            steps,
            target_loss: input.target_loss,
            learning_rate: DEFAULT_LEARNING_RATE,
        };
        options.check(max)?;
        Ok(Some(options))
    }

    /// One request may not hold more tokens than --max-request-tokens.
    fn check_request_tokens(&self, token_ids: &[Vec<u32>]) -> Result<(), ServiceError> {
        let max = self.limits.max_request_tokens;
        check_total_tokens(token_ids, max, "request (--max-request-tokens)")
    }

    /// A refining or scoring request may not hold more tokens than --max-refine-tokens:
    /// its backward pass keeps the activations of all of them.
    fn check_refine_tokens(&self, token_ids: &[Vec<u32>]) -> Result<(), ServiceError> {
        let max = self.limits.max_refine_tokens;
        check_total_tokens(
            token_ids,
            max,
            "refining or scoring request (--max-refine-tokens)",
        )
    }

    /// With return_slots, the response carries every slot value: refuse before computing
    /// when it could not be sent (every retry would fail the same way).
    fn check_response_size(
        &self,
        token_ids: &[Vec<u32>],
        summary: &ModelSummary,
        slots_per_segment: usize,
    ) -> Result<(), ServiceError> {
        let bytes: usize = token_ids
            .iter()
            .map(|ids| {
                self.slot_value_bytes(summary, ids.len(), slots_per_segment)
                    + RETURNED_DOCUMENT_OVERHEAD
            })
            .sum();
        let max = self.limits.shared.max_message_bytes;
        if bytes > max {
            return Err(InputError::BadParameter {
                name: "return_slots",
                value: format!("a response of about {bytes} bytes"),
                expected: format!(
                    "must fit in --max-message-bytes {max}; ask for handles only \
                     (return_slots false) or send fewer or shorter documents"
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Token ids of every document (off the async workers), checked against the limits.
    async fn tokenize(
        &self,
        documents: Vec<DocumentInput>,
        vocab: usize,
    ) -> Result<Vec<Vec<u32>>, ServiceError> {
        let tokenizer = self.tokenizer.clone();
        let limits = self.limits;
        tokio::task::spawn_blocking(move || tokenize_all(&tokenizer, documents, limits, vocab))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))?
    }

    /// Bytes of the slot data of a document of `num_tokens` tokens, in `--slot-dtype`.
    fn slot_value_bytes(
        &self,
        summary: &ModelSummary,
        num_tokens: usize,
        slots_per_segment: usize,
    ) -> usize {
        summary.num_slots(num_tokens, slots_per_segment)
            * summary.hidden_size
            * self.slot_dtype.element_bytes()
    }

    /// Cache lookup: a stored value is reused (and its TTL refreshed) only when its header
    /// proves it belongs to its key: our fingerprint, the document's token digest, the
    /// expected shape and our `--slot-dtype` (a value stored by an encoder with the other
    /// slot dtype is recomputed, so that changing the flag takes effect at once instead of
    /// when the old values expire; the decoder reads both). Anything else under our key —
    /// undecodable bytes, another model's or another document's slots, another Redis type —
    /// is counted as a repair and treated as missing, so it is recomputed and overwritten.
    async fn lookup(
        &self,
        keys: &[String],
        token_ids: &[Vec<u32>],
        digests: &[String],
        summary: &ModelSummary,
        ttl: SlotTtl,
        wanted: Wanted,
    ) -> Result<Vec<Option<StoredSlots>>, ServiceError> {
        // Every key in one round trip; each key's outcome is then judged in order.
        let values = self
            .store
            .get_refresh_many(keys, u64::from(ttl.seconds()))
            .await?;
        let mut stored = Vec::with_capacity(keys.len());
        for (((key, ids), digest), value) in keys.iter().zip(token_ids).zip(digests).zip(values) {
            let hit = match value {
                Ok(Some(value)) => {
                    match verify(&value, ids.len(), digest, summary, self.slot_dtype, wanted) {
                        // A plain value without the score asked for: computed again
                        // (deterministic, so the same slots) with the score.
                        Ok((meta, _)) if wanted.scored && !is_scored(&meta) => None,
                        Ok((meta, num_slots)) => {
                            Some(stored_slots(key, num_slots, &meta, ttl, true, value))
                        }
                        Err(reason) => repair(reason),
                    }
                }
                Ok(None) => None,
                Err(StoreError::WrongType { .. }) => repair("wrongtype"),
                Err(e) => return Err(e.into()),
            };
            let result = if hit.is_some() { "hit" } else { "miss" };
            metrics::counter!(names::CACHE_LOOKUPS_TOTAL, "result" => result).increment(1);
            stored.push(hit);
        }
        Ok(stored)
    }
}

/// Check a cached value against the document it should hold; its metadata and slot count,
/// or why it does not verify: its header, then its data against the header's checksum.
fn verify(
    value: &[u8],
    num_tokens: usize,
    digest: &str,
    summary: &ModelSummary,
    slot_dtype: SlotDtype,
    wanted: Wanted,
) -> Result<(SlotMeta, usize), &'static str> {
    let header = inspect_slots(value).map_err(|_| "undecodable")?;
    if header.meta.fingerprint != summary.fingerprint {
        return Err("fingerprint");
    }
    if header.meta.num_tokens != num_tokens || header.meta.token_digest.as_deref() != Some(digest) {
        return Err("digest");
    }
    let slots = summary.num_slots(num_tokens, wanted.slots_per_segment);
    if header.shape != [slots, summary.hidden_size] {
        return Err("shape");
    }
    if header.kind != slot_dtype.kind() {
        return Err("slot_dtype");
    }
    let fidelity = &header.meta.fidelity;
    if fidelity.refine_steps != wanted.refine_steps || fidelity.target_loss != wanted.target_loss {
        return Err("refinement");
    }
    // The data too: a genuine header over other data (another document's, NaN) is no hit.
    if header.data_digest.is_none() || decode_slots(value).is_err() {
        return Err("data");
    }
    Ok((header.meta, slots))
}

/// What the request wants of a stored value besides its document: the refinement that made
/// it (part of the key, so a value under the key that says otherwise is not ours) and
/// whether it must carry a reconstruction loss.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    slots_per_segment: usize,
    refine_steps: usize,
    target_loss: Option<f64>,
    scored: bool,
}

fn is_scored(meta: &SlotMeta) -> bool {
    meta.fidelity.reconstruction_loss.is_some()
}

fn repair(reason: &'static str) -> Option<StoredSlots> {
    metrics::counter!(names::CACHE_REPAIRS_TOTAL, "reason" => reason).increment(1);
    None
}

/// The value as returned to the client: without the storing request's trace context.
fn returned_copy(value: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let (slots, meta) = decode_slots(value).map_err(|e| ServiceError::Internal(e.to_string()))?;
    if meta.traceparent.is_none() {
        return Ok(value.to_vec());
    }
    let meta = SlotMeta {
        traceparent: None,
        ..meta
    };
    encode_slots(&slots, &meta).map_err(|e| ServiceError::Internal(e.to_string()))
}

fn stored_slots(
    key: &str,
    num_slots: usize,
    meta: &SlotMeta,
    ttl: SlotTtl,
    cache_hit: bool,
    value: Vec<u8>,
) -> StoredSlots {
    StoredSlots {
        key: key.to_string(),
        num_slots,
        num_tokens: meta.num_tokens,
        num_segments: meta.num_segments,
        fingerprint: meta.fingerprint.clone(),
        expire_time: SystemTime::now() + ttl.duration(),
        cache_hit,
        refine_steps: meta.fidelity.steps_run,
        reconstruction_loss: meta.fidelity.reconstruction_loss,
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
    limits: EncoderLimits,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ServiceError> {
    let limit = limits.shared.max_input_tokens;
    // Sizes first: no document is tokenized while another one is too large.
    for (index, doc) in documents.iter().enumerate() {
        if let DocumentInput::Text(text) = doc {
            check_text_bytes("text", text, limits.shared.max_input_bytes())
                .map_err(|e| document_error(index, e))?;
        }
    }
    documents
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            let ids = match doc {
                DocumentInput::Text(text) => {
                    if is_blank(&text) {
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

/// All documents of one `request` together may hold at most `max` tokens.
fn check_total_tokens(
    token_ids: &[Vec<u32>],
    max: usize,
    request: &str,
) -> Result<(), ServiceError> {
    let total: usize = token_ids.iter().map(Vec::len).sum();
    if total > max {
        return Err(InputError::BadParameter {
            name: "documents",
            value: format!("{total} tokens in all"),
            expected: format!(
                "must have at most {max} tokens in one {request}; \
                 split the documents over several requests"
            ),
        }
        .into());
    }
    Ok(())
}

/// Name the document so a batch request says which one failed.
fn document_error(index: usize, error: InputError) -> ServiceError {
    ServiceError::Input(InputError::Document {
        index,
        error: Box::new(error),
    })
}
