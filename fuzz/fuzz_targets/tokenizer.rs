//! The CLIP tokenizer (the fixture's vocab.json + merges.txt) on arbitrary bytes: valid UTF-8 as is,
//! anything else as the lossy string the CLI would get from an OS argument.
#![no_main]
use std::sync::OnceLock;

use lcm_pipeline::tokenizer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static T: OnceLock<ClipTokenizer> = OnceLock::new();
    T.get_or_init(|| ClipTokenizer::from_dir(lcm_fuzz::fixtures().join("tiny-sd/tokenizer")).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tok = tokenizer();
    if let Ok(ids) = tok.encode(&text) {
        assert_eq!(ids[0], tok.bos_id());
        assert!(ids.contains(&tok.eos_id()));
    }
    let _ = tok.is_truncated(&text);
});
