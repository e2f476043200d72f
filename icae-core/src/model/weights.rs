//! Memory-mapped safetensors loading (single file or sharded index), one tensor at a time.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::ModelError;

/// Tensors by name, already on the target device and in the target dtype.
pub struct TensorMap {
    tensors: HashMap<String, Tensor>,
    source: String,
}

impl TensorMap {
    /// Load every tensor of the safetensors files that make up a model directory.
    pub fn load_model_dir(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let files = model_files(dir)?;
        let mut tensors = HashMap::new();
        for file in &files {
            load_file_into(file, device, Some(kind), &mut tensors)?;
        }
        Ok(TensorMap {
            tensors,
            source: dir.display().to_string(),
        })
    }

    /// Load one safetensors file, keeping every tensor's own dtype when `kind` is None.
    pub fn load_file(path: &Path, device: Device, kind: Option<Kind>) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        load_file_into(path, device, kind, &mut tensors)?;
        Ok(TensorMap {
            tensors,
            source: path.display().to_string(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Remove a tensor, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                location: self.source.clone(),
            })?;
        if tensor.size() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                expected: shape.to_vec(),
                actual: tensor.size(),
            });
        }
        Ok(tensor)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }
}

/// `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| {
        ModelError::Io(format!(
            "{} has neither model.safetensors nor a readable model.safetensors.index.json: {e}",
            dir.display()
        ))
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: {e}", index_path.display())))?;
    let map = index["weight_map"].as_object().ok_or_else(|| {
        ModelError::Config(format!("{} has no weight_map object", index_path.display()))
    })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards
        .into_iter()
        .map(|shard| {
            // Shard names come from a file: refuse anything that would leave the directory.
            if shard.contains('/') || shard.contains("..") {
                return Err(ModelError::Config(format!(
                    "shard name {shard:?} in the index is not a plain file name"
                )));
            }
            Ok(dir.join(shard))
        })
        .collect()
}

fn load_file_into(
    path: &Path,
    device: Device,
    kind: Option<Kind>,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    with_mapped(path, |st| {
        for (name, view) in st.tensors() {
            let tensor = view_to_tensor(path, &name, view.dtype(), view.shape(), view.data())?
                .to_device(device);
            let tensor = match kind {
                Some(kind) => tensor.to_kind(kind),
                None => tensor,
            };
            out.insert(name, tensor);
        }
        Ok(())
    })
}

/// Run `f` over the parsed safetensors header of a memory-mapped file.
pub fn with_mapped<T>(
    path: &Path,
    f: impl FnOnce(&SafeTensors) -> Result<T, ModelError>,
) -> Result<T, ModelError> {
    let file = File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    // SAFETY: read-only map; model files are not modified while a process serves them.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| {
        ModelError::Format(format!(
            "{} is not a valid safetensors file: {e:?}",
            path.display()
        ))
    })?;
    f(&st)
}

/// Copy one safetensors view into a CPU tensor of the file's dtype.
pub fn view_to_tensor(
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
) -> Result<Tensor, ModelError> {
    let kind = match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => {
            return Err(ModelError::Format(format!(
                "{}: tensor {name} has dtype {other:?}; supported: F32, F16, BF16, F64, I64, I32",
                path.display()
            )))
        }
    };
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(data, &dims, kind)
        .map_err(|e| ModelError::Format(format!("{}: tensor {name}: {e}", path.display())))
}
