//! A1111's prompt syntax against A1111's own results: records/a1111_parse.json, written by running
//! AUTOMATIC1111's prompt_parser.py and sd_hijack_clip.py (tests/fixtures/generate_a1111_parse.py).

use std::path::{Path, PathBuf};

use lcm_pipeline::prompt::{
    chunks, parse_attention, target_token_count, token_count, Chunk, TriggerWord, CHUNK_TOKENS, MAX_CHUNKS,
};
use lcm_pipeline::tokenizer::ClipTokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn record() -> Value {
    let path = fixtures().join("records/a1111_parse.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn tokenizer(dir: &str) -> ClipTokenizer {
    ClipTokenizer::from_dir(fixtures().join(dir)).unwrap()
}

#[test]
fn parse_matches_a1111_on_every_recorded_prompt() {
    let record = record();
    let rows = record["parse"].as_array().unwrap();
    assert!(rows.len() >= 40);
    for row in rows {
        let prompt = row["prompt"].as_str().unwrap();
        let ours = parse_attention(prompt);
        if let Some(error) = row.get("error") {
            let err = ours.expect_err(prompt).to_string();
            // A1111 fails on the same weight; our message names it.
            let weight = error.as_str().unwrap().rsplit(": ").next().unwrap().trim_matches('\'');
            assert!(err.contains(&format!("`{weight}`")), "{prompt:?}: {err}");
            continue;
        }
        let ours = ours.unwrap_or_else(|e| panic!("{prompt:?}: {e}"));
        let theirs: Vec<(String, f64)> = row["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_str().unwrap().to_string(), pair[1].as_f64().unwrap()))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{prompt:?}: ours {ours:?}, A1111 {theirs:?}");
        for ((text, weight), (their_text, their_weight)) in ours.iter().zip(&theirs) {
            assert_eq!(text, their_text, "{prompt:?}: ours {ours:?}, A1111 {theirs:?}");
            assert!(
                (weight - their_weight).abs() <= 1e-6 * their_weight.abs(),
                "{prompt:?}: weight {weight} vs A1111's {their_weight}"
            );
        }
    }
}

/// Trigger vectors get ids no vocabulary has, so each is visible in the chunk.
fn trigger_vector(trigger: usize, k: usize) -> u32 {
    60_000 + 100 * trigger as u32 + k as u32
}

#[test]
fn chunks_match_a1111_on_every_recorded_case() {
    let record = record();
    let cases = record["chunks"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tok = tokenizer(case["tokenizer"].as_str().unwrap());
        let prompt = case["prompt"].as_str().unwrap();
        let triggers: Vec<TriggerWord> = case["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let tokens: Vec<u32> =
                    t["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
                // A1111 registers the name with the same tokenizer call.
                assert_eq!(tok.encode_unpadded(t["name"].as_str().unwrap()).unwrap(), tokens, "{name}");
                let n = t["vectors"].as_u64().unwrap() as usize;
                TriggerWord { tokens, vectors: (0..n).map(|k| trigger_vector(i, k)).collect() }
            })
            .collect();

        let ours = chunks(&tok, prompt, &triggers).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = case["chunks"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: chunk count");
        for (c, (chunk, their)) in ours.iter().zip(theirs).enumerate() {
            let mut ids: Vec<u32> =
                their["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            // A1111 places 0 and patches the embedding in at each fix's offset (after BOS).
            for fix in their["fixes"].as_array().unwrap() {
                let (offset, trigger) = (fix[0].as_u64().unwrap() as usize, fix[1].as_u64().unwrap() as usize);
                for (k, &v) in triggers[trigger].vectors.iter().enumerate() {
                    ids[1 + offset + k] = v;
                }
            }
            let weights: Vec<f32> =
                their["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            assert_eq!(chunk.ids.to_vec(), ids, "{name}: chunk {c} ids");
            // Bit-exact: the same f64 products rounded once to f32, as torch.asarray does.
            assert_eq!(chunk.weights.to_vec(), weights, "{name}: chunk {c} weights");
        }
        let count = token_count(&tok, prompt, &triggers).unwrap();
        assert_eq!(count, case["token_count"].as_u64().unwrap() as usize, "{name}: token count");
    }
}

fn cats(n: usize) -> String {
    vec!["cat"; n].join(" ")
}

fn body(chunk: &Chunk, eos: u32) -> Vec<u32> {
    chunk.ids[1..].iter().copied().take_while(|&id| id != eos).collect()
}

#[test]
fn chunk_boundaries_breaks_and_the_comma_back_off() {
    let tok = tokenizer("tiny-sd/tokenizer");
    let (bos, eos) = (tok.bos_id(), tok.eos_id());
    let cat = tok.encode_unpadded("cat").unwrap()[0];
    let comma = tok.encode_unpadded(",").unwrap()[0];

    let one = chunks(&tok, &cats(75), &[]).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].ids[0], one[0].ids[75], one[0].ids[76]), (bos, cat, eos));
    assert_eq!(chunks(&tok, &cats(76), &[]).unwrap().len(), 2);
    assert_eq!(chunks(&tok, &cats(151), &[]).unwrap().len(), 3);

    let empty = chunks(&tok, "", &[]).unwrap();
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].ids[0], bos);
    assert!(empty[0].ids[1..].iter().all(|&id| id == eos) && empty[0].weights.iter().all(|&w| w == 1.0));

    let broken = chunks(&tok, "cat BREAK cat cat", &[]).unwrap();
    assert_eq!((body(&broken[0], eos).len(), body(&broken[1], eos).len()), (1, 2));

    // A comma 15 tokens before the boundary: the 14 tokens after it move on.
    let within = chunks(&tok, &format!("{} , {}", cats(60), cats(20)), &[]).unwrap();
    assert_eq!(body(&within[0], eos).len(), 61);
    assert_eq!(body(&within[0], eos)[60], comma);
    assert_eq!(body(&within[1], eos).len(), 20);
    // 25 tokens before it: nothing moves.
    let beyond = chunks(&tok, &format!("{} , {}", cats(50), cats(30)), &[]).unwrap();
    assert_eq!(body(&beyond[0], eos).len(), 75);
    assert_eq!(body(&beyond[1], eos).len(), 6);
}

