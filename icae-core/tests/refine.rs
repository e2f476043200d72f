//! Test-time slot refinement on a tiny random model: batching does not change a document's
//! result, the loss falls, early stopping and cancellation hold, and the weights are never
//! touched. Parity with the PyTorch oracle is checked on the real model in
//! tests/training/test_refine_parity.py.

mod common;

use common::tiny_model::tiny_icae;
use icae_core::refine::reconstruction_losses;
use icae_core::{IcaeModel, InputError, RefineOptions, Refined, Refinement, SlotDtype};
use tch::Tensor;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Documents of different lengths: one segment, a short one, and three segments.
fn documents() -> Vec<Vec<u32>> {
    vec![
        (3..17).collect(),
        vec![5, 9, 4, 30, 2],
        (0..40).map(|i| 3 + (i * 7) % 30).collect(),
    ]
}

fn run(icae: &IcaeModel, docs: &[Vec<u32>], options: RefineOptions) -> Vec<Option<Refined>> {
    let model = icae.read_back_model().unwrap();
    let start = docs
        .iter()
        .map(|ids| (ids.clone(), icae.compress(ids).unwrap().slots))
        .collect();
    let mut refinement = Refinement::new(start, options);
    while refinement.step(model, &|_| true).unwrap().is_some() {}
    refinement.finish(model, SlotDtype::F32).unwrap()
}

fn options(steps: usize) -> RefineOptions {
    RefineOptions {
        steps,
        target_loss: None,
        learning_rate: 0.1,
    }
}

#[test]
fn a_batch_refines_each_document_as_alone() {
    let (_tiny, _dir, icae) = tiny_icae();
    let docs = documents();
    let together = run(&icae, &docs, options(6));
    for (index, ids) in docs.iter().enumerate() {
        let alone = run(&icae, std::slice::from_ref(ids), options(6))
            .remove(0)
            .unwrap();
        let batched = together[index].as_ref().unwrap();
        assert_eq!(batched.steps_run, 6);
        let scale = alone.slots.abs().max().double_value(&[]);
        assert!(
            max_abs_diff(&batched.slots, &alone.slots) <= 1e-4 * scale,
            "document {index}: batched and alone differ by {}",
            max_abs_diff(&batched.slots, &alone.slots)
        );
        assert!((batched.reconstruction_loss - alone.reconstruction_loss).abs() < 1e-4);
    }
}

#[test]
fn refinement_lowers_the_reconstruction_loss_and_leaves_the_weights_alone() {
    let (_tiny, _dir, icae) = tiny_icae();
    let docs = documents();
    let model = icae.read_back_model().unwrap();
    let plain: Vec<Tensor> = docs
        .iter()
        .map(|d| icae.compress(d).unwrap().slots)
        .collect();
    let inputs: Vec<(&[u32], &Tensor)> = docs.iter().map(|d| d.as_slice()).zip(&plain).collect();
    let before = reconstruction_losses(model, &inputs).unwrap();
    let refined = run(&icae, &docs, options(30));
    for (index, refined) in refined.iter().enumerate() {
        let refined = refined.as_ref().unwrap();
        assert!(
            refined.reconstruction_loss < 0.75 * before[index],
            "document {index}: {} -> {}",
            before[index],
            refined.reconstruction_loss
        );
        assert_eq!(refined.slots.size(), plain[index].size());
    }
    // The weights are what they were: compressing again gives the same slots, bit for bit.
    for (ids, slots) in docs.iter().zip(&plain) {
        assert!(icae.compress(ids).unwrap().slots.equal(slots));
    }
}

#[test]
fn zero_steps_keep_the_encoders_slots_and_still_score_them() {
    let (_tiny, _dir, icae) = tiny_icae();
    let docs = documents();
    let refined = run(&icae, &docs, options(0));
    let model = icae.read_back_model().unwrap();
    for (ids, refined) in docs.iter().zip(refined) {
        let refined = refined.unwrap();
        let plain = icae.compress(ids).unwrap().slots;
        assert!(refined.slots.equal(&plain));
        assert_eq!(refined.steps_run, 0);
        let loss = reconstruction_losses(model, &[(ids, &plain)]).unwrap()[0];
        assert!((refined.reconstruction_loss - loss).abs() < 1e-6);
    }
}

