//! The command-line names of the API's enums: modes `autoencode|continue|answer` (as the
//! engine spells them, with its short aliases) and finish reasons `eos|length|stop`.

use anyhow::{bail, Result};
use icae_proto::v1::{FinishReason, Mode};

/// The mode named on the command line; case-insensitive, with the engine's aliases `ae`,
/// `lm` and `ft`.
pub fn parse_mode(name: &str) -> Result<Mode> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "autoencode" | "ae" => Mode::Autoencode,
        "continue" | "lm" => Mode::Continue,
        "answer" | "ft" => Mode::Answer,
        _ => bail!("mode is \"{name}\", expected autoencode, continue or answer"),
    })
}

/// The finish reason of a response; a value this client does not know reads as unspecified.
pub fn finish_reason(value: i32) -> FinishReason {
    FinishReason::try_from(value).unwrap_or(FinishReason::Unspecified)
}

/// The finish reason as the CLI prints it in JSON (the in-process `icae generate` uses the
/// same names).
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Unspecified => "unspecified",
        FinishReason::Eos => "eos",
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name_and_alias_in_any_case() {
        for (names, mode) in [
            (["autoencode", "ae", "AutoEncode"], Mode::Autoencode),
            (["continue", "lm", "CONTINUE"], Mode::Continue),
            (["answer", "ft", "Answer"], Mode::Answer),
        ] {
            for name in names {
                assert_eq!(parse_mode(name).unwrap(), mode, "{name}");
            }
        }
    }

    #[test]
    fn an_unknown_mode_says_what_is_expected() {
        let err = parse_mode("summarize").unwrap_err();
        assert_eq!(
            err.to_string(),
            "mode is \"summarize\", expected autoencode, continue or answer"
        );
        assert!(parse_mode("unspecified").is_err());
    }

    #[test]
    fn finish_reason_names_are_the_proto_names_shortened() {
        for reason in [
            FinishReason::Unspecified,
            FinishReason::Eos,
            FinishReason::Length,
            FinishReason::Stop,
        ] {
            let shortened = reason
                .as_str_name()
                .trim_start_matches("FINISH_REASON_")
                .to_lowercase();
            assert_eq!(finish_reason_name(reason), shortened);
            assert_eq!(finish_reason(reason as i32), reason);
        }
    }

    #[test]
    fn an_unknown_finish_reason_is_unspecified() {
        assert_eq!(finish_reason(99), FinishReason::Unspecified);
    }
}
