//! A Generate's response stream, and the task that feeds it.
//!
//! The HTTP/2 layer takes a message from the stream only when the client's receive window
//! has room, so a client that stops reading stops the stream from being polled at all. The
//! scheduler's events therefore go through a forwarding task with a small buffer:
//! - the request's admission permit is held by that task and released when the work is done
//!   (the generation's last event), not when a slow client has read it all;
//! - once the buffer is full, or the work is done, a client that takes nothing for
//!   `--stream-send-timeout-seconds` has stalled: the task cancels the generation (if still
//!   running), drops everything buffered and ends; a client that reads again gets the error.
//!
//! Dropping the stream (the client cancelled) ends the task, which drops the scheduler's
//! channel: the scheduler frees the sequence at its next step. When the server's shutdown
//! grace period is over, the stream ends with UNAVAILABLE.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::convert::finish_to_proto;
use icae_proto::time;
use icae_proto::v1::{generate_response, GenerateFinal, GenerateResponse, Timings, TokenDelta};
use icae_serving::telemetry::record_usage;
use icae_serving::{Permit, QueuePlace, RpcCall, ServiceError};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Code, Status};
use tracing::{warn, Span};

use crate::pipeline::Started;
use crate::scheduler::{Event, Finished};

/// Messages buffered between the scheduler and a client: enough that a reading client never
/// holds up generation, few enough that a stalled one holds little.
const BUFFERED_MESSAGES: usize = 16;

type Item = Result<GenerateResponse, Status>;

/// What the stream and its feeding task share.
struct Shared {
    /// Messages not yet taken by the HTTP/2 layer.
    buffer: Mutex<mpsc::Receiver<Item>>,
    /// Set when the client stalled: the stream's last message.
    stalled: OnceLock<Status>,
    /// The request's outcome was counted (exactly once, by whoever ends it).
    counted: AtomicBool,
    call: RpcCall,
}

impl Shared {
    fn count(&self, code: Code) {
        if !self.counted.swap(true, Ordering::SeqCst) {
            self.call.finish(code);
        }
    }
}

/// A finished generation's token counts and finish reason on its call's span.
pub fn record_finished(span: &Span, finished: &Finished) {
    record_usage(
        span,
        finished.prompt_positions,
        Some(finished.generated_tokens),
        Some(finished.finish_reason.as_str()),
    );
}

pub struct EventStream {
    shared: Arc<Shared>,
    done: bool,
}

impl EventStream {
    /// Start feeding `generation`'s events to a new stream; `permit` is held until the work
    /// is done.
    pub fn spawn(
        generation: Started,
        permit: Permit,
        call: RpcCall,
        send_timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BUFFERED_MESSAGES);
        let shared = Arc::new(Shared {
            buffer: Mutex::new(rx),
            stalled: OnceLock::new(),
            counted: AtomicBool::new(false),
            call,
        });
        let feeder = Feeder {
            shared: shared.clone(),
            tx,
            store_seconds: generation.store_seconds,
            send_timeout,
        };
        tokio::spawn(feeder.run(generation.events, generation.queue_place, permit));
        EventStream {
            shared,
            done: false,
        }
    }
}

impl Drop for EventStream {
    /// A stream dropped before its last message: the client went away. Closing the buffer
    /// tells the feeder (which shares it) to stop.
    fn drop(&mut self) {
        self.shared.count(Code::Cancelled);
        if let Ok(mut buffer) = self.shared.buffer.lock() {
            buffer.close();
        }
    }
}

impl Stream for EventStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self
            .shared
            .buffer
            .lock()
            .expect("the buffer lock is never held across a panic")
            .poll_recv(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            // The feeder ended: after the last message, or because the client stalled.
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(self.shared.stalled.get().cloned().map(Err))
            }
        }
    }
}

/// The task between the scheduler and the stream.
struct Feeder {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    store_seconds: f64,
    send_timeout: Duration,
}

