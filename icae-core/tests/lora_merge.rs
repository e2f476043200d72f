//! LoRA merged into the weights (`merge_lora_for_encoding`) compresses to the slots the
//! unmerged LoRA path gives, within the rounding of the dtype, on a tiny random model with
//! LoRA on all seven projections (so every block of the stacked q/k/v and gate/up matrices
//! is merged at its own offset). The unmerged path is the reference: it is the one the
//! HF+peft parity tests check.
//!
//! Tolerances. f32: a K-term dot product is within K·u of the exact one (u = 2^-24, the
//! unit roundoff); merging moves rounding from `x·W + s·(x·A)·B` to `x·(W + s·B·A)`, so each
//! projection may differ by about that much, relative to its size. Over L layers that is
//! L·K·u; we allow 8x for attention, SiLU and RMSNorm on top: 8·L·K·u of the largest slot
//! value, K the largest inner dimension (the FFN width). Measured: about a tenth of it.
//!
//! bf16: every activation is rounded to 8 significant bits (u = 2^-8) and this small random
//! model amplifies that to several percent (RMS) between bf16 and f32 slots — the unmerged
//! bf16 path's own distance from f32, measured in the same test, is the yardstick.
//! Merging (in f32, rounded once) must move the slots by less than that distance, and may
//! leave them only a little farther from f32 (rounding `W + s·B·A` to bf16 is one more
//! relative-u error per weight; unmerged bf16 keeps `W` exact): at most 1.5x as far.

mod common;

use common::tiny_model::{adapter_config, seeded_normal, tiny_model, TinyModel};
use icae_core::adapter::{
    official_key, save_adapter, Half, LoadOptions, NamedTensor, MEMORY_EMBED,
};
use icae_core::model::Target;
use icae_core::{DeviceSpec, DtypeSpec, IcaeModel};
use tch::{Device, Kind, Tensor};

const MEM_SIZE: usize = 4;
const RANK: usize = 2;

fn named(name: &str, shape: &[usize], scale: f64, seed: u64) -> NamedTensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    NamedTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: Vec::<f32>::try_from(seeded_normal(&dims, seed, scale).flatten(0, -1)).unwrap(),
    }
}

/// A random adapter with LoRA on every projection; its directory lives in `dir`.
fn all_targets_adapter(tiny: &TinyModel, dir: &std::path::Path) -> std::path::PathBuf {
    let c = &tiny.config;
    let (h, ffn) = (c.hidden_size, c.intermediate_size);
    let q = c.num_attention_heads * c.head_dim();
    let kv = c.kv_heads() * c.head_dim();
    let mut seed = 500;
    let mut tensors = vec![named(MEMORY_EMBED, &[MEM_SIZE + 3, h], 0.3, seed)];
    for layer in 0..c.num_hidden_layers {
        for target in Target::ALL {
            let (input, output) = match target {
                Target::Q => (h, q),
                Target::K | Target::V => (h, kv),
                Target::O => (q, h),
                Target::Gate | Target::Up => (h, ffn),
                Target::Down => (ffn, h),
            };
            seed += 2;
            let a = official_key(layer, target, Half::A);
            let b = official_key(layer, target, Half::B);
            tensors.push(named(&a, &[RANK, input], 0.2, seed));
            tensors.push(named(&b, &[output, RANK], 0.2, seed + 1));
        }
    }
    let mut config = adapter_config(c, MEM_SIZE, RANK);
    config.target_modules = Target::ALL.iter().map(|t| t.name().to_string()).collect();
    let path = dir.join("all-targets");
    save_adapter(&path, &config, &tensors).unwrap();
    path
}

fn load(tiny: &TinyModel, adapter: &std::path::Path, dtype: DtypeSpec) -> IcaeModel {
    IcaeModel::load(
        &tiny.path,
        adapter,
        &LoadOptions::default(),
        DeviceSpec::Cpu,
        dtype,
    )
    .unwrap()
}

