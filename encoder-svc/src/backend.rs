//! What the batcher needs from the engine: compress a batch of documents. The ICAE model is
//! the real backend; the batcher's tests use a fake one.

use icae_core::{Compressed, IcaeError, IcaeModel};

pub trait CompressBackend {
    /// Compress every document (token ids) into slots on the CPU, in order.
    fn compress(&self, documents: &[&[u32]]) -> Result<Vec<Compressed>, IcaeError>;
}

impl CompressBackend for IcaeModel {
    fn compress(&self, documents: &[&[u32]]) -> Result<Vec<Compressed>, IcaeError> {
        let compressed = self.compress_many(documents)?;
        Ok(compressed
            .into_iter()
            .map(|c| Compressed {
                slots: c.slots.to_device(tch::Device::Cpu),
                ..c
            })
            .collect())
    }
}
