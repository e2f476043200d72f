//! What the batcher needs from the engine: compress a batch of documents. The ICAE model is
//! the real backend; the batcher's tests use a fake one.

use icae_core::{Compressed, IcaeError, IcaeModel};

pub trait CompressBackend {
    /// Compress every document (token ids) into slots on the CPU, in order. Between model
    /// calls the backend asks `wanted(document)`; documents no longer wanted may be left
    /// out (`None`), so abandoned work stops early.
    fn compress(
        &self,
        documents: &[&[u32]],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError>;
}

impl CompressBackend for IcaeModel {
    fn compress(
        &self,
        documents: &[&[u32]],
        wanted: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<Compressed>>, IcaeError> {
        let compressed = self.compress_wanted(documents, wanted)?;
        Ok(compressed
            .into_iter()
            .map(|c| {
                c.map(|c| Compressed {
                    slots: c.slots.to_device(tch::Device::Cpu),
                    ..c
                })
            })
            .collect())
    }
}
