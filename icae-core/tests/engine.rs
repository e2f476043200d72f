//! Engine invariants on a tiny random model: the KV cache, padded batches and batched
//! segment compression must each give what the plain computation gives.

mod common;

use common::tiny_model::{tiny_icae, tiny_model};
use icae_core::model::LlamaModel;
use icae_core::{Mode, SamplingParams, ToCompress};
use tch::{Device, Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).unsqueeze(0)
}

fn positions(n: i64, start: i64) -> Tensor {
    Tensor::arange_start(start, start + n, (Kind::Int64, Device::Cpu)).unsqueeze(0)
}

#[test]
fn incremental_decoding_with_the_cache_equals_a_full_forward() {
    let tiny = tiny_model();
    let model = LlamaModel::load(&tiny.path, Device::Cpu, Kind::Float).unwrap();
    let _guard = tch::no_grad_guard();
    let tokens = [3i64, 7, 11, 5, 20, 9, 4, 30, 2, 17];
    let full = model.forward(
        &model.embed(&ids(&tokens)),
        &positions(10, 0),
        None,
        None,
        None,
    );

    let mut cache = model.new_cache(2); // small on purpose: it must grow
    let mut pieces = vec![model.forward(
        &model.embed(&ids(&tokens[..6])),
        &positions(6, 0),
        None,
        Some(&mut cache),
        None,
    )];
    for (i, &t) in tokens[6..].iter().enumerate() {
        pieces.push(model.forward(
            &model.embed(&ids(&[t])),
            &positions(1, 6 + i as i64),
            None,
            Some(&mut cache),
            None,
        ));
    }
    assert_eq!(cache.len(), 10);
    let incremental = Tensor::cat(&pieces, 1);
    assert!(max_abs_diff(&full, &incremental) < 1e-5);
    // Also a multi-token chunk after a cached prefix (explicit mask path).
    let mut cache = model.new_cache(16);
    let a = model.forward(
        &model.embed(&ids(&tokens[..4])),
        &positions(4, 0),
        None,
        Some(&mut cache),
        None,
    );
    let b = model.forward(
        &model.embed(&ids(&tokens[4..])),
        &positions(6, 4),
        None,
        Some(&mut cache),
        None,
    );
    assert!(max_abs_diff(&full, &Tensor::cat(&[a, b], 1)) < 1e-5);
}

#[test]
fn a_left_padded_batch_equals_each_row_alone() {
    let tiny = tiny_model();
    let model = LlamaModel::load(&tiny.path, Device::Cpu, Kind::Float).unwrap();
    let _guard = tch::no_grad_guard();
    let long = [5i64, 6, 7, 8, 9, 10];
    let short = [11i64, 12, 13];
    let alone_long = model.forward(
        &model.embed(&ids(&long)),
        &positions(6, 0),
        None,
        None,
        None,
    );
    let alone_short = model.forward(
        &model.embed(&ids(&short)),
        &positions(3, 0),
        None,
        None,
        None,
    );

    let batch_ids = Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 0, 0, 0, 11, 12, 13]).view([2, 6]);
    let batch_pos = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 0, 0, 0, 0, 1, 2]).view([2, 6]);
    let key_mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]).view([2, 6]);
    let batched = model.forward(
        &model.embed(&batch_ids),
        &batch_pos,
        Some(&key_mask),
        None,
        None,
    );
    assert!(max_abs_diff(&batched.get(0), &alone_long.get(0)) < 1e-5);
    assert!(max_abs_diff(&batched.get(1).narrow(0, 3, 3), &alone_short.get(0)) < 1e-5);
    assert!(
        batched.isfinite().all().int64_value(&[]) == 1,
        "padding rows must not produce NaN"
    );
}

#[test]
fn batched_segments_equal_segments_compressed_alone() {
    let (tiny, _dir, icae) = tiny_icae();
    let capacity = icae.adapter.segment_capacity(); // 16 tokens per segment
    let vocab = tiny.config.vocab_size as u32;
    let doc: Vec<u32> = (0..(3 * capacity + 5) as u32)
        .map(|i| (i * 7 + 3) % vocab)
        .collect();
    let all = icae.compress(&doc).unwrap();
    assert_eq!(all.num_segments, 4);
    let seg_len = doc.len().div_ceil(4);
    let alone: Vec<Tensor> = doc
        .chunks(seg_len)
        .map(|seg| icae.compress(seg).unwrap().slots)
        .collect();
    assert!(max_abs_diff(&all.slots, &Tensor::cat(&alone, 0)) < 1e-5);
    assert_eq!(all.slots.size(), vec![16, tiny.config.hidden_size as i64]);
}

