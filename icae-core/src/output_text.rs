//! The text of a generation, kept up to date one token at a time. Decoding every generated
//! token again at each step made a generation quadratic in its length; this decodes only a
//! bounded window: the tokens since the text last ended on a complete character, after the
//! tokens before them as context (decoders such as SentencePiece's change a token's text by
//! what precedes it). Same idea as the `tokenizers` crate's `DecodeStream`, which borrows
//! the tokenizer and so cannot live in a `Sequence`.

use crate::error::ModelError;
use crate::tokenizer::TextTokenizer;

/// What a partial multi-byte character decodes to until its last byte arrives.
const REPLACEMENT: char = '\u{FFFD}';

/// The decoded text of every token pushed so far: always equal to decoding them all at once.
#[derive(Debug, Default, Clone)]
pub struct OutputText {
    text: String,
    /// Length of the part of `text` that later tokens cannot change (it ends on a complete
    /// character).
    settled: usize,
    /// The tokens decoded at each push: `context` tokens whose text ends `text[..settled]`,
    /// then the tokens after them.
    window: Vec<u32>,
    context: usize,
    /// The context tokens decoded alone.
    context_text: String,
    /// Set when a decoder's output of the window did not start with its context's (never
    /// seen with byte-level BPE): from then on every push decodes every token, as before.
    whole: bool,
}

impl OutputText {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Append `token`; `all` is every token pushed so far including it (used only by the
    /// exact fallback).
    pub fn push(
        &mut self,
        token: u32,
        all: &[u32],
        tokenizer: &TextTokenizer,
    ) -> Result<(), ModelError> {
        if self.whole {
            self.text = tokenizer.decode(all, true)?;
            return Ok(());
        }
        self.window.push(token);
        let decoded = tokenizer.decode(&self.window, true)?;
        let Some(new) = decoded.strip_prefix(self.context_text.as_str()) else {
            self.whole = true;
            self.text = tokenizer.decode(all, true)?;
            return Ok(());
        };
        self.text.truncate(self.settled);
        self.text.push_str(new);
        if !decoded.ends_with(REPLACEMENT) {
            // The text ends on a whole character: what came since the last settle becomes
            // the next context, and older tokens are no longer decoded.
            self.settled = self.text.len();
            self.window.drain(..self.context);
            self.context = self.window.len();
            self.context_text = tokenizer.decode(&self.window, true)?;
        }
        Ok(())
    }
}
