//! `--slot-dtype f32|bf16`: the precision slots are stored and sent in, independent of the
//! model's `--dtype`. f32 by default (a bf16 model's slots are widened exactly); bf16 halves
//! the bytes of every slot value, at the cost of rounding f32 slots to 8 significant bits.

use std::fmt;
use std::str::FromStr;

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotDtype {
    #[default]
    F32,
    Bf16,
}

impl FromStr for SlotDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(SlotDtype::F32),
            "bf16" | "bfloat16" => Ok(SlotDtype::Bf16),
            _ => Err(format!("slot dtype \"{s}\" is not one of f32, bf16")),
        }
    }
}

impl fmt::Display for SlotDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotDtype::F32 => "f32",
            SlotDtype::Bf16 => "bf16",
        })
    }
}

impl SlotDtype {
    pub fn kind(self) -> Kind {
        match self {
            SlotDtype::F32 => Kind::Float,
            SlotDtype::Bf16 => Kind::BFloat16,
        }
    }

    /// Bytes of one stored slot element.
    pub fn element_bytes(self) -> usize {
        match self {
            SlotDtype::F32 => 4,
            SlotDtype::Bf16 => 2,
        }
    }

    /// `slots` on the CPU in this dtype, ready to serialize.
    pub fn cast(self, slots: &Tensor) -> Tensor {
        slots.to_device(tch::Device::Cpu).to_kind(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_named_in_the_error() {
        assert_eq!("BF16".parse::<SlotDtype>(), Ok(SlotDtype::Bf16));
        assert_eq!("float32".parse::<SlotDtype>(), Ok(SlotDtype::F32));
        assert_eq!(SlotDtype::default(), SlotDtype::F32);
        let err = "auto".parse::<SlotDtype>().unwrap_err();
        assert!(
            err.contains("\"auto\"") && err.contains("f32, bf16"),
            "{err}"
        );
    }

    #[test]
    fn casting_widens_exactly_and_narrows_to_bf16() {
        let bf16 = Tensor::from_slice(&[1.0f32, 1.0 + 1.0 / 128.0]).to_kind(Kind::BFloat16);
        let widened = SlotDtype::F32.cast(&bf16);
        assert_eq!(widened.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&widened).unwrap(), [1.0, 1.0078125]);
        // 1 + 2^-9 is below bf16's resolution at 1 (2^-7 between neighbours): rounds to 1.
        let f32 = Tensor::from_slice(&[1.0f32 + 1.0 / 512.0]);
        let narrowed = SlotDtype::Bf16.cast(&f32);
        assert_eq!(narrowed.kind(), Kind::BFloat16);
        assert_eq!(narrowed.to_kind(Kind::Float).double_value(&[0]), 1.0);
    }
}
