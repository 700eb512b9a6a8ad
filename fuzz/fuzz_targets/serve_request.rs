//! `lcm serve`'s request bodies, through the parser the server runs before queueing a request
//! (`lcm_serve::parse_request`): the first byte picks the endpoint (OpenAI images, A1111 txt2img,
//! A1111 img2img), the rest is the body. Limits are the CLI's defaults; one LoRA name is known, so
//! `loras` and `<lora:NAME:SCALE>` resolve as well as fail. A request that parses must ask for what the
//! limits allow.
#![no_main]
use std::collections::BTreeMap;
use std::path::PathBuf;

use lcm_serve::{parse_request, Api, Limits, LoraDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let api = [Api::OpenAi, Api::Txt2Img, Api::Img2Img][which as usize % 3];
    let limits = Limits {
        max_body_bytes: 32 << 20,
        max_prompt_chars: 4000,
        size: lcm_pipeline::spec::SizeRule::up_to("max_side", 1024).unwrap(),
        max_images: 8,
        max_steps: 50,
        max_loras: 8,
    };
    let files = BTreeMap::from([("style".to_string(), PathBuf::from("/nonexistent/style.safetensors"))]);
    let loras = LoraDir { dir: Some(PathBuf::from("/nonexistent")), files };
    if let Ok(g) = parse_request(api, body, &limits, &loras) {
        assert!(g.images() <= limits.max_images, "{} images past the limit", g.images());
        assert!(g.loras.len() <= limits.max_loras);
        for r in &g.reqs {
            assert!(r.width <= limits.size.max() && r.height <= limits.size.max() && r.width % 8 == 0);
            assert!((1..=limits.max_steps).contains(&r.steps));
            assert!(r.prompt.chars().count() <= limits.max_prompt_chars);
        }
    }
});