#[test]
fn lora_changes_the_encoder_but_never_the_decoder() {
    let (_tiny, _dir, icae) = tiny_icae();
    let _guard = tch::no_grad_guard();
    let x = icae.base.embed(&ids(&[3, 4, 5, 6]));
    let with = icae
        .base
        .forward(&x, &positions(4, 0), None, None, Some(&icae.adapter.lora));
    let without = icae.base.forward(&x, &positions(4, 0), None, None, None);
    assert!(
        max_abs_diff(&with, &without) > 1e-3,
        "the random LoRA must matter"
    );

    // Generation runs LoRA off: the same as a base-model greedy loop written out here.
    let slots = icae.compress(&[3, 4, 5, 6, 7]).unwrap().slots;
    let embeds = icae
        .decoder_input(&[slots], Mode::Autoencode, None)
        .unwrap();
    let generated = icae
        .generate(&embeds, SamplingParams::greedy(6), |_| {})
        .unwrap();
    let mut seq = embeds.copy();
    let mut expected = Vec::new();
    for _ in 0..generated.token_ids.len() {
        let n = seq.size()[1];
        let h = icae.base.forward(&seq, &positions(n, 0), None, None, None);
        let next = icae
            .base
            .logits(&h.narrow(1, n - 1, 1))
            .view([-1])
            .argmax(0, false)
            .int64_value(&[]);
        expected.push(next as u32);
        seq = Tensor::cat(&[seq, icae.base.embed(&ids(&[next]))], 1);
    }
    assert_eq!(generated.token_ids, expected);
}

#[test]
fn decoder_layouts_have_the_documented_lengths() {
    let (_tiny, _dir, mut icae) = tiny_icae();
    let a = icae.compress(&[3, 4, 5]).unwrap().slots;
    let b = icae.compress(&[6, 7, 8, 9]).unwrap().slots;
    let len = |t: Tensor| t.size()[1];
    assert_eq!(
        len(icae
            .decoder_input(
                &[a.shallow_clone(), b.shallow_clone()],
                Mode::Autoencode,
                None
            )
            .unwrap()),
        9
    );
    assert_eq!(
        len(icae
            .decoder_input(&[a.shallow_clone()], Mode::Continue, None)
            .unwrap()),
        4
    );
    // No chat template in the tiny model: ANSWER is refused with a reason.
    let err = icae
        .decoder_input(&[a.shallow_clone()], Mode::Answer, Some(&[5]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("chat template"), "{err}");
    icae.adapter.config.chat = Some(icae_core::tokenizer::ChatPieces {
        prefix: "p".into(),
        suffix: "s".into(),
        prefix_ids: vec![1, 5],
        suffix_ids: vec![2, 6, 7],
    });
    assert_eq!(
        len(icae
            .decoder_input(&[a.shallow_clone()], Mode::Answer, Some(&[5, 6]))
            .unwrap()),
        2 + 4 + 1 + 2 + 3
    );
    let err = icae
        .decoder_input(&[a.shallow_clone()], Mode::Answer, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a prompt"), "{err}");
    let wrong = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
    let err = icae
        .decoder_input(&[a, wrong], Mode::Autoencode, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slot set 1") && err.contains("hidden size 3"),
        "{err}"
    );
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused_before_the_model() {
    let (tiny, _dir, icae) = tiny_icae();
    let vocab = tiny.config.vocab_size as u32;
    let err = icae
        .check_token_ids(&[1, vocab + 5], 100)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}", vocab + 5)) && err.contains("position 1"),
        "{err}"
    );
    let err = icae
        .check_token_ids(&[1; 101], 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("101") && err.contains("100"), "{err}");
    assert!(icae.check_token_ids(&[], 100).is_err());
}

#[test]
fn batched_decoding_of_unequal_sequences_equals_each_alone() {
    use icae_core::generate::{decode_batch, Sequence};
    let (_tiny, _dir, icae) = tiny_icae();
    let prompts: Vec<Tensor> = [vec![3u32, 4, 5], vec![6, 7, 8, 9, 10, 11, 12], vec![13]]
        .iter()
        .map(|doc| {
            icae.decoder_input(&[icae.compress(doc).unwrap().slots], Mode::Autoencode, None)
                .unwrap()
        })
        .collect();
    let params = SamplingParams {
        temperature: 0.8,
        seed: 5,
        ..SamplingParams::greedy(12)
    };
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| icae.generate(p, params.clone(), |_| {}).unwrap().token_ids)
        .collect();

    let mut sequences: Vec<Sequence> = prompts
        .iter()
        .map(|p| Sequence::start(&icae.base, p, params.clone(), vec![]).unwrap())
        .collect();
    let mut batched: Vec<Vec<u32>> = vec![Vec::new(); 3];
    while sequences.iter().any(|s| s.finished().is_none()) {
        for (i, s) in sequences.iter_mut().enumerate() {
            if s.finished().is_none() {
                batched[i].push(s.choose(&icae.tokenizer).unwrap().token_id);
            }
        }
        let mut refs: Vec<&mut Sequence> = sequences.iter_mut().collect();
        decode_batch(&icae.base, &mut refs).unwrap();
    }
    assert_eq!(batched, alone);
}

