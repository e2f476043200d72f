//! The optional slot projector: loaded with shape checks, recorded in
//! `icae_config.json`, applied by the encoder so that the slots it returns (and services
//! store) are the projected ones; adapters without it behave exactly as before.

mod common;

use std::path::Path;

use common::tiny_model::{
    adapter_config, load_adapter as load, projector_tensors, random_adapter_tensors, tiny_model,
    to_tensor, write_projector_adapter, write_random_adapter,
};
use icae_core::adapter::{
    save_adapter, LoadOptions, NamedTensor, CONFIG_FILE, SLOT_PROJECTOR_BIAS, SLOT_PROJECTOR_WEIGHT,
};
use icae_core::{DeviceSpec, DtypeSpec, IcaeModel, Mode};
use tch::{Device, Kind, Tensor};

fn icae(model: &Path, adapter: &Path) -> IcaeModel {
    IcaeModel::load(
        model,
        adapter,
        &LoadOptions::default(),
        DeviceSpec::Cpu,
        DtypeSpec::F32,
    )
    .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn projected_slots_are_the_raw_slots_through_the_affine_map() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let plain = icae(
        &tiny.path,
        &write_random_adapter(dir.path(), &tiny.config, 4, 2),
    );
    let projected = icae(
        &tiny.path,
        &write_projector_adapter(dir.path(), &tiny.config, 4, 2),
    );
    let [weight, bias] = &projector_tensors(&tiny.config, 21)[..] else {
        unreachable!()
    };
    // Two segments, so the map must be applied to every segment's slots.
    let vocab = tiny.config.vocab_size as u32;
    let doc: Vec<u32> = (0..23u32).map(|i| (i * 5 + 1) % vocab).collect();
    let raw = plain.compress(&doc).unwrap();
    let got = projected.compress(&doc).unwrap();
    assert_eq!(got.num_segments, 2);
    let want = raw.slots.matmul(&to_tensor(weight).tr()) + to_tensor(bias);
    assert!(max_abs_diff(&got.slots, &want) < 1e-4);
    assert!(
        max_abs_diff(&got.slots, &raw.slots) > 0.1,
        "the projector must change the slots"
    );
    // The decoder reads stored (already projected) slots as they are: no second projection.
    let embeds = projected
        .decoder_input(&[got.slots.shallow_clone()], Mode::Autoencode, None)
        .unwrap();
    assert!(embeds.get(0).narrow(0, 0, 8).equal(&got.slots));
    // The projector is part of the adapter's identity, so slots never cross adapters.
    assert_ne!(plain.fingerprint, projected.fingerprint);
}

#[test]
fn an_adapter_without_the_keys_is_unchanged() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = write_random_adapter(dir.path(), &tiny.config, 4, 2);
    let text = std::fs::read_to_string(path.join(CONFIG_FILE)).unwrap();
    assert!(
        !text.contains("slot_projector"),
        "configs without a projector keep their old form: {text}"
    );
    let model = icae(&tiny.path, &path);
    assert!(model.adapter.slot_projector.is_none() && !model.adapter.config.slot_projector);
    // Slots are the encoder's final hidden states at the memory positions, as before.
    let doc = [3u32, 9, 4, 17, 5];
    let got = model.compress(&doc).unwrap().slots;
    let _guard = tch::no_grad_guard();
    let ids: Vec<i64> = doc.iter().map(|&t| t as i64).collect();
    let x = Tensor::cat(
        &[
            model.base.embed(&Tensor::from_slice(&ids)),
            model.adapter.memory_tokens(),
        ],
        0,
    )
    .unsqueeze(0);
    let positions = Tensor::arange(9, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let hidden = model
        .base
        .forward(&x, &positions, None, None, Some(&model.adapter.lora));
    assert!(max_abs_diff(&got, &hidden.get(0).narrow(0, 5, 4)) < 1e-6);
}

#[test]
fn a_bare_file_with_the_keys_has_a_projector() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.safetensors");
    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    tensors.extend(projector_tensors(&tiny.config, 3));
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|t| (t.name.clone(), to_tensor(t)))
        .collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    let adapter = load(&path, &tiny.config).unwrap();
    assert!(adapter.config.slot_projector);
    let projector = adapter.slot_projector.as_ref().unwrap();
    let h = tiny.config.hidden_size as i64;
    assert_eq!(projector.weight.size(), vec![h, h]);
    assert!(projector
        .bias
        .equal(&to_tensor(&tensors[tensors.len() - 1])));
}

#[test]
fn broken_projectors_are_refused_with_names_and_shapes() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let h = tiny.config.hidden_size;
    let write = |name: &str, config_says: bool, edit: &dyn Fn(&mut Vec<NamedTensor>)| {
        let path = dir.path().join(name);
        let mut config = adapter_config(&tiny.config, 4, 2);
        config.slot_projector = config_says;
        let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
        tensors.extend(projector_tensors(&tiny.config, 3));
        edit(&mut tensors);
        save_adapter(&path, &config, &tensors).unwrap();
        load(&path, &tiny.config).unwrap_err()
    };

    let msg = write("square", true, &|t| {
        t.iter_mut()
            .find(|t| t.name == SLOT_PROJECTOR_WEIGHT)
            .unwrap()
            .shape = vec![h / 2, 2 * h];
    });
    assert!(
        msg.contains(SLOT_PROJECTOR_WEIGHT)
            && msg.contains(&format!("[{}, {}]", h / 2, 2 * h))
            && msg.contains(&format!("[{h}, {h}]")),
        "{msg}"
    );

    let msg = write("bias", true, &|t| {
        let bias = t
            .iter_mut()
            .find(|t| t.name == SLOT_PROJECTOR_BIAS)
            .unwrap();
        bias.shape = vec![h - 1];
        bias.data.pop();
    });
    assert!(
        msg.contains(SLOT_PROJECTOR_BIAS) && msg.contains(&format!("[{}]", h - 1)),
        "{msg}"
    );

    let msg = write("half", true, &|t| {
        t.retain(|t| t.name != SLOT_PROJECTOR_BIAS)
    });
    assert!(
        msg.contains(SLOT_PROJECTOR_WEIGHT) && msg.contains(&format!("not {SLOT_PROJECTOR_BIAS}")),
        "{msg}"
    );

    let msg = write("unrecorded", false, &|_| {});
    assert!(
        msg.contains("does not record slot_projector: true"),
        "{msg}"
    );

    let msg = write("missing", true, &|t| {
        t.retain(|t| !t.name.starts_with("slot_projector"))
    });
    assert!(
        msg.contains("says slot_projector true") && msg.contains(SLOT_PROJECTOR_WEIGHT),
        "{msg}"
    );
}
