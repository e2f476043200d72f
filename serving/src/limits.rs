//! Every limit a service enforces, in one place: the ones set by flags and the fixed ones.
//! Both services share a few ([`SharedLimits`]); the rest are the encoder's
//! ([`EncoderLimits`]) or the decoder's ([`DecoderLimits`]). `Info` reports the ones that
//! apply to the service asked (the others are 0, or unset for the TTLs).

use icae_core::generate::{MAX_STOP_STRINGS, MAX_STOP_STRING_BYTES};
use icae_proto::time;
use icae_proto::v1 as proto;

use crate::config::ServiceArgs;
use crate::store::{MAX_KEY_BYTES, MAX_NAMESPACE_LEN};
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

/// What both services bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLimits {
    /// Tokens of one document (encoder) or baseline text (decoder).
    pub max_input_tokens: usize,
    pub max_concurrent_requests: usize,
    pub max_message_bytes: usize,
}

impl SharedLimits {
    pub fn from_args(args: &ServiceArgs) -> Self {
        SharedLimits {
            max_input_tokens: args.max_input_tokens,
            max_concurrent_requests: args.max_concurrent_requests,
            max_message_bytes: args.max_message_bytes,
        }
    }

    /// Most bytes of one document or baseline text.
    pub fn max_input_bytes(&self) -> usize {
        self.max_input_tokens.saturating_mul(BYTES_PER_TOKEN)
    }

    fn to_proto(self) -> proto::Limits {
        proto::Limits {
            max_input_tokens: self.max_input_tokens as u32,
            max_concurrent_requests: self.max_concurrent_requests as u32,
            max_message_bytes: self.max_message_bytes as u64,
            max_input_bytes: self.max_input_bytes() as u64,
            ..Default::default()
        }
    }
}

/// The encoder's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderLimits {
    pub shared: SharedLimits,
    pub default_ttl_seconds: u32,
    pub max_ttl_seconds: u32,
    pub max_namespace_bytes: usize,
    pub max_documents_per_request: usize,
    /// Tokens of all documents of one request.
    pub max_request_tokens: usize,
    /// Refinement steps one request may ask for (0: the encoder does not refine).
    pub max_refine_steps: usize,
    /// Tokens of all documents of one refining or scoring request.
    pub max_refine_tokens: usize,
}

/// Where the encoder's limits come from besides the shared flags: its own flags.
pub struct EncoderFlags {
    pub max_documents_per_request: usize,
    pub max_request_tokens: usize,
    pub max_refine_steps: usize,
    pub max_refine_tokens: usize,
}

impl EncoderLimits {
    pub fn from_args(args: &ServiceArgs, flags: EncoderFlags) -> Self {
        EncoderLimits {
            shared: SharedLimits::from_args(args),
            default_ttl_seconds: args.slot_ttl_seconds,
            max_ttl_seconds: MAX_TTL_SECONDS,
            max_namespace_bytes: MAX_NAMESPACE_LEN,
            max_documents_per_request: flags.max_documents_per_request,
            max_request_tokens: flags.max_request_tokens,
            max_refine_steps: flags.max_refine_steps,
            max_refine_tokens: flags.max_refine_tokens,
        }
    }

    /// The largest Compress request worth decoding: its texts at BYTES_PER_TOKEN for each
    /// token the request may hold (or one text of max_input_bytes, if that is more), token
    /// ids at their widest (5 bytes) fitting in the same, plus framing; at most
    /// max_message_bytes. Decoding takes a few times a message's size (token ids become
    /// 4-byte integers in a list that grows by doubling), so this bounds what one request
    /// can make the encoder hold by what it may ask for, not by the message limit.
    pub fn max_request_bytes(&self) -> usize {
        let texts = BYTES_PER_TOKEN
            .saturating_mul(self.max_request_tokens)
            .max(self.shared.max_input_bytes());
        let framing = DOCUMENT_FRAMING_BYTES
            .saturating_mul(self.max_documents_per_request)
            .saturating_add(REQUEST_FRAMING_BYTES);
        texts
            .saturating_add(framing)
            .min(self.shared.max_message_bytes)
    }

    pub fn to_proto(self) -> proto::Limits {
        proto::Limits {
            default_ttl: Some(time::seconds(self.default_ttl_seconds.into())),
            max_ttl: Some(time::seconds(self.max_ttl_seconds.into())),
            max_namespace_bytes: self.max_namespace_bytes as u32,
            max_documents_per_request: self.max_documents_per_request as u32,
            max_request_tokens: self.max_request_tokens as u32,
            max_refine_steps: self.max_refine_steps as u32,
            max_refine_tokens: self.max_refine_tokens as u32,
            max_request_bytes: self.max_request_bytes() as u64,
            ..self.shared.to_proto()
        }
    }
}

