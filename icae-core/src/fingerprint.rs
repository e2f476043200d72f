//! Fingerprints: short hashes that identify a base model and an ICAE configuration, so a
//! decoder can refuse slots made by a different encoder.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::model::model_files;

/// Hex characters kept from the SHA-256 (128 bits).
const FINGERPRINT_HEX_LEN: usize = 32;

/// Hash of a model directory's `config.json` and every weight file, byte for byte.
pub fn base_fingerprint(dir: &Path) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    let mut files = vec![dir.join("config.json")];
    files.extend(model_files(dir)?);
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut file =
            File::open(&path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(short_hex(hasher))
}

/// What an ICAE fingerprint covers besides the base model.
pub struct IcaeIdentity<'a> {
    pub base_fingerprint: &'a str,
    pub adapter_digest: &'a str,
    pub mem_size: usize,
    pub compression_rate: usize,
    pub lora_alpha: f64,
    pub dtype: &'a str,
}

/// Fingerprint of everything that determines slot values.
pub fn icae_fingerprint(id: &IcaeIdentity) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "icae-v1|base={}|adapter={}|mem={}|rate={}|alpha={}|dtype={}",
        id.base_fingerprint,
        id.adapter_digest,
        id.mem_size,
        id.compression_rate,
        id.lora_alpha,
        id.dtype
    ));
    short_hex(hasher)
}

fn short_hex(hasher: Sha256) -> String {
    let mut hex = hex::encode(hasher.finalize());
    hex.truncate(FINGERPRINT_HEX_LEN);
    hex
}
