//! The Encoder gRPC service: proto ↔ pipeline types, admission, the client's deadline and
//! trace context. Errors become statuses only through `ServiceError` (icae-serving).

use icae_proto::time;
use icae_proto::v1::encoder_service_server::EncoderService;
use icae_proto::v1::{
    document, CompressRequest, CompressResponse, CompressedDocument, InfoRequest, InfoResponse,
    SlotHandle, Timings,
};
use icae_serving::telemetry::{continue_trace, record_usage, traceparent_of};
use icae_serving::{
    info_response, tenant_of, traceparent, Admission, EncoderLimits, RpcCall, ServiceError, Tenant,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span};

use crate::pipeline::{CompressInput, CompressOutput, CompressPipeline, DocumentInput};
use crate::ttl::SlotTtl;

pub struct EncoderApi {
    pub pipeline: CompressPipeline,
    pub admission: Admission,
}

fn compress_input(
    request: CompressRequest,
    limits: &EncoderLimits,
    traceparent: Option<String>,
    tenant: Option<Tenant>,
) -> Result<CompressInput, ServiceError> {
    let options = request.options.unwrap_or_default();
    Ok(CompressInput {
        documents: request
            .documents
            .into_iter()
            .map(|doc| match doc.content {
                Some(document::Content::Text(text)) => DocumentInput::Text(text),
                Some(document::Content::TokenIds(ids)) => DocumentInput::TokenIds(ids.ids),
                None => DocumentInput::Missing,
            })
            .collect(),
        ttl: SlotTtl::parse(options.ttl.as_ref(), limits)?,
        namespace: options.namespace,
        return_slots: options.return_slots,
        traceparent,
        tenant,
        refine_steps: options.refine_steps,
        target_loss: options.target_loss,
        reconstruction_loss: options.reconstruction_loss,
        slots_per_segment: options.slots_per_segment,
    })
}

fn compress_response(output: CompressOutput) -> CompressResponse {
    let t = output.timings;
    CompressResponse {
        documents: output
            .documents
            .into_iter()
            .map(|doc| CompressedDocument {
                handle: Some(SlotHandle {
                    key: doc.key,
                    num_slots: doc.num_slots as u32,
                    num_tokens: doc.num_tokens as u32,
                    num_segments: doc.num_segments as u32,
                    model_fingerprint: doc.fingerprint,
                    expire_time: Some(time::timestamp(doc.expire_time)),
                    cache_hit: doc.cache_hit,
                    reconstruction_loss: doc.reconstruction_loss,
                    refine_steps: doc.refine_steps as u32,
                }),
                slots: doc.value.unwrap_or_default(),
            })
            .collect(),
        timings: Some(Timings {
            queue_duration: Some(time::seconds_f64(t.queue_seconds)),
            tokenize_duration: Some(time::seconds_f64(t.tokenize_seconds)),
            store_duration: Some(time::seconds_f64(t.store_seconds)),
            model_duration: Some(time::seconds_f64(t.model_seconds)),
            time_to_first_token: None,
            total_duration: Some(time::seconds_f64(t.total_seconds)),
        }),
    }
}

#[tonic::async_trait]
impl EncoderService for EncoderApi {
    async fn compress(
        &self,
        request: Request<CompressRequest>,
    ) -> Result<Response<CompressResponse>, Status> {
        let call = RpcCall::start("encoder", icae_proto::ENCODER_SERVICE, "Compress");
        let result = self.compress_request(request, &call.span).await;
        call.finish_with(&result);
        result
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let batcher = &self.pipeline.batcher;
        Ok(Response::new(InfoResponse {
            slot_dtype: self.pipeline.slot_dtype.to_string(),
            ..info_response(
                icae_proto::ENCODER_SERVICE,
                batcher.summary()?,
                self.pipeline.limits.to_proto(),
                batcher.state(),
            )
        }))
    }
}

impl EncoderApi {
    async fn compress_request(
        &self,
        request: Request<CompressRequest>,
        span: &Span,
    ) -> Result<Response<CompressResponse>, Status> {
        let permit = self.admission.admit()?;
        continue_trace(span, request.metadata());
        // Stored with the slots: this request's span when tracing is on, else the caller's.
        let traceparent = traceparent_of(span).or_else(|| traceparent(request.metadata()));
        let tenant = tenant_of(&request);
        let limits = &self.pipeline.limits;
        let input = compress_input(request.into_inner(), limits, traceparent, tenant)?;
        let work = self.pipeline.run(input).instrument(span.clone());
        // Dropping `work` (the deadline, see request_deadline.rs; a cut-off or a client gone)
        // tells the batcher to skip or stop this request's documents.
        let output = tokio::select! {
            output = work => output,
            error = permit.cut_off() => Err(error),
        }?;
        let input_tokens = output.documents.iter().map(|d| d.num_tokens).sum();
        record_usage(span, input_tokens, None, None);
        Ok(Response::new(compress_response(output)))
    }
}
