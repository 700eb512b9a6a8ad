//! Long prompts in 75-token chunks, as A1111 cuts them: `tokenize_line` and `process_tokens` of
//! `modules/sd_hijack_clip.py` (AUTOMATIC1111/stable-diffusion-webui), with A1111's defaults
//! (`opts.emphasis = "Original"`, `opts.comma_padding_backtrack = 20`).
//!
//! Rules reproduced, with A1111's names:
//! - `tokenize_line`: the prompt goes through [`parse_attention`]; each fragment is tokenized on
//!   its own, without specials (`self.tokenize`), and its tokens carry its weight.
//! - `next_chunk`: a chunk holds 75 prompt tokens (`chunk_length`), filled up with `id_end` at weight
//!   1.0, then `id_start` in front and `id_end` behind (weights 1.0): 77 ids. A chunk is closed when
//!   the 76th token arrives, at each BREAK marker (even an empty chunk: `a BREAK BREAK b` has an
//!   all-padding chunk in the middle), and at the end if it holds tokens or is the only one (the empty
//!   prompt gives one chunk of BOS + 76 × EOS).
//! - The comma back-off: when a token other than a comma arrives at a full chunk and the last comma
//!   in that chunk is among its last 20 tokens (`len - last_comma <= comma_padding_backtrack`),
//!   everything after the comma moves, with its weights, to the next chunk. A comma that is itself
//!   the 76th token starts the next chunk and is forgotten (`next_chunk` resets `last_comma`).
//! - Textual-inversion triggers (`find_embedding_at_position` of
//!   `modules/textual_inversion/textual_inversion.py`): at each token, among the triggers whose BPE
//!   ids start there (within the fragment), the longest wins, ties to the one listed first (A1111
//!   sorts each lookup list by length, stably, in load order). Its vectors go in as one block with the
//!   fragment's weight; a block that does not fit in the current chunk starts the next one.
//! - `process_tokens` (SD2 / clip_g): where the pad id differs from `id_end`, every id after the first
//!   `id_end` of the 77 becomes the pad id, except a trigger's vectors (A1111 patches those in after
//!   the token lookup, whatever id their positions hold; an `id_end` can come before them when the
//!   prompt has `<|endoftext|>` in it). A1111's `id_pad` is `id_end` for the HF CLIP encoders
//!   (SD1.x, SDXL's clip_l) and 0 for OpenCLIP (SD2.x, SDXL's clip_g); [`ClipTokenizer::pad_id`] is the
//!   folder's `pad_token`: `<|endoftext|>` for SD1.5 / SDXL `tokenizer`, `!` = id 0 for SD2 / SDXL
//!   `tokenizer_2`, so the same rule follows from it.
//! - `torch.asarray(multipliers)`: the f64 weights become f32 here.
//!
//! One deliberate difference: when the comma back-off moves a trigger's vectors to the next chunk,
//! A1111 moves the placeholder ids but leaves the `PromptChunkFix` on the old chunk, so its vectors
//! land on the old chunk's padding and the moved placeholders stay token 0 (`!`). Here a trigger's
//! ids are placed in the chunk, so they move with it.

use lcm_core::{Error, Result};

use super::parse::{parse_attention, BREAK, BREAK_WEIGHT};
use crate::tokenizer::{ClipTokenizer, CLIP_MAX_LEN};

/// Prompt tokens per chunk (A1111's `chunk_length`): 77 less BOS and EOS.
pub const CHUNK_TOKENS: usize = CLIP_MAX_LEN - 2;

/// How far back a comma may be for the back-off (A1111's default `comma_padding_backtrack`).
pub const COMMA_BACKTRACK: usize = 20;

/// The most chunks one prompt may take (75 × 32 = 2400 tokens): each is a text-encoder call and 77
/// more keys in every cross-attention, so a pasted novel is refused rather than run.
pub const MAX_CHUNKS: usize = 32;

