//! The Encoder gRPC service: validation, tokenization, cache lookup, the model thread,
//! storage. Errors become statuses only through `ServiceError` (icae-core).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use icae_core::service::telemetry::{continue_trace, traceparent_of};
use icae_core::service::{
    common_limits, deadline, info_response, traceparent, Admission, ServiceError,
};
use icae_core::slots::{decode_slots, encode_slots, SlotMeta};
use icae_core::store::{slot_key, Namespace, SlotStore};
use icae_core::tokenizer::TextTokenizer;
use icae_core::{check_token_ids, InputError};
use icae_proto::v1::encoder_server::Encoder;
use icae_proto::v1::{
    document, CompressRequest, CompressResponse, CompressedDocument, InfoRequest, InfoResponse,
    Limits, SlotHandle, Timings,
};
use tonic::{Request, Response, Status};
use tracing::{info_span, Instrument};

use crate::worker::{self, Worker};
use crate::Config;

/// Longest TTL a request may ask for: 30 days.
const MAX_TTL_SECONDS: u32 = 30 * 24 * 3600;

pub struct EncoderService {
    store: Arc<SlotStore>,
    tokenizer: Arc<TextTokenizer>,
    worker: Worker,
    admission: Admission,
    max_input_tokens: usize,
    max_documents: usize,
    default_ttl: u32,
    limits: Limits,
}

impl EncoderService {
    pub fn new(
        config: &Config,
        store: Arc<SlotStore>,
        tokenizer: Arc<TextTokenizer>,
        worker: Worker,
        admission: Admission,
    ) -> Self {
        EncoderService {
            store,
            tokenizer,
            worker,
            admission,
            max_input_tokens: config.common.max_input_tokens,
            max_documents: config.max_documents_per_request,
            default_ttl: config.common.slot_ttl_seconds,
            limits: Limits {
                max_documents_per_request: config.max_documents_per_request as u32,
                ..common_limits(&config.common)
            },
        }
    }

    async fn compress(
        &self,
        request: CompressRequest,
        traceparent: Option<String>,
    ) -> Result<CompressResponse, ServiceError> {
        let started = Instant::now();
        let summary = self.worker.summary()?.clone();
        let options = request.options.unwrap_or_default();
        let ttl = match options.ttl_seconds {
            0 => self.default_ttl,
            t if t > MAX_TTL_SECONDS => {
                return Err(InputError::BadParameter {
                    name: "ttl_seconds",
                    value: t.to_string(),
                    expected: format!("must be at most {MAX_TTL_SECONDS} (30 days)"),
                }
                .into())
            }
            t => t,
        };
        let namespace = Namespace::parse(&options.namespace)?;
        let count = request.documents.len();
        if count == 0 || count > self.max_documents {
            return Err(InputError::BadParameter {
                name: "documents",
                value: format!("{count} documents"),
                expected: format!("must hold 1..={} documents", self.max_documents),
            }
            .into());
        }

        let tokenize_started = Instant::now();
        let tokenizer = self.tokenizer.clone();
        let limit = self.max_input_tokens;
        let vocab = summary.vocab_size;
        let token_ids = tokio::task::spawn_blocking(move || {
            tokenize_all(&tokenizer, request.documents, limit, vocab)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))??;
        let tokenize_seconds = tokenize_started.elapsed().as_secs_f64();

        // Cache lookup: a stored value is reused (and its TTL refreshed); a corrupt one is
        // recomputed and overwritten.
        let store_started = Instant::now();
        let keys: Vec<String> = token_ids
            .iter()
            .map(|ids| slot_key(&namespace, &summary.fingerprint, ids))
            .collect();
        let mut handles: Vec<Option<(SlotHandle, Vec<u8>)>> = Vec::with_capacity(count);
        for key in &keys {
            let hit = match self.store.get_refresh(key, u64::from(ttl)).await? {
                Some(bytes) => decode_slots(&bytes)
                    .ok()
                    .map(|(slots, meta)| (slots.size()[0], meta, bytes)),
                None => None,
            };
            metrics::counter!("icae_cache_lookups_total", "result" => if hit.is_some() { "hit" } else { "miss" }).increment(1);
            handles.push(hit.map(|(num_slots, meta, bytes)| {
                (
                    handle(
                        key,
                        num_slots,
                        meta.num_tokens,
                        meta.num_segments,
                        &summary.fingerprint,
                        ttl,
                        true,
                    ),
                    bytes,
                )
            }));
        }
        let mut store_seconds = store_started.elapsed().as_secs_f64();

        let misses: Vec<usize> = (0..count).filter(|&i| handles[i].is_none()).collect();
        let mut queue_seconds = 0.0;
        let mut model_seconds = 0.0;
        if !misses.is_empty() {
            let docs = misses.iter().map(|&i| token_ids[i].clone()).collect();
            let batch = worker::submit(&self.worker, docs)?.await.map_err(|_| {
                ServiceError::ModelUnavailable("the model thread dropped the request".into())
            })??;
            queue_seconds = batch.queue_seconds;
            model_seconds = batch.model_seconds;
            let compressed = batch.docs;
            let put_started = Instant::now();
            let created_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            for (&i, doc) in misses.iter().zip(compressed) {
                let meta = SlotMeta {
                    fingerprint: summary.fingerprint.clone(),
                    num_tokens: doc.num_tokens,
                    num_segments: doc.num_segments,
                    created_at,
                    traceparent: traceparent.clone(),
                };
                let bytes = encode_slots(&doc.slots, &meta)
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                metrics::histogram!("icae_slot_bytes").record(bytes.len() as f64);
                self.store.put(&keys[i], &bytes, u64::from(ttl)).await?;
                let num_slots = doc.slots.size()[0];
                handles[i] = Some((
                    handle(
                        &keys[i],
                        num_slots,
                        doc.num_tokens,
                        doc.num_segments,
                        &summary.fingerprint,
                        ttl,
                        false,
                    ),
                    bytes,
                ));
            }
            store_seconds += put_started.elapsed().as_secs_f64();
        }

        let documents = handles
            .into_iter()
            .flatten()
            .map(|(handle, bytes)| CompressedDocument {
                handle: Some(handle),
                slots: if options.return_slots {
                    bytes
                } else {
                    Vec::new()
                },
            })
            .collect();
        let total_seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("icae_request_duration_seconds", "service" => "encoder", "method" => "Compress").record(total_seconds);
        Ok(CompressResponse {
            documents,
            timings: Some(Timings {
                queue_seconds,
                tokenize_seconds,
                store_seconds,
                model_seconds,
                total_seconds,
                ..Default::default()
            }),
        })
    }
}

