//! The Decoder gRPC service: proto ↔ pipeline types, admission, the client's deadline and
//! trace context, and the response stream. Errors become statuses only through
//! `ServiceError` (icae-serving).

use std::time::Duration;

use crate::convert::{finish_to_proto, mode_from_proto};
use icae_proto::v1::decoder_service_server::DecoderService;
use icae_proto::v1::{
    generate_request, slot_ref, GenerateOnceResponse, GenerateRequest, InfoRequest, InfoResponse,
};
use icae_serving::telemetry::continue_trace;
use icae_serving::{
    info_response, tenant_of, Admission, Permit, RequestDeadline, RpcCall, ServiceError,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::event_stream::{dropped, record_finished, timings, EventStream};
use crate::pipeline::{ContextInput, GenerateInput, GeneratePipeline, SamplingInput, Started};
use crate::scheduler::Event;
use crate::slot_reads::SlotSource;

pub struct DecoderApi {
    pub pipeline: GeneratePipeline,
    pub admission: Admission,
    /// How long a Generate stream waits on a client that reads nothing.
    pub stream_send_timeout: Duration,
}

fn generate_input(request: Request<GenerateRequest>) -> Result<GenerateInput, ServiceError> {
    let deadline = RequestDeadline::of(&request);
    let tenant = tenant_of(&request);
    let request = request.into_inner();
    let sampling = request.sampling.unwrap_or_default();
    let context = match request.context {
        Some(generate_request::Context::Slots(list)) => ContextInput::Slots(
            list.items
                .into_iter()
                .map(|item| match item.source {
                    Some(slot_ref::Source::Key(key)) => SlotSource::Key(key),
                    Some(slot_ref::Source::InlineSlots(value)) => SlotSource::Inline(value),
                    None => SlotSource::Missing,
                })
                .collect(),
        ),
        Some(generate_request::Context::BaselineText(text)) => ContextInput::BaselineText(text),
        None => ContextInput::Missing,
    };
    Ok(GenerateInput {
        mode: mode_from_proto(request.mode)?,
        prompt: request.prompt,
        sampling: SamplingInput {
            max_new_tokens: sampling.max_new_tokens,
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            seed: sampling.seed,
            stop: sampling.stop,
        },
        context,
        deadline,
        tenant,
    })
}

impl DecoderApi {
    /// Admit, convert and start the generation inside `span`.
    async fn start(
        &self,
        request: Request<GenerateRequest>,
        span: tracing::Span,
    ) -> Result<(Started, Permit), ServiceError> {
        let permit = self.admission.admit()?;
        continue_trace(&span, request.metadata());
        let started = async { self.pipeline.start(generate_input(request)?).await }
            .instrument(span)
            .await?;
        Ok((started, permit))
    }
}

#[tonic::async_trait]
impl DecoderService for DecoderApi {
    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let call = RpcCall::start("decoder", icae_proto::DECODER_SERVICE, "Generate");
        let (generation, permit) = match self.start(request, call.span.clone()).await {
            Ok(started) => started,
            Err(e) => {
                let status = Status::from(e);
                call.finish(status.code());
                return Err(status);
            }
        };
        Ok(Response::new(EventStream::spawn(
            generation,
            permit,
            call,
            self.stream_send_timeout,
        )))
    }

    async fn generate_once(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateOnceResponse>, Status> {
        let call = RpcCall::start("decoder", icae_proto::DECODER_SERVICE, "GenerateOnce");
        let result = self.generate_once_request(request, &call).await;
        call.finish_with(&result);
        result
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let scheduler = &self.pipeline.scheduler;
        Ok(Response::new(info_response(
            icae_proto::DECODER_SERVICE,
            scheduler.summary()?,
            self.pipeline.limits.to_proto(),
            scheduler.state(),
        )))
    }
}

impl DecoderApi {
    async fn generate_once_request(
        &self,
        request: Request<GenerateRequest>,
        call: &RpcCall,
    ) -> Result<Response<GenerateOnceResponse>, Status> {
        let (mut generation, permit) = self.start(request, call.span.clone()).await?;
        let mut response = GenerateOnceResponse::default();
        let cut_off = permit.cut_off();
        tokio::pin!(cut_off);
        loop {
            let event = tokio::select! {
                event = generation.events.recv() => event,
                error = &mut cut_off => return Err(error.into()),
            };
            let Some(event) = event else { break };
            match event {
                Event::Token { token_id, text } => {
                    response.token_ids.extend(token_id);
                    response.text.push_str(&text);
                }
                Event::Finished(finished) => {
                    record_finished(&call.span, &finished);
                    response.finish_reason = finish_to_proto(finished.finish_reason);
                    response.prompt_positions = finished.prompt_positions as u32;
                    response.timings =
                        Some(timings(&finished, generation.store_seconds, call.started));
                    return Ok(Response::new(response));
                }
                Event::Failed(e) => return Err(e.into()),
            }
        }
        Err(dropped().into())
    }
}
