//! A preallocated key/value cache for incremental decoding.

use tch::{Kind, Tensor};

/// Keys and values for every layer, `[batch, kv_heads, capacity, head_dim]`, grown by
/// doubling so appending a token never copies the whole history.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    pub fn new(num_layers: usize, capacity: i64) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Number of positions already stored.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Store `k`, `v` (`[batch, kv_heads, t, head_dim]`) after the cached positions and
    /// return views of everything cached so far, including them.
    pub fn update(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let needed = self.len + t;
        let (kb, vb) = match self.layers[layer].take() {
            Some((kb, vb)) if kb.size()[2] >= needed => (kb, vb),
            existing => {
                while self.capacity < needed {
                    self.capacity *= 2;
                }
                let grow = |x: &Tensor, old: Option<&Tensor>| {
                    let mut shape = x.size();
                    shape[2] = self.capacity;
                    let buf = Tensor::zeros(&shape, (x.kind(), x.device()));
                    if let Some(old) = old {
                        buf.narrow(2, 0, self.len)
                            .copy_(&old.narrow(2, 0, self.len));
                    }
                    buf
                };
                let old = existing.as_ref();
                (grow(k, old.map(|o| &o.0)), grow(v, old.map(|o| &o.1)))
            }
        };
        kb.narrow(2, self.len, t).copy_(k);
        vb.narrow(2, self.len, t).copy_(v);
        let views = (kb.narrow(2, 0, needed), vb.narrow(2, 0, needed));
        self.layers[layer] = Some((kb, vb));
        views
    }

    /// Called once per forward pass, after every layer has stored its `t` new positions.
    pub fn advance(&mut self, t: i64) {
        self.len += t;
    }

    /// Bytes held by the cache buffers.
    pub fn bytes(&self) -> i64 {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.numel() + v.numel()) as i64 * k.kind().elt_size_in_bytes() as i64)
            .sum()
    }

    /// Bytes a cache of `positions` tokens needs for a model of this shape.
    pub fn bytes_for(positions: i64, layers: i64, kv_heads: i64, head_dim: i64, kind: Kind) -> i64 {
        2 * positions * layers * kv_heads * head_dim * kind.elt_size_in_bytes() as i64
    }
}
