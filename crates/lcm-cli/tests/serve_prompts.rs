//! `lcm serve` reads prompts as its clients write them: the A1111 endpoints in A1111's syntax (weights,
//! BREAK, long prompts), the OpenAI endpoint plainly, each giving `lcm generate --prompt-syntax`'s
//! pixels; `--embeddings-dir` embeddings work in both and `/sdapi/v1/embeddings` lists them (and the
//! files skipped, as A1111 does).

mod serve_util;

use serde_json::{json, Value};
use serve_util::*;

const PROMPT: &str = "a (red:1.3) house, [[dark]] sky BREAK a1111_emb_params";

fn rgb(r: &Resp) -> Vec<u8> {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = r.json();
    let b = j.get("data").map(|d| &d[0]["b64_json"]).unwrap_or(&j["images"][0]).as_str().unwrap().to_string();
    png_rgb(&b).2
}

#[test]
fn a1111_routes_read_a1111_syntax_and_openai_plain_with_embeddings() {
    let dir = fixtures().join("embeddings");
    let dir = dir.to_str().unwrap();
    let s = Server::start("prompts", &["--embeddings-dir", dir]);

    let list = s.get("/sdapi/v1/embeddings");
    assert_eq!(list.status, 200, "{}", list.body_text());
    let list: Value = list.json();
    assert_eq!(list["loaded"]["a1111_emb_params"]["vectors"], 2, "{list}");
    assert_eq!(list["loaded"]["a1111_emb_params"]["shape"], 16, "{list}");
    assert!(list["skipped"].get("sdxl_emb").is_some(), "an SDXL embedding is skipped on SD1.5: {list}");

    let body = json!({"prompt": PROMPT, "seed": 3, "steps": 2, "width": 64, "height": 64}).to_string();
    let a1111 = rgb(&s.post("/sdapi/v1/txt2img", &body));
    let args = ["--prompt", PROMPT, "--seed", "3", "--steps", "2", "--width", "64", "--height", "64"];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--embeddings-dir", dir]);
        v.extend(extra);
        v
    };
    let tiny = fixtures().join("tiny-sd");
    let want = lcm_generate_model("prompts-a1111", &tiny, &with(&["--prompt-syntax", "a1111"]), 1).remove(0);
    assert!(a1111 == want, "A1111 route: pixels differ from lcm generate --prompt-syntax a1111");

    let openai = json!({"prompt": PROMPT, "seed": 3, "steps": 2, "size": "64x64"}).to_string();
    let plain = rgb(&s.post("/v1/images/generations", &openai));
    let want = lcm_generate_model("prompts-plain", &tiny, &with(&[]), 1).remove(0);
    assert!(plain == want, "OpenAI route: pixels differ from lcm generate (plain)");
    assert!(plain != a1111, "the two syntaxes read the prompt differently");

    // A prompt past the chunk limit (each digit is a token: 3900 of them) is the engine's 400 naming
    // the prompt.
    let long = "1".repeat(3900);
    let r = s.post("/sdapi/v1/txt2img", &json!({"prompt": long, "steps": 1, "width": 64, "height": 64}).to_string());
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.body_text().contains("prompt"), "{}", r.body_text());
}