#[test]
fn documents_compressed_together_equal_documents_compressed_alone() {
    let (tiny, _dir, icae) = tiny_icae();
    let vocab = tiny.config.vocab_size as u32;
    let docs: Vec<Vec<u32>> = [5usize, 16, 40, 16, 33]
        .iter()
        .map(|&n| (0..n as u32).map(|i| (i * 13 + n as u32) % vocab).collect())
        .collect();
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let together = icae.compress_many(&refs).unwrap();
    for (doc, got) in docs.iter().zip(&together) {
        let alone = icae.compress(doc).unwrap();
        assert_eq!(got.num_segments, alone.num_segments);
        assert_eq!(got.num_tokens, doc.len());
        assert!(max_abs_diff(&got.slots, &alone.slots) < 1e-5);
    }
}

/// A segment read with its first k memory tokens is, under causal attention, the same
/// computation as the full segment cut after its k-th memory token: its slots are the
/// first k of that segment's slots at the trained rate, whatever else shares the batch.
#[test]
fn fewer_slots_per_segment_are_the_first_slots_of_each_segment() {
    let (tiny, _dir, icae) = tiny_icae();
    let vocab = tiny.config.vocab_size as u32;
    let mem_size = icae.adapter.mem_size();
    let doc: Vec<u32> = (0..40u32).map(|i| (i * 7 + 3) % vocab).collect();
    let full = icae.compress(&doc).unwrap();
    let hidden = full.slots.size()[1];
    let per_segment = full
        .slots
        .view([full.num_segments as i64, mem_size as i64, hidden]);
    let documents: Vec<ToCompress> = (1..=mem_size)
        .map(|slots_per_segment| ToCompress::whole(&doc, slots_per_segment))
        .collect();
    let sparse = icae.compress_wanted(&documents, &|_| true).unwrap();
    for (k, got) in (1..=mem_size).zip(sparse) {
        let got = got.unwrap();
        assert_eq!(got.num_segments, full.num_segments);
        assert_eq!(got.slots.size(), [(full.num_segments * k) as i64, hidden]);
        let expected = per_segment.narrow(1, 0, k as i64).reshape([-1, hidden]);
        assert!(max_abs_diff(&got.slots, &expected) < 1e-5, "k = {k}");
    }
    for bad in [0, mem_size + 1] {
        let document = ToCompress::whole(&doc, bad);
        let err = icae.compress_wanted(&[document], &|_| true).err().unwrap();
        let message = err.to_string();
        assert!(
            message.contains("slots_per_segment") && message.contains(&format!("1..={mem_size}")),
            "{message}"
        );
    }
}

/// A long document compressed a few segments at a time gives, concatenated, the slots it
/// gets in one call; a range outside the document is refused.
#[test]
fn segments_compressed_in_parts_equal_the_whole() {
    let (tiny, _dir, icae) = tiny_icae();
    let vocab = tiny.config.vocab_size as u32;
    let mem_size = icae.adapter.mem_size();
    let doc: Vec<u32> = (0..70u32).map(|i| (i * 5 + 1) % vocab).collect();
    let whole = icae.compress(&doc).unwrap();
    let n = whole.num_segments;
    assert!(n >= 4, "{n} segments");
    let parts: Vec<ToCompress> = [0..1, 1..3, 3..n]
        .into_iter()
        .map(|range| ToCompress {
            segments: Some(range),
            ..ToCompress::whole(&doc, mem_size)
        })
        .collect();
    let parts: Vec<Tensor> = icae
        .compress_wanted(&parts, &|_| true)
        .unwrap()
        .into_iter()
        .map(|part| part.unwrap().slots)
        .collect();
    assert!(max_abs_diff(&Tensor::cat(&parts, 0), &whole.slots) < 1e-5);
    for bad in [n..n + 1, 2..2] {
        let document = ToCompress {
            segments: Some(bad.clone()),
            ..ToCompress::whole(&doc, mem_size)
        };
        let err = icae.compress_wanted(&[document], &|_| true).err().unwrap();
        assert!(err.to_string().contains("segments"), "{bad:?}: {err}");
    }
}
