//! Tensor names of adapter files: the official ICAE v2 layout
//! (`icae.base_model.model.model.layers.{i}.{module}.lora_A.default.weight`), the plain PEFT
//! layout (`base_model.model.model.layers…`, with or without `.default`), and
//! `memory_token_embed.weight`, and the optional slot projector (`slot_projector.weight`,
//! `slot_projector.bias`): an extension of ours that official files never hold.

use crate::model::Target;

pub const MEMORY_EMBED: &str = "memory_token_embed.weight";
/// `[hidden, hidden]`: the slot projector's matrix (the Python module's `slot_projector`).
pub const SLOT_PROJECTOR_WEIGHT: &str = "slot_projector.weight";
/// `[hidden]`: the slot projector's bias.
pub const SLOT_PROJECTOR_BIAS: &str = "slot_projector.bias";
const OFFICIAL_PREFIX: &str = "icae.base_model.model.";
const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    A,
    B,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKey {
    MemoryEmbed,
    SlotProjectorWeight,
    SlotProjectorBias,
    Lora {
        layer: usize,
        target: Target,
        half: Half,
    },
}

/// Classify a tensor name; `None` for names no supported layout uses.
pub fn parse_key(name: &str) -> Option<AdapterKey> {
    match name {
        MEMORY_EMBED => return Some(AdapterKey::MemoryEmbed),
        SLOT_PROJECTOR_WEIGHT => return Some(AdapterKey::SlotProjectorWeight),
        SLOT_PROJECTOR_BIAS => return Some(AdapterKey::SlotProjectorBias),
        _ => {}
    }
    let rest = name
        .strip_prefix(OFFICIAL_PREFIX)
        .or_else(|| name.strip_prefix(PEFT_PREFIX))?;
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module, half) = if let Some(m) = rest.strip_suffix(".lora_A") {
        (m, Half::A)
    } else {
        (rest.strip_suffix(".lora_B")?, Half::B)
    };
    let target = Target::ALL
        .into_iter()
        .find(|t| t.module_path() == module)?;
    Some(AdapterKey::Lora {
        layer,
        target,
        half,
    })
}

/// The official v2 name of a LoRA tensor (what we write).
pub fn official_key(layer: usize, target: Target, half: Half) -> String {
    let half = match half {
        Half::A => "lora_A",
        Half::B => "lora_B",
    };
    format!(
        "{OFFICIAL_PREFIX}model.layers.{layer}.{}.{half}.default.weight",
        target.module_path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_and_peft_names_parse_to_the_same_key() {
        let official =
            "icae.base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight";
        let peft = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
        let expected = AdapterKey::Lora {
            layer: 3,
            target: Target::Q,
            half: Half::A,
        };
        assert_eq!(parse_key(official), Some(expected));
        assert_eq!(parse_key(peft), Some(expected));
        assert_eq!(official_key(3, Target::Q, Half::A), official);
    }

    #[test]
    fn unknown_names_are_not_keys() {
        for name in [
            "model.layers.0.self_attn.q_proj.weight",
            "icae.base_model.model.model.layers.x.self_attn.q_proj.lora_A.default.weight",
            "icae.base_model.model.model.layers.0.self_attn.rot_proj.lora_A.default.weight",
            "icae.base_model.model.model.layers.0.self_attn.q_proj.lora_C.default.weight",
        ] {
            assert_eq!(parse_key(name), None, "{name}");
        }
        assert_eq!(
            parse_key("memory_token_embed.weight"),
            Some(AdapterKey::MemoryEmbed)
        );
        assert_eq!(
            parse_key("slot_projector.weight"),
            Some(AdapterKey::SlotProjectorWeight)
        );
        assert_eq!(
            parse_key("slot_projector.bias"),
            Some(AdapterKey::SlotProjectorBias)
        );
        assert_eq!(parse_key("icae.slot_projector.weight"), None);
        assert_eq!(
            parse_key("icae.base_model.model.model.layers.29.mlp.down_proj.lora_B.default.weight"),
            Some(AdapterKey::Lora {
                layer: 29,
                target: Target::Down,
                half: Half::B
            })
        );
    }
}
