//! The slot codec never panics on arbitrary bytes and reports every bad value as a
//! `SlotError` (which the services map to DATA_LOSS).

use icae_core::slots::{decode_slots, encode_slots, SlotFidelity, SlotMeta};
use icae_serving::ServiceError;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use tonic::Code;

fn valid_blob() -> Vec<u8> {
    let meta = SlotMeta {
        fingerprint: "fp".into(),
        num_tokens: 7,
        num_segments: 1,
        created_at: 1,
        traceparent: None,
        token_digest: None,
        fidelity: SlotFidelity::default(),
    };
    encode_slots(&Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), &meta).unwrap()
}

fn as_status_code(bytes: &[u8]) -> Option<Code> {
    decode_slots(bytes).err().map(|source| {
        ServiceError::Corrupt {
            key: "k".into(),
            source,
        }
        .code()
    })
}

#[test]
fn every_truncation_is_data_loss() {
    let blob = valid_blob();
    assert!(decode_slots(&blob).is_ok());
    for len in 0..blob.len() {
        assert_eq!(
            as_status_code(&blob[..len]),
            Some(Code::DataLoss),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn wrong_version_shape_and_dtype_are_data_loss() {
    let other = |name: &str, t: Tensor, version: &str| {
        let meta = std::collections::HashMap::from([
            ("icae_format_version".to_string(), version.to_string()),
            ("fingerprint".to_string(), "fp".to_string()),
            ("num_tokens".to_string(), "1".to_string()),
            ("num_segments".to_string(), "1".to_string()),
            ("created_at".to_string(), "1".to_string()),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        Tensor::write_safetensors(&[(name, t)], &path).unwrap();
        // Re-serialize with our metadata through the safetensors crate.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor(name).unwrap();
        safetensors::serialize([(name, view)], &Some(meta)).unwrap()
    };
    let f = |shape: &[i64]| Tensor::ones(shape, (Kind::Float, Device::Cpu));
    assert!(decode_slots(&other("slots", f(&[2, 3]), "1")).is_ok());
    for (bytes, what) in [
        (other("slots", f(&[2, 3]), "9"), "version"),
        (other("slots", f(&[6]), "1"), "shape"),
        (other("other", f(&[2, 3]), "1"), "tensor"),
        (
            other(
                "slots",
                Tensor::ones([2, 3], (Kind::Int64, Device::Cpu)),
                "1",
            ),
            "dtype",
        ),
    ] {
        assert_eq!(as_status_code(&bytes), Some(Code::DataLoss), "{what}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_data_loss(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert_eq!(as_status_code(&bytes), Some(Code::DataLoss));
    }

    #[test]
    fn corrupted_blobs_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut blob = valid_blob();
        for (index, value) in edits {
            let i = index.index(blob.len());
            blob[i] = value;
        }
        // Either still valid (an edit inside the data) or DATA_LOSS; never a panic.
        let _ = as_status_code(&blob);
    }
}
