//! Autoregressive decoding from input embeddings: sampling, stop conditions and streaming
//! text deltas. LoRA is always off here: the decoder is the unchanged base model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{IcaeError, InputError, ModelError};
use crate::model::{KvCache, LlamaModel};
use crate::tokenizer::TextTokenizer;

#[path = "output_text.rs"]
mod output_text;
pub use output_text::OutputText;

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 256;
/// Temperatures below this decode greedily: dividing f32 logits by a temperature near
/// f32's smallest normal overflows to ±inf and would sample the least likely token, and
/// any temperature this small puts all the mass on the maximum anyway.
pub const GREEDY_BELOW_TEMPERATURE: f64 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 (or anything below [`GREEDY_BELOW_TEMPERATURE`]) means greedy.
    pub temperature: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f64,
    pub seed: u64,
    pub stop: Vec<String>,
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }

    /// Refuse values that have no meaning; `limit` is the server's cap on new tokens.
    pub fn validate(&self, limit: usize) -> Result<(), InputError> {
        let bad = |name, value: String, expected: String| {
            Err(InputError::BadParameter {
                name,
                value,
                expected,
            })
        };
        if self.max_new_tokens == 0 || self.max_new_tokens > limit {
            return bad(
                "max_new_tokens",
                self.max_new_tokens.to_string(),
                format!("must be in 1..={limit}"),
            );
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad(
                "temperature",
                self.temperature.to_string(),
                format!("must be in [0, 100] (below {GREEDY_BELOW_TEMPERATURE} = greedy)"),
            );
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", self.top_p.to_string(), "must be in (0, 1]".into());
        }
        if self.stop.len() > MAX_STOP_STRINGS
            || self
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_STRING_BYTES)
        {
            return bad(
                "stop",
                format!("{} strings", self.stop.len()),
                format!("allows at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_STRING_BYTES} bytes"),
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW_TEMPERATURE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` was reached.
    Length,
    /// A stop string appeared in the text.
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// One generated token and the text it made final.
#[derive(Debug, Clone)]
pub struct Step {
    pub token_id: u32,
    pub text_delta: String,
    pub finished: Option<FinishReason>,
}

/// One sequence being decoded: its cache, sampler state and emitted text.
pub struct Sequence {
    cache: KvCache,
    /// Prompt embeddings not yet run through the model (`[1, len, hidden]`); dropped once
    /// the prefill is done.
    prompt: Option<Tensor>,
    next_position: i64,
    /// Logits of the next token; `None` until the prefill is done.
    next_logits: Option<Tensor>,
    params: SamplingParams,
    eos_ids: Vec<u32>,
    rng: ChaCha8Rng,
    generated: Vec<u32>,
    text: OutputText,
    emitted: usize,
    finished: Option<FinishReason>,
    prompt_len: usize,
    /// The sampled token not yet run through the model.
    pending: Option<u32>,
}

impl Sequence {
    /// Prefill the decoder with `embeds` (`[1, len, hidden]`, positions 0..len) in one pass.
    pub fn start(
        model: &LlamaModel,
        embeds: &Tensor,
        params: SamplingParams,
        eos_ids: Vec<u32>,
    ) -> Result<Self, IcaeError> {
        let mut sequence = Self::begin(model, embeds, params, eos_ids)?;
        sequence.prefill_chunk(model, sequence.prefill_remaining())?;
        Ok(sequence)
    }

    /// A sequence whose prompt `embeds` (`[1, len, hidden]`) still has to be prefilled with
    /// [`Sequence::prefill_chunk`]: a scheduler can then interleave a long prompt's
    /// prefill with other sequences' decoding steps. Nothing runs through the model here.
    pub fn begin(
        model: &LlamaModel,
        embeds: &Tensor,
        params: SamplingParams,
        eos_ids: Vec<u32>,
    ) -> Result<Self, IcaeError> {
        let len = embeds.size()[1];
        let limit = model.config.max_position_embeddings;
        let needed = len as usize + params.max_new_tokens;
        if needed > limit {
            return Err(InputError::ContextTooLong {
                actual: needed,
                limit,
            }
            .into());
        }
        Ok(Sequence {
            cache: model.new_cache(len + params.max_new_tokens as i64),
            prompt: Some(embeds.shallow_clone()),
            next_position: 0,
            next_logits: None,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            eos_ids,
            generated: Vec::new(),
            text: OutputText::default(),
            emitted: 0,
            finished: None,
            prompt_len: len as usize,
            pending: None,
        })
    }

    /// Run the next (at most) `max_positions` prompt positions through the model, extending
    /// the cache; the last chunk leaves the first token's logits. Returns how many ran.
    pub fn prefill_chunk(
        &mut self,
        model: &LlamaModel,
        max_positions: usize,
    ) -> Result<usize, IcaeError> {
        let _guard = tch::no_grad_guard();
        let Some(prompt) = &self.prompt else {
            return Ok(0);
        };
        let start = self.next_position;
        let count = (self.prompt_len as i64 - start).min(max_positions as i64);
        if count <= 0 {
            return Ok(0);
        }
        let chunk = prompt.narrow(1, start, count);
        let positions =
            Tensor::arange_start(start, start + count, (Kind::Int64, model.device)).unsqueeze(0);
        let hidden = model.forward(&chunk, &positions, None, Some(&mut self.cache), None);
        self.next_position += count;
        if self.next_position == self.prompt_len as i64 {
            self.next_logits = Some(model.logits(&hidden.narrow(1, count - 1, 1)).view([-1]));
            self.prompt = None;
        }
        Ok(count as usize)
    }

    /// Prompt positions still to prefill (0 once the sequence can choose tokens).
    pub fn prefill_remaining(&self) -> usize {
        self.prompt_len - self.next_position.min(self.prompt_len as i64) as usize
    }

    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Logits of the next token (`[vocab]`, f32), once the prefill is done.
    pub fn next_logits(&self) -> Option<&Tensor> {
        self.next_logits.as_ref()
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Sample the next token, run it through the model, and report the text it completes.
    pub fn step(
        &mut self,
        model: &LlamaModel,
        tokenizer: &TextTokenizer,
    ) -> Result<Step, IcaeError> {
        let step = self.choose(tokenizer)?;
        if step.finished.is_none() {
            decode_batch(model, &mut [self])?;
        }
        Ok(step)
    }

    /// Sample the next token from the latest logits and report the text it completes. When
    /// the sequence goes on, the token waits in `pending` for the next `decode_batch`.
    pub fn choose(&mut self, tokenizer: &TextTokenizer) -> Result<Step, IcaeError> {
        let next_logits = self
            .next_logits
            .as_ref()
            .ok_or(IcaeError::Model(ModelError::NotPrefilled))?;
        let logits: Vec<f32> = Vec::try_from(next_logits)?;
        let token = sample(&logits, &self.params, &mut self.rng);
        if self.eos_ids.contains(&token) {
            return self.finish(token, FinishReason::Eos);
        }
        self.generated.push(token);
        self.text.push(token, &self.generated, tokenizer)?;
        let text = self.text.as_str();
        if let Some(cut) = find_stop(text, &self.params.stop, self.emitted) {
            let delta = text[self.emitted..cut].to_string();
            self.emitted = cut;
            self.finished = Some(FinishReason::Stop);
            return Ok(Step {
                token_id: token,
                text_delta: delta,
                finished: self.finished,
            });
        }
        if self.generated.len() >= self.params.max_new_tokens {
            return self.finish(token, FinishReason::Length);
        }
        let safe = safe_prefix_len(text, &self.params.stop).max(self.emitted);
        let delta = text[self.emitted..safe].to_string();
        self.emitted = safe;
        self.pending = Some(token);
        Ok(Step {
            token_id: token,
            text_delta: delta,
            finished: None,
        })
    }

    fn finish(&mut self, token: u32, reason: FinishReason) -> Result<Step, IcaeError> {
        let text = self.text.as_str();
        let delta = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        self.finished = Some(reason);
        Ok(Step {
            token_id: token,
            text_delta: delta,
            finished: Some(reason),
        })
    }
}

/// Feed every sequence's pending token through the model in one batched step, leaving each
/// with the logits of its next token. Sequences without a pending token are skipped.
pub fn decode_batch(model: &LlamaModel, sequences: &mut [&mut Sequence]) -> Result<(), IcaeError> {
    let _guard = tch::no_grad_guard();
    let mut ready: Vec<&mut Sequence> = sequences
        .iter_mut()
        .filter(|s| s.pending.is_some())
        .map(|s| &mut **s)
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    let tokens: Vec<i64> = ready
        .iter()
        .map(|s| s.pending.unwrap_or_default() as i64)
        .collect();
    let positions: Vec<i64> = ready.iter().map(|s| s.next_position).collect();
    let embeds = model.embed(&Tensor::from_slice(&tokens).view([tokens.len() as i64, 1]));
    let hidden = {
        let mut caches: Vec<&mut KvCache> = ready.iter_mut().map(|s| &mut s.cache).collect();
        model.decode_step(&embeds, &positions, &mut caches)
    };
    let logits = model.logits(&hidden);
    for (row, sequence) in ready.iter_mut().enumerate() {
        sequence.next_logits = Some(logits.get(row as i64).view([-1]));
        sequence.next_position += 1;
        sequence.pending = None;
    }
    Ok(())
}

/// Pick the next token id from `logits` (f32, base vocabulary).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    if params.is_greedy() {
        return argmax(logits) as u32;
    }
    let inv_t = 1.0 / params.temperature as f32;
    let mut candidates: Vec<(usize, f32)> = logits.iter().map(|&l| l * inv_t).enumerate().collect();
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    let max = candidates[0].1;
    let mut probs: Vec<f64> = candidates
        .iter()
        .map(|&(_, l)| ((l - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                cumulative += p;
                cumulative >= params.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        candidates.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut draw = rng.gen::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        draw -= p;
        if draw <= 0.0 {
            return candidates[i].0 as u32;
        }
    }
    candidates[candidates.len() - 1].0 as u32
}

/// Index of the first maximum (ties resolve like `torch.argmax`).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Byte offset where the earliest stop string begins, searching text not yet emitted.
fn find_stop(text: &str, stops: &[String], emitted: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let from = floor_char_boundary(text, emitted.saturating_sub(s.len()));
            text[from..].find(s.as_str()).map(|i| from + i)
        })
        .min()
}

/// Length of the text that is safe to emit: no trailing partial character (decoded as
/// U+FFFD) and no suffix that could still grow into a stop string.
fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let base = text.trim_end_matches('\u{FFFD}').len();
    let held = stops
        .iter()
        .flat_map(|stop| {
            stop.char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .filter(|&i| text[..base].ends_with(&stop[..i]))
        })
        .max()
        .unwrap_or(0);
    base - held
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let params = SamplingParams::greedy(1);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample(&[0.1, 3.0, 3.0, -1.0], &params, &mut rng), 1);
    }

    #[test]
    fn tiny_temperatures_are_greedy_instead_of_overflowing() {
        // 1 / 1e-38 as f32 is inf: the logits became ±inf/NaN and the least likely token
        // came out. Every token but the maximum must now be impossible.
        let logits = [-2.0f32, 5.0, 4.9, -30.0];
        for temperature in [1e-38, 1e-30, 1e-6, f64::MIN_POSITIVE] {
            let params = SamplingParams {
                temperature,
                seed: 11,
                ..SamplingParams::greedy(1)
            };
            assert!(params.is_greedy(), "{temperature}");
            assert!(params.validate(10).is_ok());
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            for _ in 0..20 {
                assert_eq!(sample(&logits, &params, &mut rng), 1, "{temperature}");
            }
        }
        let warm = SamplingParams {
            temperature: 1e-4,
            ..SamplingParams::greedy(1)
        };
        assert!(!warm.is_greedy());
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..SamplingParams::greedy(1)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(sample(&[0.0, 0.5, 2.0, 1.9], &params, &mut rng), 2);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // softmax([10, 0, 0, 0]) puts > 0.99 on token 0: top_p 0.9 keeps only it.
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            ..SamplingParams::greedy(1)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(sample(&[10.0, 0.0, 0.0, 0.0], &params, &mut rng), 0);
        }
    }

    #[test]
    fn sampling_is_reproducible_for_a_seed_and_follows_the_distribution() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: 3,
            ..SamplingParams::greedy(1)
        };
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..4000)
                .map(|_| sample(&logits, &params, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let ones = draw(3).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "share of token 1 was {ones}");
    }

    #[test]
    fn stop_strings_hold_back_possible_prefixes() {
        let stops = vec!["END".to_string()];
        assert_eq!(safe_prefix_len("hello E", &stops), 6);
        assert_eq!(safe_prefix_len("hello EN", &stops), 6);
        assert_eq!(safe_prefix_len("hello X", &stops), 7);
        assert_eq!(find_stop("hello END more", &stops, 6), Some(6));
        assert_eq!(safe_prefix_len("caf\u{FFFD}", &[]), 3);
    }

    #[test]
    fn invalid_parameters_name_the_value_and_limit() {
        let params = SamplingParams {
            max_new_tokens: 5000,
            ..SamplingParams::greedy(1)
        };
        let err = params.validate(1024).unwrap_err().to_string();
        assert!(err.contains("5000") && err.contains("1024"), "{err}");
        let params = SamplingParams {
            top_p: 1.5,
            ..SamplingParams::greedy(1)
        };
        assert!(params
            .validate(10)
            .unwrap_err()
            .to_string()
            .contains("top_p is 1.5"));
        let params = SamplingParams {
            temperature: -1.0,
            ..SamplingParams::greedy(1)
        };
        assert!(params.validate(10).is_err());
    }
}
