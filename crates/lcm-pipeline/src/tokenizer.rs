//! The CLIP tokenizer as diffusers gets it from transformers 5 (`CLIPTokenizer`, backed by the
//! `tokenizers` library): NFC, every whitespace run to one space, lowercase; pre-tokens from CLIP's
//! regex, byte-level mapped; BPE with a `</w>` end-of-word suffix; then `<|startoftext|>` ids
//! `<|endoftext|>`, truncated and padded to 77 as `padding="max_length", truncation=True` does.
//!
//! The pipeline below is built from the same `tokenizers` components transformers assembles, so the
//! ids are the library's, not a re-implementation's. transformers 4's slow Python tokenizer (used
//! when ftfy was absent) differed: it split CJK characters into separate words and dropped control
//! characters. transformers 5 has no slow CLIP tokenizer; this is what diffusers now gets.

use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};
use serde_json::Value;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::clip_vocab::ClipVocab;

/// CLIP's context length: the text encoder has 77 positions.
pub const CLIP_MAX_LEN: usize = 77;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// CLIP's pre-token pattern (transformers' CLIPTokenizer): the specials, English contractions,
/// letter runs, single digits, runs of anything else that is not whitespace.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// What a built-in tokenizer ([`ClipTokenizer::builtin`]) pads prompts with, as the tokenizer folders
/// diffusers' `from_single_file` fetches say (their `special_tokens_map.json`; the legacy
/// `download_from_original_stable_diffusion_ckpt` loaded the same: openai/clip-vit-large-patch14's
/// tokenizer as is, laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's with `pad_token="!"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinPad {
    /// `<|endoftext|>` (49407): openai/clip-vit-large-patch14's tokenizer, SD1.5's and SDXL's first
    /// (stable-diffusion-v1-5's and stable-diffusion-xl-base-1.0's `tokenizer/`).
    EndOfText,
    /// `!` (id 0): OpenCLIP's convention (it pads with zeros), SD2's tokenizer
    /// (stable-diffusion-2-1's `tokenizer/`) and SDXL's `tokenizer_2/`.
    Exclamation,
}