/// One text-encoder input of 77 ids with a weight per position.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// BOS, 75 prompt or padding ids, EOS; after the first EOS the tokenizer's pad id.
    pub ids: [u32; CLIP_MAX_LEN],
    /// Each position's emphasis multiplier (1.0 on BOS, EOS and padding).
    pub weights: [f32; CLIP_MAX_LEN],
}

/// A textual-inversion trigger as the chunker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerWord {
    /// The trigger word's BPE ids, as A1111 tokenizes the name (the tokenizer without specials).
    pub tokens: Vec<u32>,
    /// The token ids to place, one per embedding vector.
    pub vectors: Vec<u32>,
}

/// A prompt in chunks and A1111's token count for it.
struct Tokenized {
    chunks: Vec<Chunk>,
    token_count: usize,
}

/// A1111's `tokenize_line` state: the chunks so far and the open one.
struct Chunker {
    bos: u32,
    eos: u32,
    pad: u32,
    chunks: Vec<Chunk>,
    ids: Vec<u32>,
    weights: Vec<f64>,
    /// Whether each id is a trigger's vector (A1111's `chunk.fixes`).
    is_vector: Vec<bool>,
    last_comma: Option<usize>,
    token_count: usize,
}

impl Chunker {
    /// A1111's `next_chunk`.
    fn next_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last { self.ids.len() } else { CHUNK_TOKENS };
        let mut ids = [self.eos; CLIP_MAX_LEN];
        let mut weights = [1.0f32; CLIP_MAX_LEN];
        ids[0] = self.bos;
        for (i, (&id, &w)) in self.ids.iter().zip(&self.weights).enumerate() {
            ids[1 + i] = id;
            weights[1 + i] = w as f32;
        }
        // process_tokens' SD2 rule: the first EOS ends the text; the rest is padding.
        if self.pad != self.eos {
            let first_eos = ids.iter().position(|&id| id == self.eos).expect("position 76 is EOS");
            for (i, id) in ids.iter_mut().enumerate().skip(first_eos + 1) {
                if !self.is_vector.get(i - 1).copied().unwrap_or(false) {
                    *id = self.pad;
                }
            }
        }
        self.chunks.push(Chunk { ids, weights });
        self.ids.clear();
        self.weights.clear();
        self.is_vector.clear();
        self.last_comma = None;
    }
}

/// A1111's `find_embedding_at_position`: the longest trigger starting at `tokens[at]`, the first
/// listed among equals.
fn trigger_at<'t>(triggers: &'t [TriggerWord], tokens: &[u32], at: usize) -> Option<&'t TriggerWord> {
    let mut best: Option<&TriggerWord> = None;
    for t in triggers {
        if tokens[at..].starts_with(&t.tokens) && best.is_none_or(|b| t.tokens.len() > b.tokens.len()) {
            best = Some(t);
        }
    }
    best
}

fn check_triggers(triggers: &[TriggerWord]) -> Result<()> {
    for (i, t) in triggers.iter().enumerate() {
        if t.tokens.is_empty() {
            // A1111 cannot register such a name either (`ids[0]` of an empty list).
            return Err(Error::invalid(format!("trigger word {i}"), "its name tokenizes to nothing"));
        }
        if t.vectors.len() > CHUNK_TOKENS {
            return Err(Error::invalid(
                format!("trigger word {i}"),
                format!("{} vectors; a chunk holds at most {CHUNK_TOKENS}", t.vectors.len()),
            ));
        }
    }
    Ok(())
}