#[test]
fn a_reached_target_loss_stops_a_document_early() {
    let (_tiny, _dir, icae) = tiny_icae();
    let docs = documents();
    let model = icae.read_back_model().unwrap();
    let plain = icae.compress(&docs[0]).unwrap().slots;
    let first = reconstruction_losses(model, &[(&docs[0], &plain)]).unwrap()[0];
    let last = run(&icae, &docs[..1], options(30))[0]
        .as_ref()
        .unwrap()
        .reconstruction_loss;
    // A target between the first and the last loss: reached within the run.
    let target = (first + last) / 2.0;
    let mut early = options(30);
    early.target_loss = Some(target);
    let stopped = run(&icae, &docs[..1], early).remove(0).unwrap();
    assert!(
        stopped.steps_run > 0 && stopped.steps_run < 30,
        "{}",
        stopped.steps_run
    );
    assert!(stopped.reconstruction_loss <= target);
    // A target the plain slots already meet: no step at all, the encoder's slots as they are.
    early.target_loss = Some(1e9);
    let none = run(&icae, &docs[..1], early).remove(0).unwrap();
    assert_eq!(none.steps_run, 0);
    assert!(none.slots.equal(&icae.compress(&docs[0]).unwrap().slots));
}

#[test]
fn a_document_no_longer_wanted_is_dropped_and_the_others_go_on() {
    let (_tiny, _dir, icae) = tiny_icae();
    let docs = documents();
    let model = icae.read_back_model().unwrap();
    let start = docs
        .iter()
        .map(|ids| (ids.clone(), icae.compress(ids).unwrap().slots))
        .collect();
    let mut refinement = Refinement::new(start, options(5));
    let first = refinement.step(model, &|_| true).unwrap().unwrap();
    assert_eq!(first.stepped, 3);
    let second = refinement.step(model, &|doc| doc != 1).unwrap().unwrap();
    assert_eq!(second.stepped, 2);
    while refinement.step(model, &|doc| doc != 1).unwrap().is_some() {}
    let out = refinement.finish(model, SlotDtype::F32).unwrap();
    assert!(out[1].is_none());
    assert_eq!(out[0].as_ref().unwrap().steps_run, 5);
    assert_eq!(out[2].as_ref().unwrap().steps_run, 5);
}

#[test]
fn the_loss_of_bf16_storage_is_measured_on_the_rounded_slots() {
    let (_tiny, _dir, icae) = tiny_icae();
    let ids: Vec<u32> = (3..17).collect();
    let model = icae.read_back_model().unwrap();
    let start = vec![(ids.clone(), icae.compress(&ids).unwrap().slots)];
    let mut refinement = Refinement::new(start, options(3));
    while refinement.step(model, &|_| true).unwrap().is_some() {}
    let refined = refinement
        .finish(model, SlotDtype::Bf16)
        .unwrap()
        .remove(0)
        .unwrap();
    let rounded = SlotDtype::Bf16.cast(&refined.slots);
    assert!(rounded.to_kind(tch::Kind::Float).equal(&refined.slots));
    let loss = reconstruction_losses(model, &[(&ids, &refined.slots)]).unwrap()[0];
    assert!((refined.reconstruction_loss - loss).abs() < 1e-6);
}

#[test]
fn bad_options_are_refused_with_the_value_and_the_limit() {
    let too_many = RefineOptions::steps(201).check(200).unwrap_err();
    assert!(too_many.to_string().contains("201") && too_many.to_string().contains("200"));
    let mut bad = RefineOptions::steps(10);
    bad.target_loss = Some(f64::NAN);
    assert!(matches!(
        bad.check(200),
        Err(InputError::BadParameter {
            name: "target_loss",
            ..
        })
    ));
    bad.target_loss = None;
    bad.learning_rate = -1.0;
    assert!(bad.check(200).unwrap_err().to_string().contains("-1"));
    assert!(RefineOptions::steps(200).check(200).is_ok());
}
