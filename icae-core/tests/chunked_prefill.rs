//! A prompt prefilled in chunks (what the decoder's scheduler does between decoding steps)
//! leaves the same cache and logits as one pass over the whole prompt.

mod common;

use common::real_model::real_model_dir;
use common::tiny_model::tiny_model;
use icae_core::generate::{decode_batch, Sequence};
use icae_core::model::LlamaModel;
use icae_core::tokenizer::TextTokenizer;
use icae_core::SamplingParams;
use tch::{Device, Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Prefill with chunks of at most `chunk` positions; returns the chunk sizes that ran.
fn prefill_in_chunks(sequence: &mut Sequence, model: &LlamaModel, chunk: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while sequence.prefill_remaining() > 0 {
        sizes.push(sequence.prefill_chunk(model, chunk).unwrap());
    }
    sizes
}

#[test]
fn chunked_prefill_gives_the_logits_of_a_one_shot_prefill() {
    let tiny = tiny_model();
    let model = LlamaModel::load(&tiny.path, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = TextTokenizer::load(&tiny.path).unwrap();
    let vocab = tiny.config.vocab_size as i64;
    let ids: Vec<i64> = (0..37).map(|i| (i * 7 + 3) % vocab).collect();
    let embeds = model.embed(&Tensor::from_slice(&ids).unsqueeze(0));
    let params = SamplingParams::greedy(6);

    let mut one_shot = Sequence::start(&model, &embeds, params.clone(), vec![]).unwrap();
    for chunk in [1, 5, 16, 36, 37, 100] {
        let mut chunked = Sequence::begin(&model, &embeds, params.clone(), vec![]).unwrap();
        assert!(chunked.next_logits().is_none());
        assert!(
            chunked.choose(&tokenizer).is_err(),
            "no token before the prefill"
        );
        let sizes = prefill_in_chunks(&mut chunked, &model, chunk);
        assert_eq!(sizes.iter().sum::<usize>(), 37);
        assert!(sizes.iter().all(|&n| n <= chunk), "{sizes:?}");
        assert_eq!(chunked.prefill_chunk(&model, chunk).unwrap(), 0);
        let diff = max_abs_diff(
            chunked.next_logits().unwrap(),
            one_shot.next_logits().unwrap(),
        );
        assert!(diff < 1e-4, "chunk {chunk}: logits differ by {diff}");

        // The caches agree too: the decoding steps that follow give the same logits.
        let mut fresh = Sequence::start(&model, &embeds, params.clone(), vec![]).unwrap();
        for step in 0..5 {
            let a = chunked.choose(&tokenizer).unwrap().token_id;
            let b = fresh.choose(&tokenizer).unwrap().token_id;
            assert_eq!(a, b, "chunk {chunk}, step {step}");
            decode_batch(&model, &mut [&mut chunked, &mut fresh]).unwrap();
            let diff = max_abs_diff(chunked.next_logits().unwrap(), fresh.next_logits().unwrap());
            assert!(diff < 1e-4, "chunk {chunk}, step {step}: {diff}");
        }
    }
    // The one-shot sequence is itself a one-chunk prefill: nothing is left.
    assert_eq!(one_shot.prefill_remaining(), 0);
    assert_eq!(one_shot.prefill_chunk(&model, 10).unwrap(), 0);
}

/// The same in bf16 (the CUDA path, run on the CPU): chunks change only how attention and
/// matmuls are blocked, i.e. where bf16 rounds, so the logits agree within bf16's precision:
/// 2·(layers + 1)·u·max|logit| with the unit roundoff u = 2^-8 (each layer's residual update
/// and the head round once, by at most u relative; two roundings of the same computation
/// differ by at most twice that). The tokens then chosen agree wherever the top-2 margin
/// exceeds twice that tolerance.
#[test]
fn chunked_prefill_in_bf16_agrees_within_bf16_precision() {
    let tiny = tiny_model();
    let model = LlamaModel::load(&tiny.path, Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(model.kind, Kind::BFloat16);
    let tokenizer = TextTokenizer::load(&tiny.path).unwrap();
    let vocab = tiny.config.vocab_size as i64;
    let ids: Vec<i64> = (0..37).map(|i| (i * 7 + 3) % vocab).collect();
    let embeds = model.embed(&Tensor::from_slice(&ids).unsqueeze(0));
    let params = SamplingParams::greedy(2);
    let unit_roundoff = 2f64.powi(-8);
    let depth = tiny.config.num_hidden_layers as f64;

    let mut one_shot = Sequence::start(&model, &embeds, params.clone(), vec![]).unwrap();
    let reference = one_shot.next_logits().unwrap().to_kind(Kind::Float);
    let max_logit = reference.abs().max().double_value(&[]);
    let tolerance = 2.0 * (depth + 1.0) * unit_roundoff * max_logit;
    let top = reference.flatten(0, -1).topk(2, -1, true, true).0;
    let margin = top.double_value(&[0]) - top.double_value(&[1]);
    let expected = one_shot.choose(&tokenizer).unwrap().token_id;
    for chunk in [1, 5, 16, 37] {
        let mut chunked = Sequence::begin(&model, &embeds, params.clone(), vec![]).unwrap();
        prefill_in_chunks(&mut chunked, &model, chunk);
        let logits = chunked.next_logits().unwrap().to_kind(Kind::Float);
        let diff = max_abs_diff(&logits, &reference);
        assert!(diff <= tolerance, "chunk {chunk}: {diff} > {tolerance}");
        if margin > 2.0 * tolerance {
            assert_eq!(chunked.choose(&tokenizer).unwrap().token_id, expected);
        }
    }
}

/// Figures for BENCHMARKS.md and the chunk size advice in docs/deploy.md (needs the real
/// model): `cargo test --release -p icae-core --test chunked_prefill -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_chunked_prefill_of_the_real_model() {
    let dir = real_model_dir();
    let model = LlamaModel::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let ids: Vec<i64> = (0..2048).map(|i| 100 + (i * 37) % 20000).collect();
    let embeds = model.embed(&Tensor::from_slice(&ids).unsqueeze(0));
    let params = SamplingParams::greedy(1);
    let time = |chunk: usize| {
        let started = std::time::Instant::now();
        let mut sequence = Sequence::begin(&model, &embeds, params.clone(), vec![]).unwrap();
        let chunks = prefill_in_chunks(&mut sequence, &model, chunk).len();
        let seconds = started.elapsed().as_secs_f64();
        (seconds, seconds / chunks as f64)
    };
    let (one_shot, _) = time(2048);
    println!("2,048 positions in one pass: {one_shot:.2}s");
    for chunk in [8, 16, 32, 256] {
        let (total, per_chunk) = time(chunk);
        println!(
            "chunks of {chunk}: {total:.2}s in all ({:.2}× one pass), {:.1} ms per chunk",
            total / one_shot,
            per_chunk * 1e3
        );
    }
}
