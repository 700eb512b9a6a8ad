//! CLIP's BPE vocabulary built into the engine, so a single-file checkpoint (which holds no tokenizer)
//! tokenizes without a download: the merge list openai/CLIP ships as `bpe_simple_vocab_16e6.txt.gz`
//! (MIT; `assets/clip/LICENSE`), embedded compressed (1.3 MB) and expanded on first use.
//!
//! The vocabulary is built as CLIP's `SimpleTokenizer` builds it, which is also what SD1.5's, SD2's
//! and SDXL's `tokenizer/` folders hold (`vocab.json`, 49408 ids; `merges.txt`): the 256 byte symbols
//! in GPT-2's `bytes_to_unicode` order, the same with `</w>`, the first [`CLIP_MERGES`] merges joined,
//! then `<|startoftext|>` and `<|endoftext|>`.

use std::io::Read;
use std::sync::OnceLock;

/// The gzipped merge list: a `#version` header line, then one merge ("a b") a line.
static BPE_GZ: &[u8] = include_bytes!("../assets/clip/bpe_simple_vocab_16e6.txt.gz");

/// The number of token ids: CLIP's `vocab_size`.
pub const CLIP_VOCAB_SIZE: usize = 49408;

/// How many of the file's merges CLIP uses: 49152 − 256 − 2 (SimpleTokenizer's
/// `merges[1:49152-256-2+1]`), so that with 512 byte symbols and 2 specials the vocabulary has
/// [`CLIP_VOCAB_SIZE`] ids.
pub const CLIP_MERGES: usize = 49152 - 256 - 2;

/// CLIP's vocabulary: every token in id order, and the merges in rank order.
#[derive(Debug)]
pub struct ClipVocab {
    tokens: Vec<String>,
    merges: Vec<(String, String)>,
}

impl ClipVocab {
    /// The built-in vocabulary, expanded from the embedded file on the first call (once per process).
    pub fn get() -> &'static ClipVocab {
        static VOCAB: OnceLock<ClipVocab> = OnceLock::new();
        VOCAB.get_or_init(|| {
            let mut text = String::new();
            flate2::read::GzDecoder::new(BPE_GZ)
                .read_to_string(&mut text)
                .expect("the embedded bpe_simple_vocab_16e6.txt.gz is gzipped UTF-8 (its test reads it)");
            ClipVocab::from_merge_list(&text)
        })
    }

    /// The vocabulary from the text of `bpe_simple_vocab_16e6.txt`: a header line, then merges.
    fn from_merge_list(text: &str) -> ClipVocab {
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(CLIP_MERGES)
            .map(|line| {
                let (a, b) = line.split_once(' ').expect("every merge line of the embedded file is `a b`");
                (a.to_string(), b.to_string())
            })
            .collect();
        let symbols = byte_symbols();
        let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
        ClipVocab { tokens, merges }
    }

    /// Every token, indexed by its id (`vocab.json` inverted).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The merges in rank order (`merges.txt` without its `#version` line).
    pub fn merges(&self) -> &[(String, String)] {
        &self.merges
    }
}

/// GPT-2's byte → printable-character table (`bytes_to_unicode`), in its order: the printable
/// Latin-1 bytes stand for themselves, the other 68 are mapped to U+0100 onwards.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut symbols: Vec<char> = (0..256u32).filter(|&b| printable(b)).filter_map(char::from_u32).collect();
    symbols
        .extend((0..256u32).filter(|&b| !printable(b)).enumerate().filter_map(|(n, _)| char::from_u32(256 + n as u32)));
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_clip_shape() {
        let v = ClipVocab::get();
        assert_eq!(v.tokens().len(), CLIP_VOCAB_SIZE);
        assert_eq!(v.merges().len(), CLIP_MERGES);
        let unique: std::collections::HashSet<&String> = v.tokens().iter().collect();
        assert_eq!(unique.len(), CLIP_VOCAB_SIZE, "a token appears twice");
        // Spot checks against SD1.5's vocab.json: "!" 0, "a</w>" 320, "cat</w>" 2368, the specials last.
        assert_eq!(v.tokens()[0], "!");
        assert_eq!(v.tokens()[320], "a</w>");
        assert_eq!(v.tokens()[2368], "cat</w>");
        assert_eq!(v.tokens()[49406], "<|startoftext|>");
        assert_eq!(v.tokens()[49407], "<|endoftext|>");
        assert_eq!(v.merges()[0], ("i".to_string(), "n".to_string()));
    }
}
