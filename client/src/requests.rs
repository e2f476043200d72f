//! Builders for the requests every client sends: one text to compress, and a generation
//! from stored slots or from the full text.

use icae_proto::v1::{
    document, generate_request, slot_ref, CompressOptions, CompressRequest, Document,
    GenerateRequest, Mode, Sampling, SlotList, SlotRef,
};

/// A document given as text (the encoder tokenizes it).
pub fn text_document(text: impl Into<String>) -> Document {
    Document {
        content: Some(document::Content::Text(text.into())),
    }
}

/// A Compress request for one text.
pub fn compress_one(text: impl Into<String>, options: CompressOptions) -> CompressRequest {
    CompressRequest {
        documents: vec![text_document(text)],
        options: Some(options),
    }
}

/// Generate from the slots stored under these keys, read in order (several keys: several slot sets, concatenated).
pub fn slot_keys<K: AsRef<str>>(keys: &[K]) -> generate_request::Context {
    generate_request::Context::Slots(SlotList {
        items: keys
            .iter()
            .map(|key| SlotRef {
                source: Some(slot_ref::Source::Key(key.as_ref().to_string())),
            })
            .collect(),
    })
}

/// Generate from the uncompressed text: the baseline the slots are compared with.
pub fn baseline_text(text: impl Into<String>) -> generate_request::Context {
    generate_request::Context::BaselineText(text.into())
}

/// Greedy decoding of at most `max_new_tokens` tokens (the server's defaults otherwise).
pub fn greedy(max_new_tokens: u32) -> Sampling {
    Sampling {
        max_new_tokens,
        ..Default::default()
    }
}

/// A Generate request. `prompt` is the question for [`Mode::Answer`] and may be empty
/// otherwise.
pub fn generate_request(
    context: generate_request::Context,
    mode: Mode,
    prompt: &str,
    sampling: Sampling,
) -> GenerateRequest {
    GenerateRequest {
        context: Some(context),
        mode: mode as i32,
        prompt: prompt.to_string(),
        sampling: Some(sampling),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(context: &generate_request::Context) -> Vec<String> {
        match context {
            generate_request::Context::Slots(list) => list
                .items
                .iter()
                .map(|item| match &item.source {
                    Some(slot_ref::Source::Key(key)) => key.clone(),
                    other => panic!("not a key: {other:?}"),
                })
                .collect(),
            other => panic!("not slots: {other:?}"),
        }
    }

    #[test]
    fn compress_one_holds_one_text_document_and_the_options() {
        let options = CompressOptions {
            ttl: Some(icae_proto::time::seconds(60)),
            namespace: "tenant".into(),
            return_slots: true,
            ..Default::default()
        };
        let request = compress_one("hello", options.clone());
        assert_eq!(request.documents, vec![text_document("hello")]);
        assert_eq!(
            request.documents[0].content,
            Some(document::Content::Text("hello".into()))
        );
        assert_eq!(request.options, Some(options));
    }

    #[test]
    fn slot_keys_keep_their_order() {
        let context = slot_keys(&["icae:v1:a", "icae:v1:b", "icae:v1:a"]);
        assert_eq!(keys_of(&context), ["icae:v1:a", "icae:v1:b", "icae:v1:a"]);
        let owned = vec![String::from("icae:v1:c")];
        assert_eq!(keys_of(&slot_keys(&owned)), ["icae:v1:c"]);
    }

    #[test]
    fn generate_request_carries_mode_prompt_and_sampling() {
        let request = generate_request(
            baseline_text("the article"),
            Mode::Answer,
            "Who?",
            greedy(16),
        );
        assert_eq!(
            request.context,
            Some(generate_request::Context::BaselineText(
                "the article".into()
            ))
        );
        assert_eq!(request.mode, Mode::Answer as i32);
        assert_eq!(request.prompt, "Who?");
        let sampling = request.sampling.unwrap();
        assert_eq!(sampling.max_new_tokens, 16);
        assert_eq!(sampling.temperature, 0.0, "greedy");
        assert_eq!(sampling, greedy(16));
    }
}