fn handle(
    key: &str,
    num_slots: i64,
    num_tokens: usize,
    num_segments: usize,
    fingerprint: &str,
    ttl: u32,
    cache_hit: bool,
) -> SlotHandle {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    SlotHandle {
        key: key.to_string(),
        num_slots: num_slots as u32,
        num_tokens: num_tokens as u32,
        num_segments: num_segments as u32,
        model_fingerprint: fingerprint.to_string(),
        expires_at_unix: now + i64::from(ttl),
        cache_hit,
    }
}

/// Token ids of every document, checked against the limits and the vocabulary.
fn tokenize_all(
    tokenizer: &TextTokenizer,
    documents: Vec<icae_proto::v1::Document>,
    limit: usize,
    vocab: usize,
) -> Result<Vec<Vec<u32>>, ServiceError> {
    documents
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            let ids = match doc.content {
                Some(document::Content::Text(text)) => {
                    if text.trim().is_empty() {
                        return Err(document_error(index, InputError::EmptyText));
                    }
                    tokenizer
                        .encode(&text)
                        .map_err(|e| ServiceError::Internal(e.to_string()))?
                }
                Some(document::Content::TokenIds(ids)) => ids.ids,
                None => return Err(document_error(index, InputError::EmptyText)),
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

#[tonic::async_trait]
impl Encoder for EncoderService {
    async fn compress(
        &self,
        request: Request<CompressRequest>,
    ) -> Result<Response<CompressResponse>, Status> {
        let _permit = self.admission.admit()?;
        let deadline = deadline(request.metadata());
        let span = info_span!("compress", documents = request.get_ref().documents.len());
        continue_trace(&span, request.metadata());
        // Stored with the slots: this request's span when tracing is on, else the caller's.
        let traceparent = traceparent_of(&span).or_else(|| traceparent(request.metadata()));
        let work = self
            .compress(request.into_inner(), traceparent)
            .instrument(span);
        let result = match deadline {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .unwrap_or(Err(ServiceError::DeadlineExceeded(limit.as_secs_f64()))),
            None => work.await,
        };
        Ok(Response::new(result?))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let summary = self.worker.summary()?;
        Ok(Response::new(info_response(
            icae_proto::ENCODER_SERVICE,
            summary,
            self.limits,
            &self.worker,
        )))
    }
}