/// The decoder's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    pub shared: SharedLimits,
    pub max_new_tokens: usize,
    pub default_new_tokens: usize,
    pub max_prompt_tokens: usize,
    pub max_stop_strings: usize,
    pub max_stop_string_bytes: usize,
    /// Slot sets one request may name.
    pub max_slot_sets: usize,
    /// Bytes of slot values read from Redis at once, over all requests.
    pub max_slot_read_bytes: usize,
}

impl DecoderLimits {
    pub fn from_args(args: &ServiceArgs, max_slot_sets: usize, max_slot_read_bytes: usize) -> Self {
        DecoderLimits {
            shared: SharedLimits::from_args(args),
            max_new_tokens: args.max_new_tokens,
            default_new_tokens: DEFAULT_NEW_TOKENS.min(args.max_new_tokens),
            max_prompt_tokens: MAX_PROMPT_TOKENS,
            max_stop_strings: MAX_STOP_STRINGS,
            max_stop_string_bytes: MAX_STOP_STRING_BYTES,
            max_slot_sets,
            max_slot_read_bytes,
        }
    }

    /// Most bytes of a prompt.
    pub fn max_prompt_bytes(&self) -> usize {
        self.max_prompt_tokens.saturating_mul(BYTES_PER_TOKEN)
    }

    /// The decoder may carry slot values inline: its requests are bounded by the message
    /// limit alone.
    pub fn to_proto(self) -> proto::Limits {
        proto::Limits {
            max_new_tokens: self.max_new_tokens as u32,
            default_new_tokens: self.default_new_tokens as u32,
            max_prompt_tokens: self.max_prompt_tokens as u32,
            max_prompt_bytes: self.max_prompt_bytes() as u32,
            max_stop_strings: self.max_stop_strings as u32,
            max_stop_string_bytes: self.max_stop_string_bytes as u32,
            max_spans: self.max_slot_sets as u32,
            max_key_bytes: MAX_KEY_BYTES as u32,
            max_slot_read_bytes: self.max_slot_read_bytes as u64,
            max_request_bytes: self.shared.max_message_bytes as u64,
            ..self.shared.to_proto()
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

    fn encoder_limits(request_tokens: usize, input_tokens: usize, message: usize) -> EncoderLimits {
        let args = Command::parse_from(["encoder-svc", "--model", "m", "--adapter", "a"]);
        let flags = EncoderFlags {
            max_documents_per_request: 64,
            max_request_tokens: request_tokens,
            max_refine_steps: 0,
            max_refine_tokens: 1,
        };
        let mut limits = EncoderLimits::from_args(&args.service, flags);
        limits.shared.max_input_tokens = input_tokens;
        limits.shared.max_message_bytes = message;
        limits
    }

    #[test]
    fn a_compress_request_may_hold_its_texts_and_their_framing() {
        // 65,536 tokens of text at 16 bytes, 64 documents' framing, the options'.
        let limits = encoder_limits(65_536, 32_768, 64 << 20);
        assert_eq!(
            limits.max_request_bytes(),
            (1 << 20) + (64 << 10) + (64 << 10)
        );
        // Every token as the widest id (a 5-byte varint) fits in the same.
        assert!(5 * 65_536 < limits.max_request_bytes());
        // One document may be longer than the request's token budget allows in text.
        let one_long = encoder_limits(1_000, 32_768, 64 << 20);
        assert_eq!(
            one_long.max_request_bytes(),
            524_288 + (64 << 10) + (64 << 10)
        );
    }

    #[test]
    fn the_message_limit_caps_the_request_limit() {
        let limits = encoder_limits(65_536, 32_768, 1 << 20);
        assert_eq!(limits.max_request_bytes(), 1 << 20);
    }

    #[test]
    fn each_service_reports_its_own_limits() {
        let args = Command::parse_from(["decoder-svc", "--model", "m", "--adapter", "a"]);
        let decoder = DecoderLimits::from_args(&args.service, 16, 1 << 30).to_proto();
        assert_eq!((decoder.max_spans, decoder.max_new_tokens), (16, 1024));
        assert_eq!(decoder.max_documents_per_request, 0);
        assert_eq!(decoder.max_request_bytes, 64 << 20);
        assert_eq!((decoder.default_ttl, decoder.max_ttl), (None, None));
        let encoder = encoder_limits(65_536, 32_768, 64 << 20).to_proto();
        assert_eq!((encoder.max_spans, encoder.max_new_tokens), (0, 0));
        assert_eq!(encoder.max_documents_per_request, 64);
        assert_eq!(encoder.max_input_bytes, 32_768 * 16);
        assert_eq!(encoder.default_ttl, Some(time::seconds(3600)));
        assert_eq!(encoder.max_ttl, Some(time::seconds(30 * 24 * 3600)));
    }
}
