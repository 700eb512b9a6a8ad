//! The tokenizer built into the engine (`ClipTokenizer::builtin`, what single-file checkpoints get)
//! against the tokenizer folders the fixtures ship: the same vocabulary and merges as tiny-sd's
//! `vocab.json` / `merges.txt` (SD1.5's four-file layout, built from the same file), the same ids on
//! transformers' recorded prompts, and the pad tokens of SD1.5's, SD2's and SDXL's folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lcm_pipeline::clip_vocab::{ClipVocab, CLIP_MERGES, CLIP_VOCAB_SIZE};
use lcm_pipeline::tokenizer::{BuiltinPad, ClipTokenizer};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn builtin_vocab_and_merges_are_tiny_sd_files() {
    let dir = fixtures().join("tiny-sd/tokenizer");
    let want: HashMap<String, u32> = serde_json::from_str(&read(&dir.join("vocab.json"))).unwrap();
    let v = ClipVocab::get();
    let ours: HashMap<String, u32> = v.tokens().iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    assert_eq!(ours.len(), CLIP_VOCAB_SIZE);
    assert_eq!(ours, want, "the built-in vocabulary differs from tiny-sd/tokenizer/vocab.json");

    let merges_txt = read(&dir.join("merges.txt"));
    let mut lines = merges_txt.lines();
    assert_eq!(lines.next(), Some("#version: 0.2"));
    let want: Vec<&str> = lines.collect();
    let ours: Vec<String> = v.merges().iter().map(|(a, b)| format!("{a} {b}")).collect();
    assert_eq!(ours.len(), CLIP_MERGES);
    assert_eq!(ours, want, "the built-in merges differ from tiny-sd/tokenizer/merges.txt");
}

/// transformers' recorded prompts and a few more that stress the specials and the pad token.
fn prompts() -> Vec<String> {
    let rec: Value = serde_json::from_str(&read(&fixtures().join("records/tokenizer_prompts.json"))).unwrap();
    let mut prompts: Vec<String> =
        rec["cases"].as_array().unwrap().iter().map(|c| c["prompt"].as_str().unwrap().to_string()).collect();
    assert!(prompts.len() >= 20);
    prompts.extend(["wow!!! !", "<|endoftext|>!<|startoftext|>", "a photo of a cat</w>"].map(String::from));
    prompts
}

#[test]
fn builtin_tokenizer_gives_the_folders_ids() {
    let builtin = ClipTokenizer::builtin(BuiltinPad::EndOfText).unwrap();
    assert_eq!((builtin.bos_id(), builtin.eos_id(), builtin.pad_id()), (49406, 49407, 49407));
    // tiny-sd's folder is SD1.5's layout; tiny-sdxl's first tokenizer is the same vocabulary again.
    for folder in ["tiny-sd/tokenizer", "sdxl/tiny-sdxl/tokenizer"] {
        let from_dir = ClipTokenizer::from_dir(fixtures().join(folder)).unwrap();
        assert_eq!(from_dir.pad_id(), builtin.pad_id(), "{folder}");
        for p in prompts() {
            assert_eq!(builtin.encode(&p).unwrap(), from_dir.encode(&p).unwrap(), "{folder}: ids of {p:?}");
        }
    }
    // And transformers' own ids, as recorded.
    let rec: Value = serde_json::from_str(&read(&fixtures().join("records/tokenizer_prompts.json"))).unwrap();
    for case in rec["cases"].as_array().unwrap() {
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(builtin.encode(prompt).unwrap().to_vec(), want, "ids of {prompt:?}");
    }
}

#[test]
fn exclamation_pad_is_id_zero_as_sd2_and_sdxl_second_folders_say() {
    let bang = ClipTokenizer::builtin(BuiltinPad::Exclamation).unwrap();
    let eot = ClipTokenizer::builtin(BuiltinPad::EndOfText).unwrap();
    assert_eq!((bang.bos_id(), bang.eos_id(), bang.pad_id()), (49406, 49407, 0));
    // The fixtures' SD2 and SDXL-second folders (a 1000-token vocabulary, "!" first as in CLIP's)
    // pad with "!" too.
    for folder in ["sd2/tiny-sd2/tokenizer", "sdxl/tiny-sdxl/tokenizer_2"] {
        let from_dir = ClipTokenizer::from_dir(fixtures().join(folder)).unwrap();
        assert_eq!(from_dir.pad_id(), bang.pad_id(), "{folder}");
    }
    // Only the padding differs from SD1.5's.
    for p in prompts() {
        let (a, b) = (bang.encode(&p).unwrap(), eot.encode(&p).unwrap());
        let n = eot.encode_unpadded(&p).unwrap().len().min(75) + 2;
        assert_eq!(a[..n], b[..n], "{p:?}");
        assert!(a[n..].iter().all(|&id| id == 0) && b[n..].iter().all(|&id| id == 49407), "{p:?}");
    }
}
