//! Every limit a service enforces, in one place: the ones set by flags and the fixed ones.
//! `Info` reports all of them.

use icae_core::generate::{MAX_STOP_STRINGS, MAX_STOP_STRING_BYTES};
use icae_proto::v1 as proto;

use crate::config::ServiceArgs;
use crate::store::MAX_NAMESPACE_LEN;
use crate::text::BYTES_PER_TOKEN;

/// Longest TTL a request may ask for: 30 days.
pub const MAX_TTL_SECONDS: u32 = 30 * 24 * 3600;
/// Tokens a prompt may have.
pub const MAX_PROMPT_TOKENS: usize = 4096;
/// max_new_tokens when a request leaves it 0 (capped by --max-new-tokens).
pub const DEFAULT_NEW_TOKENS: usize = 256;
/// Bytes a Compress request may spend on each document besides its text or ids (field
/// tags and lengths), and on its options (namespace, numbers) once.
const DOCUMENT_FRAMING_BYTES: usize = 1024;
const REQUEST_FRAMING_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_input_tokens: usize,
    pub max_new_tokens: usize,
    pub default_new_tokens: usize,
    pub max_prompt_tokens: usize,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
    /// Largest request message decoded (at most `max_message_bytes`).
    pub max_request_bytes: usize,
    pub default_ttl_seconds: u32,
    pub max_ttl_seconds: u32,
    pub max_namespace_bytes: usize,
    pub max_stop_strings: usize,
    pub max_stop_string_bytes: usize,
    /// Encoder only (0 in the decoder).
    pub max_documents_per_request: usize,
    /// Encoder only (0 in the decoder): tokens of all documents of one request.
    pub max_request_tokens: usize,
    /// Decoder only (0 in the encoder).
    pub max_slot_sets: usize,
    /// Encoder only (0 in the decoder, and in an encoder that does not refine): refinement
    /// steps one request may ask for.
    pub max_refine_steps: usize,
    /// Encoder only: tokens of all documents of one refining or scoring request.
    pub max_refine_tokens: usize,
    /// Decoder only: bytes of slot values read from Redis at once, over all requests.
    pub max_slot_read_bytes: usize,
}

impl Limits {
    /// The limits both services share; the service-specific ones start at 0.
    pub fn from_args(args: &ServiceArgs) -> Self {
        Limits {
            max_input_tokens: args.max_input_tokens,
            max_new_tokens: args.max_new_tokens,
            default_new_tokens: DEFAULT_NEW_TOKENS.min(args.max_new_tokens),
            max_prompt_tokens: MAX_PROMPT_TOKENS,
            max_concurrent_requests: args.max_concurrent_requests,
            max_message_bytes: args.max_message_bytes,
            max_request_bytes: args.max_message_bytes,
            default_ttl_seconds: args.slot_ttl_seconds,
            max_ttl_seconds: MAX_TTL_SECONDS,
            max_namespace_bytes: MAX_NAMESPACE_LEN,
            max_stop_strings: MAX_STOP_STRINGS,
            max_stop_string_bytes: MAX_STOP_STRING_BYTES,
            max_documents_per_request: 0,
            max_request_tokens: 0,
            max_slot_sets: 0,
            max_refine_steps: 0,
            max_refine_tokens: 0,
            max_slot_read_bytes: 0,
        }
    }

    /// Most bytes of one document or baseline text.
    pub fn max_input_bytes(&self) -> usize {
        self.max_input_tokens.saturating_mul(BYTES_PER_TOKEN)
    }

    /// The largest Compress request worth decoding: its texts at BYTES_PER_TOKEN for each
    /// token the request may hold (or one text of max_input_bytes, if that is more), token
    /// ids at their widest (5 bytes) fitting in the same, plus framing; at most
    /// max_message_bytes. Decoding takes a few times a message's size (token ids become
    /// 4-byte integers in a list that grows by doubling), so this bounds what one request
    /// can make the encoder hold by what it may ask for, not by the message limit.
    pub fn compress_request_bytes(&self) -> usize {
        let texts = BYTES_PER_TOKEN
            .saturating_mul(self.max_request_tokens)
            .max(self.max_input_bytes());
        let framing = DOCUMENT_FRAMING_BYTES
            .saturating_mul(self.max_documents_per_request)
            .saturating_add(REQUEST_FRAMING_BYTES);
        texts.saturating_add(framing).min(self.max_message_bytes)
    }

    /// Most bytes of a prompt.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_tokens.saturating_mul(BYTES_PER_TOKEN)
    }

    pub fn to_proto(self) -> proto::Limits {
        proto::Limits {
            max_input_tokens: self.max_input_tokens as u32,
            max_new_tokens: self.max_new_tokens as u32,
            max_concurrent_requests: self.max_concurrent_requests as u32,
            max_message_bytes: self.max_message_bytes as u64,
            default_ttl_seconds: self.default_ttl_seconds,
            max_documents_per_request: self.max_documents_per_request as u32,
            max_spans: self.max_slot_sets as u32,
            default_new_tokens: self.default_new_tokens as u32,
            max_prompt_tokens: self.max_prompt_tokens as u32,
            max_ttl_seconds: self.max_ttl_seconds,
            max_namespace_bytes: self.max_namespace_bytes as u32,
            max_stop_strings: self.max_stop_strings as u32,
            max_stop_string_bytes: self.max_stop_string_bytes as u32,
            max_request_tokens: self.max_request_tokens as u32,
            max_input_bytes: self.max_input_bytes() as u64,
            max_prompt_bytes: self.max_prompt_bytes() as u32,
            max_key_bytes: crate::store::MAX_KEY_BYTES as u32,
            max_refine_steps: self.max_refine_steps as u32,
            max_refine_tokens: self.max_refine_tokens as u32,
            max_slot_read_bytes: self.max_slot_read_bytes as u64,
            max_request_bytes: self.max_request_bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn encoder_limits(request_tokens: usize, input_tokens: usize, message: usize) -> Limits {
        let args = Command::parse_from(["encoder-svc", "--model", "m", "--adapter", "a"]);
        Limits {
            max_input_tokens: input_tokens,
            max_documents_per_request: 64,
            max_request_tokens: request_tokens,
            max_message_bytes: message,
            ..Limits::from_args(&args.service)
        }
    }

    #[test]
    fn a_compress_request_may_hold_its_texts_and_their_framing() {
        // 65,536 tokens of text at 16 bytes, 64 documents' framing, the options'.
        let limits = encoder_limits(65_536, 32_768, 64 << 20);
        assert_eq!(
            limits.compress_request_bytes(),
            (1 << 20) + (64 << 10) + (64 << 10)
        );
        // Every token as the widest id (a 5-byte varint) fits in the same.
        assert!(5 * 65_536 < limits.compress_request_bytes());
        // One document may be longer than the request's token budget allows in text.
        let one_long = encoder_limits(1_000, 32_768, 64 << 20);
        assert_eq!(
            one_long.compress_request_bytes(),
            524_288 + (64 << 10) + (64 << 10)
        );
    }

    #[test]
    fn the_message_limit_caps_the_request_limit() {
        let limits = encoder_limits(65_536, 32_768, 1 << 20);
        assert_eq!(limits.compress_request_bytes(), 1 << 20);
    }
}