impl Feeder {
    /// `_queue_place` is held until the feeder ends: a client that leaves while its request
    /// is still queued takes it out of the queue count.
    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<Event>,
        _queue_place: QueuePlace,
        permit: Permit,
    ) {
        let mut permit = Some(permit);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                error = cut_off(&permit) => Some(Event::Failed(error)),
                // The client cancelled: dropping `events` cancels the generation.
                _ = self.tx.closed() => return,
            };
            let item = self.message(event);
            let last = !matches!(
                item,
                Ok(GenerateResponse {
                    event: Some(generate_response::Event::Delta(_))
                })
            );
            if last {
                // The work is done: the admission slot is free for others while the client
                // reads the rest.
                drop(permit.take());
                drop(events);
                let code = item.as_ref().err().map_or(Code::Ok, Status::code);
                if self.send(item).await {
                    self.shared.count(code);
                    self.wait_until_read().await;
                }
                return;
            }
            if !self.send(item).await {
                return;
            }
        }
    }

    /// Buffer `item`, waiting at most the send timeout for room; false when the stream
    /// is gone or the client stalled.
    async fn send(&self, item: Item) -> bool {
        match tokio::time::timeout(self.send_timeout, self.tx.send(item)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stall();
                false
            }
        }
    }

    /// After the last message: give the client the send timeout to take what is buffered.
    async fn wait_until_read(&self) {
        let all = self.tx.reserve_many(BUFFERED_MESSAGES);
        if tokio::time::timeout(self.send_timeout, all).await.is_err() {
            self.stall();
        }
    }

    /// The client took nothing for the send timeout: drop what is buffered, and leave it
    /// the error to read should it come back.
    fn stall(&self) {
        let seconds = self.send_timeout.as_secs();
        warn!(
            send_timeout_seconds = seconds,
            "a Generate client read nothing for the send timeout: its stream is ended"
        );
        let status = Status::from(ServiceError::ClientStalled(seconds));
        self.shared.count(status.code());
        let _ = self.shared.stalled.set(status);
        let mut buffer = self.shared.buffer.lock().expect("never poisoned");
        buffer.close();
        while buffer.try_recv().is_ok() {}
    }

    /// The response message for one scheduler event (`None`: the scheduler dropped it).
    fn message(&self, event: Option<Event>) -> Item {
        match event {
            Some(Event::Token { token_id, text }) => Ok(GenerateResponse {
                event: Some(generate_response::Event::Delta(TokenDelta {
                    token_ids: token_id.into_iter().collect(),
                    text,
                })),
            }),
            Some(Event::Finished(finished)) => {
                record_finished(&self.shared.call.span, &finished);
                Ok(self.final_message(&finished))
            }
            Some(Event::Failed(e)) => Err(Status::from(e)),
            None => Err(Status::from(dropped())),
        }
    }

    fn final_message(&self, finished: &Finished) -> GenerateResponse {
        GenerateResponse {
            event: Some(generate_response::Event::Final(GenerateFinal {
                finish_reason: finish_to_proto(finished.finish_reason),
                prompt_positions: finished.prompt_positions as u32,
                generated_tokens: finished.generated_tokens as u32,
                timings: Some(timings(
                    finished,
                    self.store_seconds,
                    self.shared.call.started,
                )),
            })),
        }
    }
}

/// Resolves with the error to end the stream with once the server cuts running requests
/// off; never, once the work is done.
async fn cut_off(permit: &Option<Permit>) -> ServiceError {
    match permit {
        Some(permit) => permit.cut_off().await,
        None => std::future::pending().await,
    }
}

/// The timings a response reports.
pub(crate) fn timings(finished: &Finished, store_seconds: f64, started: Instant) -> Timings {
    Timings {
        queue_duration: Some(time::seconds_f64(finished.queue_seconds)),
        tokenize_duration: None,
        store_duration: Some(time::seconds_f64(store_seconds)),
        model_duration: Some(time::seconds_f64(finished.model_seconds)),
        time_to_first_token: Some(time::seconds_f64(finished.time_to_first_token_seconds)),
        total_duration: Some(time::duration(started.elapsed())),
    }
}

/// The model thread dropped a request without its last event.
pub(crate) fn dropped() -> ServiceError {
    ServiceError::ModelUnavailable("the model thread dropped the request".into())
}