/// Documents of 1, 1 and 3 segments (a segment holds mem_size x 4 = 16 tokens).
fn documents(vocab: usize) -> Vec<Vec<u32>> {
    [5usize, 16, 40]
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            (0..n)
                .map(|i| ((i * 7 + d * 13 + 3) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// Every document's slots, in f32.
fn slots(compressed: Vec<icae_core::Compressed>) -> Vec<Tensor> {
    compressed
        .into_iter()
        .map(|c| c.slots.to_kind(Kind::Float))
        .collect()
}

/// The largest |a - b| over all documents, relative to the largest |reference|.
fn relative_error(a: &[Tensor], b: &[Tensor], reference: &[Tensor]) -> f64 {
    let scale = reference
        .iter()
        .map(|r| r.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let diff = a
        .iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    diff / scale
}

/// ‖a - b‖ / ‖reference‖ over all documents (Frobenius): bf16's error is spread over
/// every value, and its maximum is an outlier statistic.
fn rms_error(a: &[Tensor], b: &[Tensor], reference: &[Tensor]) -> f64 {
    let sum_squares = |t: Tensor| t.square().sum(Kind::Double).double_value(&[]);
    let diff: f64 = a.iter().zip(b).map(|(a, b)| sum_squares(a - b)).sum();
    let norm: f64 = reference
        .iter()
        .map(|r| sum_squares(r.shallow_clone()))
        .sum();
    (diff / norm).sqrt()
}

/// 8·L·K·u of f32 (see the module comment).
fn f32_tolerance(tiny: &TinyModel) -> f64 {
    let c = &tiny.config;
    let layers = c.num_hidden_layers as f64;
    let k = c.intermediate_size.max(c.hidden_size) as f64;
    8.0 * layers * k * 2f64.powi(-24)
}

#[test]
fn merged_lora_gives_the_unmerged_slots_in_f32() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = all_targets_adapter(&tiny, dir.path());
    let docs = documents(tiny.config.vocab_size);
    let docs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let f32_tol = f32_tolerance(&tiny);

    let unmerged = load(&tiny, &adapter, DtypeSpec::F32);
    // The LoRA is far from negligible: its effect dwarfs the tolerance.
    let _guard = tch::no_grad_guard();
    let x = unmerged
        .base
        .embed(&Tensor::from_slice(&[3i64, 4, 5, 6]).unsqueeze(0));
    let positions = Tensor::arange(4, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let lora = Some(&unmerged.adapter.lora);
    let with = unmerged.base.forward(&x, &positions, None, None, lora);
    let without = unmerged.base.forward(&x, &positions, None, None, None);
    let effect = relative_error(&[with.shallow_clone()], &[without], &[with]);
    assert!(effect > 1000.0 * f32_tol, "LoRA effect {effect}");
    let reference = slots(unmerged.compress_many(&docs).unwrap());

    let merged = load(&tiny, &adapter, DtypeSpec::F32).merge_lora_for_encoding();
    assert_eq!(merged.fingerprint(), unmerged.fingerprint);
    let merged = slots(merged.compress_many(&docs).unwrap());
    for (m, r) in merged.iter().zip(&reference) {
        assert_eq!(m.size(), r.size());
    }
    let error = relative_error(&merged, &reference, &reference);
    eprintln!("f32: merged vs unmerged {error:.3e} (tolerance {f32_tol:.3e})");
    assert!(error <= f32_tol, "{error} > {f32_tol}");
}

#[test]
fn merged_lora_in_bf16_is_as_close_to_f32_as_unmerged() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = all_targets_adapter(&tiny, dir.path());
    let docs = documents(tiny.config.vocab_size);
    let docs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();

    let reference = slots(
        load(&tiny, &adapter, DtypeSpec::F32)
            .compress_many(&docs)
            .unwrap(),
    );
    let unmerged = load(&tiny, &adapter, DtypeSpec::Bf16);
    assert_eq!(unmerged.kind(), Kind::BFloat16);
    let fingerprint = unmerged.fingerprint.clone();
    let unmerged = slots(unmerged.compress_many(&docs).unwrap());
    let merged = load(&tiny, &adapter, DtypeSpec::Bf16).merge_lora_for_encoding();
    assert_eq!(merged.fingerprint(), fingerprint);
    assert_eq!(merged.kind(), Kind::BFloat16);
    let merged = slots(merged.compress_many(&docs).unwrap());

    let between = rms_error(&merged, &unmerged, &reference);
    let merged_error = rms_error(&merged, &reference, &reference);
    let unmerged_error = rms_error(&unmerged, &reference, &reference);
    eprintln!(
        "bf16 (RMS, relative): merged vs unmerged {between:.3e}; from f32: merged \
         {merged_error:.3e}, unmerged {unmerged_error:.3e}"
    );
    assert!(
        between < unmerged_error,
        "merging moved the bf16 slots by {between}, more than bf16 itself ({unmerged_error})"
    );
    assert!(
        merged_error <= 1.5 * unmerged_error,
        "merged bf16 is {merged_error} from f32, unmerged {unmerged_error}"
    );
}

/// The trained default adapter, or $ICAE_DEFAULT_ADAPTER.
fn default_adapter() -> std::path::PathBuf {
    std::env::var_os("ICAE_DEFAULT_ADAPTER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-icae")
        })
}

/// Figures for BENCHMARKS.md (needs the real model; f32, this machine's libtorch threads):
/// `cargo test --release -p icae-core --test lora_merge -- --ignored --nocapture`.
/// Compression of one 512-token document (4 segments in one batch), merged and unmerged
/// alternating in one run, with how far apart their slots are.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_merged_lora_compression_of_the_real_model() {
    let (model_dir, adapter) = (common::real_model::real_model_dir(), default_adapter());
    let load = || {
        IcaeModel::load(
            &model_dir,
            &adapter,
            &LoadOptions::default(),
            DeviceSpec::Cpu,
            DtypeSpec::F32,
        )
        .unwrap()
    };
    let unmerged = load();
    let merged = load().merge_lora_for_encoding();
    let ids: Vec<u32> = (0..512).map(|i| 100 + (i * 37) % 20000).collect();
    let reference = unmerged.compress(&ids).unwrap().slots;
    let slots = merged.compress(&ids).unwrap().slots;
    let scale = reference.abs().max().double_value(&[]);
    let max_diff = (&slots - &reference).abs().max().double_value(&[]);
    println!("512 tokens, f32: max |merged - unmerged| = {max_diff:.3e} ({:.3e} of the largest slot value)", max_diff / scale);

    let rounds = 8;
    let (mut with_lora, mut folded) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for use_merged in [round % 2 == 0, round % 2 != 0] {
            let started = std::time::Instant::now();
            match use_merged {
                true => drop(merged.compress(&ids).unwrap()),
                false => drop(unmerged.compress(&ids).unwrap()),
            }
            let seconds = started.elapsed().as_secs_f64();
            match use_merged {
                true => folded.push(seconds),
                false => with_lora.push(seconds),
            }
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (unmerged_s, merged_s) = (median(with_lora), median(folded));
    println!(
        "512 tokens, f32, {} threads, median of {rounds}: unmerged {:.0} tokens/s, merged {:.0} \
         tokens/s, ratio {:.3}x",
        tch::get_num_threads(),
        512.0 / unmerged_s,
        512.0 / merged_s,
        unmerged_s / merged_s
    );
}

#[test]
fn a_merge_that_keeps_the_base_compresses_alike_and_reads_back_with_the_base_weights() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let adapter = all_targets_adapter(&tiny, dir.path());
    let docs = documents(tiny.config.vocab_size);
    let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    let unmerged = load(&tiny, &adapter, DtypeSpec::F32);
    let plain = slots(
        load(&tiny, &adapter, DtypeSpec::F32)
            .merge_lora_for_encoding()
            .compress_many(&refs)
            .unwrap(),
    );
    let keeping = load(&tiny, &adapter, DtypeSpec::F32).merge_lora_keeping_base();
    // Keeping the base changes nothing the merged encoder computes, bit for bit.
    let kept = slots(keeping.compress_many(&refs).unwrap());
    for (a, b) in plain.iter().zip(&kept) {
        assert!(a.equal(b));
    }
    assert!(load(&tiny, &adapter, DtypeSpec::F32)
        .merge_lora_for_encoding()
        .read_back_model()
        .is_none());
    // Its read-back runs the base model (LoRA off), as the unmerged model's does: the same
    // losses exactly.
    let inputs: Vec<(&[u32], &Tensor)> = refs.iter().copied().zip(&kept).collect();
    let with_base = icae_core::refine::reconstruction_losses(
        keeping.read_back_model().unwrap().unwrap(),
        &inputs,
    )
    .unwrap();
    let reference =
        icae_core::refine::reconstruction_losses(unmerged.read_back_model().unwrap(), &inputs)
            .unwrap();
    assert_eq!(with_base, reference);
}
