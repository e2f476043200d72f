//! The GGUF reader and importer refuse broken files with errors that name the field or
//! tensor and the values, and never panic on arbitrary bytes.

mod common;

use common::gguf_builder::{tiny_llama, GgufBuilder, Kv};
use icae_core::gguf::{import_gguf, GgufError, GgufFile, Value};
use proptest::prelude::*;

#[test]
fn a_valid_file_parses_with_its_metadata_and_tensors() {
    let bytes = tiny_llama().build();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get("llama.block_count"), Some(&Value::U32(2)));
    assert_eq!(
        file.get("tokenizer.ggml.pre").and_then(Value::as_str),
        Some("smollm")
    );
    let q = file.tensor("blk.1.attn_q.weight").unwrap();
    assert_eq!(q.torch_shape(), vec![16, 16]);
    assert!(q.data_start + q.data_len <= bytes.len());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = tiny_llama().build();
    for len in 0..bytes.len() {
        assert!(
            GgufFile::parse(&bytes[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn truncated_tensor_data_names_the_tensor_and_sizes() {
    let bytes = tiny_llama().build();
    let err = GgufFile::parse(&bytes[..bytes.len() - 3]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GgufError::Truncated { .. }), "{msg}");
    assert!(
        msg.contains("blk.1.ffn_down.weight") && msg.contains(&(bytes.len() - 3).to_string()),
        "{msg}"
    );
}

#[test]
fn oversized_counts_are_refused_before_allocating() {
    let mut bytes = tiny_llama().build();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor_count
    let msg = GgufFile::parse(&bytes).unwrap_err().to_string();
    assert!(
        msg.contains("tensor_count") && msg.contains(&u64::MAX.to_string()),
        "{msg}"
    );

    let mut huge_array = Vec::new();
    huge_array.extend(4u32.to_le_bytes()); // element type u32
    huge_array.extend((1u64 << 60).to_le_bytes());
    let bytes = GgufBuilder::default()
        .kv("evil.array", Kv::Raw(9, huge_array))
        .build();
    let msg = GgufFile::parse(&bytes).unwrap_err().to_string();
    assert!(
        msg.contains("evil.array") && msg.contains(&(1u64 << 60).to_string()),
        "{msg}"
    );

    let mut long_string = Vec::new();
    long_string.extend((1u64 << 40).to_le_bytes());
    let bytes = GgufBuilder::default()
        .kv("evil.string", Kv::Raw(8, long_string))
        .build();
    assert!(GgufFile::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("evil.string"));
}

#[test]
fn wrong_types_are_named() {
    let bytes = GgufBuilder::default()
        .kv("some.key", Kv::Raw(99, vec![0; 8]))
        .build();
    let msg = GgufFile::parse(&bytes).unwrap_err().to_string();
    assert!(msg.contains("some.key") && msg.contains("99"), "{msg}");

    let mut b = GgufBuilder::default().f32_tensor("w", &[4], &[1.0; 4]);
    b.tensors[0].ggml_type = 77;
    let msg = GgufFile::parse(&b.build()).unwrap_err().to_string();
    assert!(msg.contains("tensor w") && msg.contains("77"), "{msg}");

    let bytes = tiny_llama().kv("tokenizer.ggml.model", Kv::U32(5)).build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    // The second "tokenizer.ggml.model" replaces the first: a u32 where a string belongs.
    std::fs::write(&path, bytes).unwrap();
    let msg = import_gguf(&path, &dir.path().join("out"), &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer.ggml.model") && msg.contains("u32"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let mut b = tiny_llama();
    let q = b
        .tensors
        .iter_mut()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    q.dims = vec![16, 8];
    q.data.truncate(16 * 8 * 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b.build()).unwrap();
    let out = dir.path().join("out");
    let msg = import_gguf(&path, &out, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("[8, 16]") && msg.contains("[16, 16]"),
        "{msg}"
    );
    assert!(!out.exists());
}

#[test]
fn missing_tensors_and_keys_are_named() {
    let mut b = tiny_llama();
    b.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, b.build()).unwrap();
    let msg = import_gguf(&path, &dir.path().join("o"), &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("blk.1.ffn_up.weight"), "{msg}");

    let mut b = tiny_llama();
    b.kvs.retain(|(k, _)| k != "llama.embedding_length");
    std::fs::write(&path, b.build()).unwrap();
    let msg = import_gguf(&path, &dir.path().join("o"), &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("llama.embedding_length"), "{msg}");
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = tiny_llama().build();
    bytes[0] = b'X';
    assert!(matches!(
        GgufFile::parse(&bytes),
        Err(GgufError::BadMagic(_))
    ));
    let mut bytes = tiny_llama().build();
    bytes[4..8].copy_from_slice(&9u32.to_le_bytes());
    assert!(GgufFile::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = GgufFile::parse(&bytes);
        let mut with_header = b"GGUF\x03\0\0\0".to_vec();
        with_header.extend(&bytes);
        let _ = GgufFile::parse(&with_header);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = tiny_llama().build();
        for (index, value) in edits {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let keep = bytes.len() - cut.index(bytes.len() / 4);
        let _ = GgufFile::parse(&bytes[..keep]);
    }
}

#[test]
fn mutated_files_never_panic_the_importer() {
    // The importer (dequantize, tokenizer build, shape checks) over many corrupted headers.
    let original = tiny_llama().build();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut state = 0x9E3779B97F4A7C15u64;
    let header_len = 1200.min(original.len());
    for _ in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes[(state as usize) % header_len] = (state >> 32) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = import_gguf(&path, &dir.path().join("out"), &mut |_, _, _| {});
    }
}