/// A CLIP BPE tokenizer with its special ids.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    /// The pipeline as loaded, before [`ClipTokenizer::add_embedding_tokens`] added any token: A1111's
    /// trigger words are matched on plain BPE ids ([`ClipTokenizer::encode_base`]).
    base: Option<Tokenizer>,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder: `tokenizer.json` when present (what recent
    /// transformers saves), else `vocab.json` + `merges.txt` (what SD checkpoints ship). The pad
    /// token comes from `special_tokens_map.json` / `tokenizer_config.json` when they name one
    /// (SD1.5: `<|endoftext|>`).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::file(dir, "tokenizer folder not found"));
        }
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            {
                let mut t = Tokenizer::from_file(&json)
                    .map_err(|e| Error::file(&json, format!("not a tokenizers file: {e}")))?;
                // Truncation and padding are this type's job (77 tokens, its pad id): a file that sets its own
                // would move the EOS.
                t.with_truncation(None).map_err(|e| Error::file(&json, format!("cannot clear its truncation: {e}")))?;
                t.with_padding(None);
                t
            }
        } else {
            Self::bpe_pipeline(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let pad_name = configured_pad_token(dir)?.unwrap_or_else(|| EOS.to_string());
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::file(dir, format!("the vocabulary has no `{token}` token")))
        };
        let (bos, eos, pad) = (id(BOS)?, id(EOS)?, id(&pad_name)?);
        Ok(ClipTokenizer { inner, bos, eos, pad, base: None })
    }

    /// transformers' CLIPTokenizer pipeline around a BPE read from `vocab.json` + `merges.txt`.
    fn bpe_pipeline(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        for file in [vocab, merges] {
            if !file.is_file() {
                return Err(Error::file(
                    file,
                    "missing (a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json)",
                ));
            }
        }
        let utf8 = |p: &Path| p.to_str().map(str::to_owned).ok_or_else(|| Error::file(p, "path is not UTF-8"));
        let bpe = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
            .unk_token(EOS.to_string())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| Error::file(vocab.parent().unwrap_or(vocab), format!("bad vocab.json / merges.txt: {e}")))?;
        Self::clip_pipeline(bpe).map_err(|e| Error::file(vocab, e))
    }

    /// transformers' CLIPTokenizer pipeline (normalizer, pre-tokenizer, specials) around `bpe`.
    fn clip_pipeline(bpe: BPE) -> std::result::Result<Tokenizer, String> {
        let normalizer = NormalizerSequence::new(vec![
            NormalizerWrapper::NFC(NFC),
            NormalizerWrapper::Replace(Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").expect("valid regex")),
            NormalizerWrapper::Lowercase(Lowercase),
        ]);
        let pre_tokenizer = PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::Split(
                Split::new(SplitPattern::Regex(CLIP_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
                    .expect("valid regex"),
            ),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_normalizer(Some(normalizer)).expect("setting a normalizer cannot fail");
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        // Specials are matched in the raw text, before normalisation, as transformers registers
        // them.
        tokenizer
            .add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
            .map_err(|e| format!("cannot register {BOS} / {EOS}: {e}"))?;
        Ok(tokenizer)
    }

    /// CLIP's tokenizer from the vocabulary built into the engine ([`ClipVocab`]), for what holds none
    /// (a single-file checkpoint): the one SD1.5, SD2 and SDXL use, padding with `pad`.
    pub fn builtin(pad: BuiltinPad) -> Result<Self> {
        let vocab = ClipVocab::get();
        let ids: Vocab = vocab.tokens().iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        let builtin = |e: String| Error::invalid("tokenizer", format!("the built-in CLIP vocabulary: {e}"));
        let bpe = BPE::builder()
            .vocab_and_merges(ids, vocab.merges().to_vec())
            .unk_token(EOS.to_string())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(|e| builtin(e.to_string()))?;
        let inner = Self::clip_pipeline(bpe).map_err(builtin)?;
        let id = |token: &str| inner.token_to_id(token).ok_or_else(|| builtin(format!("no `{token}` token")));
        let pad = match pad {
            BuiltinPad::EndOfText => EOS,
            BuiltinPad::Exclamation => "!",
        };
        let (bos, eos, pad) = (id(BOS)?, id(EOS)?, id(pad)?);
        Ok(ClipTokenizer { inner, bos, eos, pad, base: None })
    }

    /// The id of `<|startoftext|>` (49406 in CLIP's vocabulary).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id of `<|endoftext|>` (49407 in CLIP's vocabulary).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id padding fills up to 77 with: the folder's `pad_token`, else `<|endoftext|>` (SD1.5's).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The prompt's BPE ids without specials, truncation or padding.
    pub fn encode_unpadded(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(prompt, false).map_err(|e| Error::invalid("prompt", format!("cannot tokenize: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// What the text encoder takes: bos, at most 75 prompt tokens, eos, then pad up to 77.
    pub fn encode(&self, prompt: &str) -> Result<[u32; CLIP_MAX_LEN]> {
        let ids = self.encode_unpadded(prompt)?;
        let kept = ids.len().min(CLIP_MAX_LEN - 2);
        let mut out = [self.pad; CLIP_MAX_LEN];
        out[0] = self.bos;
        out[1..=kept].copy_from_slice(&ids[..kept]);
        out[kept + 1] = self.eos;
        Ok(out)
    }

    /// Whether the prompt is longer than the text encoder sees (diffusers warns and cuts it).
    pub fn is_truncated(&self, prompt: &str) -> Result<bool> {
        Ok(self.encode_unpadded(prompt)?.len() > CLIP_MAX_LEN - 2)
    }

    /// Adds textual-inversion tokens as diffusers' `load_textual_inversion` does (`tokenizer.add_tokens`:
    /// plain added tokens, normalized, matched anywhere in the lowercased text) and returns their ids,
    /// which follow the vocabulary in order. A name the vocabulary (or an earlier added token) already
    /// holds is refused, as diffusers refuses it; nothing is added then.
    pub fn add_embedding_tokens(&mut self, names: &[String]) -> Result<Vec<u32>> {
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || self.inner.token_to_id(name).is_some() || names[..i].contains(name) {
                return Err(Error::invalid(
                    "embedding token",
                    format!("`{name}` is already in the tokenizer's vocabulary (or empty): choose another token name"),
                ));
            }
        }
        let mut grown = self.inner.clone();
        grown
            .add_tokens(names.iter().map(|n| AddedToken::from(n.as_str(), false)))
            .map_err(|e| Error::invalid("embedding token", format!("cannot add {names:?}: {e}")))?;
        let ids = names
            .iter()
            .map(|n| {
                grown.token_to_id(n).ok_or_else(|| Error::invalid("embedding token", format!("`{n}` was not added")))
            })
            .collect::<Result<Vec<u32>>>()?;
        let base = std::mem::replace(&mut self.inner, grown);
        self.base.get_or_insert(base);
        Ok(ids)
    }

    /// The prompt's BPE ids without specials, as if no embedding token had been added: what A1111
    /// matches trigger words on (its tokenizer has no added tokens).
    pub fn encode_base(&self, text: &str) -> Result<Vec<u32>> {
        let tokenizer = self.base.as_ref().unwrap_or(&self.inner);
        let encoding =
            tokenizer.encode(text, false).map_err(|e| Error::invalid("prompt", format!("cannot tokenize: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// diffusers' `maybe_convert_prompt`: each added token the prompt holds (as the tokenizer splits
    /// it) that has `_1`, `_2`, … companions — a multi-vector embedding — is replaced everywhere in the
    /// prompt's text by `tok tok_1 tok_2 …`, so that every vector is used. A prompt is returned as it
    /// is when no embedding token was added.
    pub fn convert_prompt(&self, prompt: &str) -> Result<String> {
        if self.base.is_none() {
            return Ok(prompt.to_string());
        }
        let encoding =
            self.inner.encode(prompt, false).map_err(|e| Error::invalid("prompt", format!("cannot tokenize: {e}")))?;
        let added: std::collections::HashSet<String> =
            self.inner.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
        let mut found: Vec<&str> = Vec::new();
        for token in encoding.get_tokens() {
            if added.contains(token) && !found.contains(&token.as_str()) {
                found.push(token);
            }
        }
        let mut out = prompt.to_string();
        for token in found {
            let mut replacement = token.to_string();
            for i in 1.. {
                let next = format!("{token}_{i}");
                if !added.contains(&next) {
                    break;
                }
                replacement.push(' ');
                replacement.push_str(&next);
            }
            out = out.replace(token, &replacement);
        }
        Ok(out)
    }

    /// The underlying `tokenizers` pipeline (to save it as a `tokenizer.json`, decode, inspect).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The pad token a tokenizer folder names, from `special_tokens_map.json` or
/// `tokenizer_config.json` (a string, or an object with `content`). `special_tokens_map.json` wins,
/// as in transformers: SD2's folder says "!" there and `<|endoftext|>` in `tokenizer_config.json`,
/// and its prompts are padded with "!".
fn configured_pad_token(dir: &Path) -> Result<Option<String>> {
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path: PathBuf = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("not JSON: {e}")))?;
        let pad = match json.get("pad_token") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        if pad.is_some() {
            return Ok(pad);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with a toy vocabulary: the 256 byte symbols, the same with `</w>`, a few merges,
    /// specials.
    fn toy_dir() -> tempdir::TempDir {
        let dir = tempdir::TempDir::new();
        let bytes: Vec<String> = byte_symbols();
        let mut vocab: Vec<String> = bytes.clone();
        vocab.extend(bytes.iter().map(|b| format!("{b}</w>")));
        let merges = ["c a", "ca t</w>"];
        vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
        vocab.extend([BOS.to_string(), EOS.to_string()]);
        let map: serde_json::Map<String, Value> =
            vocab.iter().enumerate().map(|(i, t)| (t.clone(), Value::from(i))).collect();
        std::fs::write(dir.path().join("vocab.json"), Value::Object(map).to_string()).unwrap();
        std::fs::write(dir.path().join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n"))).unwrap();
        dir
    }

    /// GPT-2's byte → printable-character table, in its order.
    fn byte_symbols() -> Vec<String> {
        let mut printable: Vec<u32> = (0x21..=0x7e).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
        let mut chars: Vec<u32> = printable.clone();
        let mut extra = 0;
        for b in 0..256 {
            if !printable.contains(&b) {
                printable.push(b);
                chars.push(256 + extra);
                extra += 1;
            }
        }
        chars.into_iter().map(|c| char::from_u32(c).unwrap().to_string()).collect()
    }

    mod tempdir {
        /// A folder under the system temp dir, removed on drop.
        pub struct TempDir(std::path::PathBuf);
        impl TempDir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let name = format!("lcm-tok-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
                let path = std::env::temp_dir().join(name);
                std::fs::create_dir_all(&path).unwrap();
                TempDir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn toy_vocab_merges_lowercases_and_pads() {
        let dir = toy_dir();
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        let cat = tok.inner().token_to_id("cat</w>").unwrap();
        let a = tok.inner().token_to_id("a</w>").unwrap();
        let ids = tok.encode("  A\tCAT ").unwrap();
        assert_eq!(ids[..4], [tok.bos_id(), a, cat, tok.eos_id()]);
        assert!(ids[4..].iter().all(|&i| i == tok.pad_id()));
        assert_eq!(tok.encode("").unwrap()[..2], [tok.bos_id(), tok.eos_id()]);
    }

    #[test]
    fn long_prompts_keep_the_final_eos() {
        let dir = toy_dir();
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        let prompt = "cat ".repeat(100);
        assert!(tok.is_truncated(&prompt).unwrap());
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids[CLIP_MAX_LEN - 1], tok.eos_id());
        assert_eq!(ids[CLIP_MAX_LEN - 2], tok.inner().token_to_id("cat</w>").unwrap());
    }

    #[test]
    fn embedding_tokens_follow_the_vocabulary_and_expand_as_diffusers() {
        let dir = toy_dir();
        let mut tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        let size = tok.inner().get_vocab_size(false) as u32;
        let before = tok.encode_unpadded("a <t>").unwrap();
        let ids = tok.add_embedding_tokens(&["<t>".into(), "<t>_1".into()]).unwrap();
        assert_eq!(ids, [size, size + 1]);
        let a = tok.inner().token_to_id("a</w>").unwrap();
        assert_eq!(tok.encode_unpadded("a <T>").unwrap(), [a, size], "normalized: matched in the lowercased text");
        assert_eq!(tok.encode_base("a <t>").unwrap(), before, "the BPE ids without added tokens");
        assert_eq!(tok.convert_prompt("a <t>, <t>").unwrap(), "a <t> <t>_1, <t> <t>_1");
        // diffusers compares the matched (lowercased) text with the token's spelling: a token with
        // capitals is matched but not expanded.
        let up = tok.add_embedding_tokens(&["<U>".into(), "<U>_1".into()]).unwrap();
        assert_eq!(up, [size + 2, size + 3]);
        assert_eq!(tok.convert_prompt("a <U>").unwrap(), "a <U>");
        assert_eq!(tok.encode_unpadded("<U>").unwrap(), [size + 2]);
        // Names already in the vocabulary, added before, or twice in one call are refused whole.
        for bad in [vec!["cat</w>".to_string()], vec!["<t>".into()], vec!["<v>".into(), "<v>".into()]] {
            assert!(tok.add_embedding_tokens(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(tok.inner().token_to_id("<v>"), None);
    }

    #[test]
    fn missing_files_are_named() {
        let dir = toy_dir();
        std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("merges.txt"), "{err}");
        let err = ClipTokenizer::from_dir(dir.path().join("nowhere")).err().unwrap().to_string();
        assert!(err.contains("nowhere"), "{err}");
    }
}
