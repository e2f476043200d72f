//! The adapter loader accepts the official v2 layout, the PEFT layout and our directories,
//! and refuses broken inputs with errors that name the tensor or field and the values.

mod common;

use std::path::Path;

use common::tiny_model::{
    adapter_config, load_adapter as load, named, random_adapter_tensors, tiny_model, to_tensor,
};
use icae_core::adapter::{save_adapter, NamedTensor, MEMORY_EMBED};
use tch::{Device, Kind, Tensor};

fn write_file(path: &Path, tensors: &[NamedTensor]) {
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|t| (t.name.clone(), to_tensor(t)))
        .collect();
    Tensor::write_safetensors(&named, path).unwrap();
}

#[test]
fn official_file_yields_rank_and_mem_size_from_shapes() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("official.safetensors");
    write_file(&path, &random_adapter_tensors(&tiny.config, 5, 3, 1));
    let adapter = load(&path, &tiny.config).unwrap();
    assert_eq!(adapter.config.mem_size, 5);
    assert_eq!(adapter.config.lora_r, 3);
    assert_eq!(adapter.config.target_modules, vec!["q_proj", "v_proj"]);
    assert!((adapter.lora.scale - 32.0 / 3.0).abs() < 1e-12);
    assert_eq!(
        adapter.memory_embed.size(),
        vec![8, tiny.config.hidden_size as i64]
    );
}

#[test]
fn peft_prefix_loads_the_same_tensors() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let tensors = random_adapter_tensors(&tiny.config, 4, 2, 5);
    let official = dir.path().join("a.safetensors");
    write_file(&official, &tensors);
    let peft: Vec<NamedTensor> = tensors
        .iter()
        .map(|t| NamedTensor {
            name: t
                .name
                .replace("icae.base_model.model.", "base_model.model.")
                .replace(".default.weight", ".weight"),
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect();
    let peft_path = dir.path().join("b.safetensors");
    write_file(&peft_path, &peft);
    let a = load(&official, &tiny.config).unwrap();
    let b = load(&peft_path, &tiny.config).unwrap();
    let (pa, pb) = (&a.lora.layers[1][0].1, &b.lora.layers[1][0].1);
    assert!(pa.a.equal(&pb.a) && pa.b.equal(&pb.b));
}

#[test]
fn adapter_directory_round_trips() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter");
    let config = adapter_config(&tiny.config, 6, 2);
    save_adapter(
        &path,
        &config,
        &random_adapter_tensors(&tiny.config, 6, 2, 3),
    )
    .unwrap();
    let adapter = load(&path, &tiny.config).unwrap();
    assert_eq!(adapter.config, config);
    assert!((adapter.lora.scale - 8.0).abs() < 1e-12);
}

#[test]
fn truncated_and_oversized_files_are_refused() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write_file(&good, &random_adapter_tensors(&tiny.config, 4, 2, 1));
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load(&truncated, &tiny.config).unwrap_err();
    assert!(
        msg.contains("truncated.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );

    let oversized = dir.path().join("oversized.safetensors");
    let mut evil = bytes.clone();
    evil[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&oversized, &evil).unwrap();
    let msg = load(&oversized, &tiny.config).unwrap_err();
    assert!(
        msg.contains("oversized.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );

    for len in [0, 4, 8, 60] {
        std::fs::write(&truncated, &bytes[..len]).unwrap();
        assert!(load(&truncated, &tiny.config).is_err(), "prefix {len}");
    }
}

#[test]
fn wrong_dtype_is_named() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    let mem = Tensor::zeros(
        [7, tiny.config.hidden_size as i64],
        (Kind::Int64, Device::Cpu),
    );
    Tensor::write_safetensors(&[(MEMORY_EMBED, mem)], &path).unwrap();
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(msg.contains(MEMORY_EMBED) && msg.contains("I64"), "{msg}");
}

#[test]
fn shape_mismatches_name_tensor_and_shapes() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");
    let h = tiny.config.hidden_size;

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    let a = tensors
        .iter_mut()
        .find(|t| t.name.contains("layers.1.self_attn.v_proj.lora_A"))
        .unwrap();
    *a = named(&a.name.clone(), &[2, h + 1], 0.1);
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains("layers.1.self_attn.v_proj.lora_A")
            && msg.contains(&format!("[2, {}]", h + 1))
            && msg.contains(&format!("[r, {h}]")),
        "{msg}"
    );

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    let b = tensors
        .iter_mut()
        .find(|t| t.name.contains("layers.0.self_attn.q_proj.lora_B"))
        .unwrap();
    *b = named(&b.name.clone(), &[h, 3], 0.1);
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains("q_proj.lora_B")
            && msg.contains(&format!("[{h}, 3]"))
            && msg.contains("rank 2"),
        "{msg}"
    );

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    tensors[0] = named(MEMORY_EMBED, &[7, h - 1], 0.1);
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains(MEMORY_EMBED) && msg.contains(&format!("[7, {}]", h - 1)),
        "{msg}"
    );
}

#[test]
fn unknown_keys_missing_halves_and_extra_layers_are_refused() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.safetensors");

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    tensors.push(named("model.embed_tokens.weight", &[3, 3], 0.1));
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains("model.embed_tokens.weight") && msg.contains("not part of an ICAE adapter"),
        "{msg}"
    );

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    tensors.retain(|t| !t.name.contains("layers.1.self_attn.q_proj.lora_B"));
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains("layer 1 q_proj has only one of lora_A / lora_B"),
        "{msg}"
    );

    let mut tensors = random_adapter_tensors(&tiny.config, 4, 2, 1);
    for t in &mut tensors {
        t.name = t.name.replace("layers.1.", "layers.9.");
    }
    write_file(&path, &tensors);
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(msg.contains("layer 9") && msg.contains("2 layers"), "{msg}");
}

#[test]
fn directory_config_must_agree_with_tensors_and_model() {
    let tiny = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter");
    let mut config = adapter_config(&tiny.config, 6, 2);
    config.mem_size = 9;
    save_adapter(
        &path,
        &config,
        &random_adapter_tensors(&tiny.config, 6, 2, 3),
    )
    .unwrap();
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(
        msg.contains("mem_size 9") && msg.contains("9 rows"),
        "{msg}"
    );

    let mut config = adapter_config(&tiny.config, 6, 2);
    config.base_model.hidden_size = 4096;
    save_adapter(
        &path,
        &config,
        &random_adapter_tensors(&tiny.config, 6, 2, 3),
    )
    .unwrap();
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(msg.contains("hidden_size 4096"), "{msg}");

    std::fs::write(path.join("icae_config.json"), "{not json").unwrap();
    let msg = load(&path, &tiny.config).unwrap_err();
    assert!(msg.contains("icae_config.json"), "{msg}");
}
