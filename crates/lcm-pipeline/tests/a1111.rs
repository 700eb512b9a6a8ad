//! Prompts in AUTOMATIC1111's syntax end to end against tests/fixtures/generate_a1111.py's records,
//! whose reference embeddings follow A1111's algorithm (weights, nesting, escapes, BREAK, prompts of
//! several 75-token chunks, a weighted negative prompt with CFG; SDXL's two encoders, pooled embedding
//! from the first chunk, the zeroed empty negative). Where the prompt and the negative prompt have
//! different chunk counts, A1111 runs two UNet calls per step; the record does too, and the loop here
//! limits each half's cross attention to its own tokens. Same seed, same latents (relative L2 < 1e-3)
//! and 8-bit image (within 1/255 on average).

mod common;
#[path = "common/recorded_case.rs"]
mod recorded_case;

use common::{against_record, fixtures};
use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::spec::{Field, Request};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("records/a1111/cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

#[test]
fn a1111_prompts_match_the_recorded_algorithm() {
    let cases = cases();
    assert!(cases.len() >= 5, "{} cases", cases.len());
    // The set covers what the issue asks: a prompt of several chunks, and halves of different lengths.
    assert!(cases.iter().any(|c| c["chunks"].as_u64() >= Some(3) && c["separate_calls"] == true));
    assert!(cases.iter().any(|c| c["model"] == "sdxl/tiny-sdxl" && c["separate_calls"] == true));
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (spec, req) = recorded_case::case(&fixtures(), "a1111", name);
        assert_eq!(req.prompt_syntax, PromptSyntax::A1111, "{name}");
        let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = pipe.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        failures.extend(against_record("a1111", name, &out));
    }
    assert!(failures.is_empty(), "cases off the A1111 reference:\n{}", failures.join("\n"));
}

/// The plain syntax is today's diffusers reading: the same text gives another image, and a long
/// prompt is cut at 75 tokens rather than refused or chunked.
#[test]
fn plain_syntax_reads_the_same_text_as_diffusers() {
    let (spec, req) = recorded_case::case(&fixtures(), "a1111", "sd_weighted");
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let a1111 = pipe.generate(&req, &mut |_| {}).unwrap();
    let plain = pipe.generate(&Request { prompt_syntax: PromptSyntax::Plain, ..req.clone() }, &mut |_| {}).unwrap();
    assert!(lcm_core::rel_l2(&a1111.latents.data, &plain.latents.data) > 1e-2);
    let long = Request { prompt: "a cat, ".repeat(200), prompt_syntax: PromptSyntax::Plain, ..req };
    pipe.generate(&long, &mut |_| {}).unwrap();
}

/// A prompt too long for the loop is refused before any work, naming the prompt; a batch of A1111
/// prompts of different lengths is refused naming the batch.
#[test]
fn overlong_prompts_and_mixed_lengths_are_named() {
    let (spec, req) = recorded_case::case(&fixtures(), "a1111", "sd_weighted");
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let huge = Request { prompt: "cat ".repeat(75 * lcm_pipeline::prompt::MAX_CHUNKS + 1), ..req.clone() };
    let e = pipe.generate(&huge, &mut |_| {}).err().unwrap();
    assert_eq!(Field::of(&e), Some(Field::Prompt), "{e}");
    let neg = Request { negative_prompt: Some("cat ".repeat(10_000)), guidance_scale: 2.0, ..req.clone() };
    let e = pipe.generate(&neg, &mut |_| {}).err().unwrap();
    assert_eq!(Field::of(&e), Some(Field::NegativePrompt), "{e}");
    let two = Request { prompt: "dog ".repeat(100), ..req.clone() };
    let e = pipe.generate_batch(&[req, two], &mut |_| {}, None).err().unwrap();
    assert!(e.to_string().contains("75-token chunks"), "{e}");
}
