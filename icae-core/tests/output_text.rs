//! The generation text kept up to date token by token equals decoding every token at once,
//! also while multi-byte characters arrive split over several tokens.

mod common;

use std::path::Path;

use common::real_model::real_model_dir;
use icae_core::generate::OutputText;
use icae_core::tokenizer::TextTokenizer;

/// GPT-2's byte-to-character table: byte-level BPE spells byte `b` as `chars[b]`.
fn byte_chars() -> Vec<char> {
    let printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            let code = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(code).unwrap()
        })
        .collect()
}

/// A byte-level tokenizer without merges: every byte is a token, so every multi-byte
/// character is split over several tokens.
fn bytes_tokenizer(dir: &Path) -> TextTokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), id.into()))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []
        }
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    TextTokenizer::load(dir).unwrap()
}

#[test]
fn text_pushed_token_by_token_equals_the_full_decode_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = bytes_tokenizer(dir.path());
    let text = "Grüße, 世界! 🎉👩‍💻 naïve — done.\n🦀";
    let ids = tokenizer.encode_fragment(text).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");

    let mut output = OutputText::default();
    let mut partial_steps = 0;
    for end in 1..=ids.len() {
        output.push(ids[end - 1], &ids[..end], &tokenizer).unwrap();
        let full = tokenizer.decode(&ids[..end], true).unwrap();
        assert_eq!(output.as_str(), full, "after {end} tokens");
        partial_steps += usize::from(full.ends_with('\u{FFFD}'));
    }
    assert_eq!(output.as_str(), text);
    assert!(
        partial_steps > 10,
        "the text must split characters over tokens"
    );
}

/// Before/after figure for BENCHMARKS.md (needs the real model's tokenizer):
/// `cargo test --release -p icae-core --test output_text -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_text_cost_per_step_at_1000_tokens() {
    let dir = real_model_dir();
    let tokenizer = TextTokenizer::load(&dir).unwrap();
    let text =
        "Entry: near the harbour someone counted 🎉 lanterns, écrit deux fois, 世界. ".repeat(100);
    let ids: Vec<u32> = tokenizer.encode_fragment(&text).unwrap()[..1000].to_vec();
    // Seconds per step over the last 100 of 1,000 steps, and for the whole generation.
    let time = |step: &mut dyn FnMut(usize)| {
        let started = std::time::Instant::now();
        let mut last_100 = 0.0;
        for end in 1..=ids.len() {
            let t = std::time::Instant::now();
            step(end);
            if end > ids.len() - 100 {
                last_100 += t.elapsed().as_secs_f64();
            }
        }
        (last_100 / 100.0, started.elapsed().as_secs_f64())
    };
    let (old_step, old_total) = time(&mut |end| {
        std::hint::black_box(tokenizer.decode(&ids[..end], true).unwrap());
    });
    let mut output = OutputText::default();
    let (new_step, new_total) = time(&mut |end| {
        output.push(ids[end - 1], &ids[..end], &tokenizer).unwrap();
    });
    assert_eq!(output.as_str(), tokenizer.decode(&ids, true).unwrap());
    println!(
        "per step at 1,000 tokens: full decode {:.1} µs, incremental {:.1} µs ({:.0}×); \
         1,000 steps: {:.1} ms vs {:.1} ms",
        old_step * 1e6,
        new_step * 1e6,
        old_step / new_step,
        old_total * 1e3,
        new_total * 1e3
    );
}
