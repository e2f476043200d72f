//! The one place where the engine's enums meet the proto's (the decoder's modes and finish
//! reasons).

use icae_core::{FinishReason, InputError, Mode};
use icae_proto::v1::{FinishReason as ProtoFinish, Mode as ProtoMode};

/// A request's `mode` field; unknown or unset values are refused.
pub fn mode_from_proto(raw: i32) -> Result<Mode, InputError> {
    match ProtoMode::try_from(raw) {
        Ok(ProtoMode::Autoencode) => Ok(Mode::Autoencode),
        Ok(ProtoMode::Continue) => Ok(Mode::Continue),
        Ok(ProtoMode::Answer) => Ok(Mode::Answer),
        _ => Err(InputError::BadParameter {
            name: "mode",
            value: raw.to_string(),
            expected: "must be MODE_AUTOENCODE (1), MODE_CONTINUE (2) or MODE_ANSWER (3)".into(),
        }),
    }
}

pub fn finish_to_proto(reason: FinishReason) -> i32 {
    match reason {
        FinishReason::Eos => ProtoFinish::Eos as i32,
        FinishReason::Length => ProtoFinish::Length as i32,
        FinishReason::Stop => ProtoFinish::Stop as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_the_documented_numbers() {
        assert_eq!(mode_from_proto(1).unwrap(), Mode::Autoencode);
        assert_eq!(mode_from_proto(2).unwrap(), Mode::Continue);
        assert_eq!(mode_from_proto(3).unwrap(), Mode::Answer);
        for bad in [0, 4, -1] {
            let message = mode_from_proto(bad).unwrap_err().to_string();
            assert!(message.contains(&bad.to_string()), "{message}");
        }
    }

    #[test]
    fn finish_reasons_map_one_to_one() {
        assert_eq!(finish_to_proto(FinishReason::Eos), ProtoFinish::Eos as i32);
        assert_eq!(
            finish_to_proto(FinishReason::Length),
            ProtoFinish::Length as i32
        );
        assert_eq!(
            finish_to_proto(FinishReason::Stop),
            ProtoFinish::Stop as i32
        );
    }
}
