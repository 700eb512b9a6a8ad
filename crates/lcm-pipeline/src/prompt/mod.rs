//! Prompt syntax: how the text a user writes becomes the text encoder's input.
//!
//! - [`parse`]: A1111's emphasis syntax (`(word)`, `[word]`, `(word:1.3)`, escapes, `BREAK`), as
//!   `parse_prompt_attention` of AUTOMATIC1111's `modules/prompt_parser.py` parses it.
//! - [`chunks`]: A1111's long prompts: 75-token chunks with the comma back-off, BREAK, emphasis
//!   weights and textual-inversion triggers, as `tokenize_line` of `modules/sd_hijack_clip.py` cuts
//!   them.
//!
//! `docs/prompts.md` describes the syntax for users and lists which A1111 rules are reproduced.

pub mod chunks;
pub mod parse;

pub use chunks::{chunks, target_token_count, token_count, Chunk, TriggerWord, CHUNK_TOKENS, MAX_CHUNKS};
pub use parse::parse_attention;

use lcm_core::{Error, Result};

/// How a prompt's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PromptSyntax {
    /// diffusers': the text as written, tokenized once and cut at 75 tokens; brackets, `:1.3` and
    /// `BREAK` are ordinary text.
    #[default]
    Plain,
    /// AUTOMATIC1111's: `(word)` / `[word]` / `(word:1.3)` emphasis, `\(` escapes, `BREAK`, and prompts
    /// of any length in 75-token chunks (up to [`MAX_CHUNKS`]), each weighted and encoded on its own.
    A1111,
}

impl PromptSyntax {
    /// Every syntax, in the order of their names.
    pub const ALL: [PromptSyntax; 2] = [PromptSyntax::Plain, PromptSyntax::A1111];

    /// From its name, "plain" or "a1111" (what `--prompt-syntax` and the `prompt_syntax` field take).
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            Error::invalid(
                "--prompt-syntax / prompt_syntax",
                format!("unknown prompt syntax `{name}`; expected one of: plain, a1111"),
            )
        })
    }

    /// Its name (what [`PromptSyntax::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::Plain => "plain",
            PromptSyntax::A1111 => "a1111",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused_by_name() {
        for s in PromptSyntax::ALL {
            assert_eq!(PromptSyntax::parse(s.name()).unwrap(), s);
        }
        assert_eq!(PromptSyntax::default(), PromptSyntax::Plain);
        let err = PromptSyntax::parse("A1111 ").unwrap_err().to_string();
        assert!(err.contains("--prompt-syntax") && err.contains("plain, a1111") && err.contains("`A1111 `"), "{err}");
    }
}
