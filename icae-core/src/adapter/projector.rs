//! The slot projector: an optional trainable affine map (`hidden x hidden` + bias) that the
//! encoder applies to the slots (the final-norm hidden states at the memory positions)
//! before anything reads them. It is our extension of ICAE: the slots come out of
//! the final norm ~15x larger than token embeddings, and the encoder can only turn their
//! direction slowly through all its layers; a linear map gives them a direct,
//! well-conditioned gradient. Official v2 files hold no projector, which is the identity.
//!
//! Slots are stored (Redis, `--out` files, inline) *after* projection, so a decoder feeds them
//! to the frozen model as they are and never needs the projector itself.

use tch::Tensor;

use super::keys::{SLOT_PROJECTOR_BIAS, SLOT_PROJECTOR_WEIGHT};
use crate::error::AdapterError;

/// `slots @ weight^T + bias`, as PyTorch's `nn.Linear(hidden, hidden)`.
pub struct SlotProjector {
    /// `[hidden, hidden]`, rows are output features (PyTorch's layout).
    pub weight: Tensor,
    /// `[hidden]`.
    pub bias: Tensor,
}

impl SlotProjector {
    /// Check the two tensors the file `path` holds (either may be missing) against the model
    /// width. `Ok(None)` when neither is present.
    pub(super) fn from_parts(
        path: &str,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        hidden: i64,
    ) -> Result<Option<Self>, AdapterError> {
        let (weight, bias) = match (weight, bias) {
            (None, None) => return Ok(None),
            (Some(w), Some(b)) => (w, b),
            (w, _) => {
                let (present, missing) = if w.is_some() {
                    (SLOT_PROJECTOR_WEIGHT, SLOT_PROJECTOR_BIAS)
                } else {
                    (SLOT_PROJECTOR_BIAS, SLOT_PROJECTOR_WEIGHT)
                };
                return Err(AdapterError::Invalid {
                    path: path.into(),
                    reason: format!(
                        "it holds {present} but not {missing}: the slot projector needs both"
                    ),
                });
            }
        };
        if weight.size() != [hidden, hidden] {
            return Err(AdapterError::Shape {
                name: SLOT_PROJECTOR_WEIGHT.into(),
                actual: weight.size(),
                expected: format!("[{hidden}, {hidden}] (hidden x hidden)"),
            });
        }
        if bias.size() != [hidden] {
            return Err(AdapterError::Shape {
                name: SLOT_PROJECTOR_BIAS.into(),
                actual: bias.size(),
                expected: format!("[{hidden}]"),
            });
        }
        Ok(Some(SlotProjector { weight, bias }))
    }

    /// Project slots `[..., hidden]` (any leading dimensions).
    pub fn apply(&self, slots: &Tensor) -> Tensor {
        slots.linear(&self.weight, Some(&self.bias))
    }
}