/// A1111's `tokenize_line` (see the module documentation), then `process_tokens`' pad rule.
fn tokenize_line(tok: &ClipTokenizer, text: &str, triggers: &[TriggerWord]) -> Result<Tokenized> {
    check_triggers(triggers)?;
    let parsed = parse_attention(text)?;
    let comma = tok.inner().token_to_id(",</w>");
    let mut c = Chunker {
        bos: tok.bos_id(),
        eos: tok.eos_id(),
        pad: tok.pad_id(),
        chunks: Vec::new(),
        ids: Vec::with_capacity(CHUNK_TOKENS),
        weights: Vec::with_capacity(CHUNK_TOKENS),
        is_vector: Vec::with_capacity(CHUNK_TOKENS),
        last_comma: None,
        token_count: 0,
    };
    for (fragment, weight) in &parsed {
        if fragment == BREAK && *weight == BREAK_WEIGHT {
            c.next_chunk(false);
            continue;
        }
        let tokens = tok.encode_base(fragment)?;
        let mut position = 0;
        while position < tokens.len() {
            let token = tokens[position];
            if Some(token) == comma {
                c.last_comma = Some(c.ids.len());
            } else if let Some(last_comma) = c.last_comma.filter(|&lc| {
                COMMA_BACKTRACK != 0 && c.ids.len() == CHUNK_TOKENS && CHUNK_TOKENS - lc <= COMMA_BACKTRACK
            }) {
                let moved_ids = c.ids.split_off(last_comma + 1);
                let moved_weights = c.weights.split_off(last_comma + 1);
                let moved_is_vector = c.is_vector.split_off(last_comma + 1);
                c.next_chunk(false);
                c.ids = moved_ids;
                c.weights = moved_weights;
                c.is_vector = moved_is_vector;
            }
            if c.ids.len() == CHUNK_TOKENS {
                c.next_chunk(false);
            }
            match trigger_at(triggers, &tokens, position) {
                None => {
                    c.ids.push(token);
                    c.weights.push(*weight);
                    c.is_vector.push(false);
                    position += 1;
                }
                Some(t) => {
                    if c.ids.len() + t.vectors.len() > CHUNK_TOKENS {
                        c.next_chunk(false);
                    }
                    c.ids.extend_from_slice(&t.vectors);
                    c.weights.extend(std::iter::repeat_n(*weight, t.vectors.len()));
                    c.is_vector.extend(std::iter::repeat_n(true, t.vectors.len()));
                    position += t.tokens.len();
                }
            }
        }
    }
    if !c.ids.is_empty() || c.chunks.is_empty() {
        c.next_chunk(true);
    }
    Ok(Tokenized { chunks: c.chunks, token_count: c.token_count })
}

/// The prompt in A1111's 75-token chunks (see the module documentation for the rules), refused with
/// an error when it needs more than [`MAX_CHUNKS`], or when an emphasis weight is not a finite f32
/// (A1111 would encode NaN or infinity).
pub fn chunks(tok: &ClipTokenizer, text: &str, triggers: &[TriggerWord]) -> Result<Vec<Chunk>> {
    let Tokenized { chunks, token_count } = tokenize_line(tok, text, triggers)?;
    if chunks.len() > MAX_CHUNKS {
        return Err(Error::invalid(
            "prompt",
            format!(
                "prompt of {token_count} tokens needs {} chunks of {CHUNK_TOKENS}; at most {MAX_CHUNKS} \
                 ({} tokens) are encoded",
                chunks.len(),
                MAX_CHUNKS * CHUNK_TOKENS
            ),
        ));
    }
    if let Some(w) = chunks.iter().flat_map(|c| c.weights).find(|w| !w.is_finite()) {
        return Err(Error::invalid(
            "prompt",
            format!("an emphasis weight comes to {w}; the weights multiplied together must stay finite"),
        ));
    }
    Ok(chunks)
}

/// The prompt's length in tokens as A1111's prompt box counts it (`tokenize_line`'s `token_count`):
/// 75 for each full chunk plus the tokens of the last one; triggers count their vectors.
pub fn token_count(tok: &ClipTokenizer, text: &str, triggers: &[TriggerWord]) -> Result<usize> {
    Ok(tokenize_line(tok, text, triggers)?.token_count)
}

/// The count A1111 shows after the slash (`get_target_prompt_token_count`): `token_count` rounded up
/// to whole chunks, at least one.
pub fn target_token_count(token_count: usize) -> usize {
    token_count.max(1).div_ceil(CHUNK_TOKENS) * CHUNK_TOKENS
}
