//! Where the real model lives, for the measurements that need it (`scripts/env.sh` sets
//! `ICAE_MODEL_DIR`; otherwise the default under `~/.cache/icae`).

use std::path::PathBuf;

pub fn real_model_dir() -> PathBuf {
    std::env::var_os("ICAE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/icae/models/smollm2-135m-instruct")
        })
}