#[test]
fn weights_are_carried_to_every_token_of_their_fragment() {
    let tok = tokenizer("tiny-sd/tokenizer");
    let c = chunks(&tok, "(cat cat:1.5) [dog] bird", &[]).unwrap();
    let w = c[0].weights;
    assert_eq!(&w[..5], &[1.0, 1.5, 1.5, (1.0f64 / 1.1) as f32, 1.0]);
    assert!(w[5..].iter().all(|&x| x == 1.0));
}

#[test]
fn triggers_place_their_vectors_and_move_whole_to_the_next_chunk() {
    let tok = tokenizer("tiny-sd/tokenizer");
    let eos = tok.eos_id();
    let style = TriggerWord { tokens: tok.encode_unpadded("mystyle").unwrap(), vectors: vec![60_000, 60_001, 60_002] };
    let c = chunks(&tok, "a (mystyle:1.2) cat", std::slice::from_ref(&style)).unwrap();
    assert_eq!(&c[0].ids[2..5], &[60_000, 60_001, 60_002]);
    assert_eq!(&c[0].weights[2..5], &[1.2, 1.2, 1.2]);

    // 73 tokens and 3 vectors do not fit in 75: the block starts the next chunk.
    let c = chunks(&tok, &format!("{} mystyle", cats(73)), std::slice::from_ref(&style)).unwrap();
    assert_eq!(body(&c[0], eos).len(), 73);
    assert_eq!(body(&c[1], eos), [60_000, 60_001, 60_002]);

    // Unlike A1111 (whose fix stays behind), a trigger moved by the comma back-off keeps its vectors.
    let c = chunks(&tok, &format!("{} , mystyle {}", cats(65), cats(20)), std::slice::from_ref(&style)).unwrap();
    assert_eq!(&body(&c[1], eos)[..3], &[60_000, 60_001, 60_002]);

    let bad = TriggerWord { tokens: vec![], vectors: vec![1] };
    assert!(chunks(&tok, "cat", &[bad]).unwrap_err().to_string().contains("trigger word 0"));
    let huge = TriggerWord { tokens: vec![1], vectors: vec![1; CHUNK_TOKENS + 1] };
    assert!(chunks(&tok, "cat", &[huge]).unwrap_err().to_string().contains("76 vectors"));
}

#[test]
fn sd2_pads_with_its_pad_token_after_the_first_eos() {
    let tok = tokenizer("sd2/tiny-sd2/tokenizer");
    assert_eq!(tok.pad_id(), 0, "tiny-sd2 pads with \"!\", A1111's OpenCLIP id_pad");
    let c = chunks(&tok, "the day", &[]).unwrap();
    let eos = tok.eos_id();
    assert_eq!(c[0].ids[3], eos);
    assert!(c[0].ids[4..].iter().all(|&id| id == 0));
    let sd15 = tokenizer("tiny-sd/tokenizer");
    assert_eq!(sd15.pad_id(), sd15.eos_id(), "SD1.5: A1111's id_pad is id_end");
}

#[test]
fn too_many_chunks_are_refused_naming_the_prompt_length() {
    let tok = tokenizer("tiny-sd/tokenizer");
    assert_eq!(chunks(&tok, &cats(MAX_CHUNKS * CHUNK_TOKENS), &[]).unwrap().len(), MAX_CHUNKS);
    let n = MAX_CHUNKS * CHUNK_TOKENS + 1;
    let err = chunks(&tok, &cats(n), &[]).unwrap_err().to_string();
    assert!(err.contains(&format!("prompt of {n} tokens needs {} chunks of 75", MAX_CHUNKS + 1)), "{err}");
    assert!(err.contains(&format!("at most {MAX_CHUNKS}")), "{err}");

    let err = chunks(&tok, &format!("({}:{})", "cat", "9".repeat(400)), &[]).unwrap_err().to_string();
    assert!(err.contains("finite"), "{err}");
}

#[test]
fn token_counts_as_a1111_shows_them() {
    let tok = tokenizer("tiny-sd/tokenizer");
    assert_eq!(token_count(&tok, "a photo of a cat", &[]).unwrap(), 5);
    assert_eq!(target_token_count(0), 75);
    assert_eq!(target_token_count(75), 75);
    assert_eq!(target_token_count(76), 150);
}
