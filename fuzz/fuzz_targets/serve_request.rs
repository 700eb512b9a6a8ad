//! `lcm serve`'s request bodies, through the parser the server runs before queueing a request
//! (`lcm_serve::parse_request`): the first byte picks the endpoint (OpenAI images, A1111 txt2img,
//! A1111 img2img), the rest is the body. Limits are the CLI's defaults; one LoRA name is known, so
//! `loras` and `<lora:NAME:SCALE>` resolve as well as fail. A request that parses must ask for what the
//! limits allow. Endpoint 3 is `POST /v1/images/edits`: the body is a multipart/form-data body with the
//! boundary `b` (its parser and field checks, `lcm_serve::parse_edits`); endpoint 4 runs img2img through
//! the ControlNet-aware `parse_request_with` (a server without ControlNet files: units are refused).
#![no_main]
use std::collections::BTreeMap;
use std::path::PathBuf;

use lcm_serve::{parse_edits, parse_request, parse_request_with, Api, ControlNetDir, Limits, LoraDir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let which = which as usize % 5;
    let limits = Limits {
        max_body_bytes: 32 << 20,
        max_prompt_chars: 4000,
        size: lcm_pipeline::spec::SizeRule::up_to("max_side", 1024).unwrap(),
        max_images: 8,
        max_steps: 50,
        max_loras: 8,
        sampler: lcm_pipeline::scheduler::SamplerOptions::new(lcm_pipeline::scheduler::SamplerKind::Lcm),
    };
    let files = BTreeMap::from([("style".to_string(), PathBuf::from("/nonexistent/style.safetensors"))]);
    let loras = LoraDir { dir: Some(PathBuf::from("/nonexistent")), files };
    let parsed = match which {
        3 => parse_edits(Some("multipart/form-data; boundary=b"), body, &limits, &loras),
        4 => parse_request_with(Api::Img2Img, body, &limits, &loras, &ControlNetDir::default()),
        k => parse_request([Api::OpenAi, Api::Txt2Img, Api::Img2Img][k], body, &limits, &loras),
    };
    if let Ok(g) = parsed {
        assert!(g.images() <= limits.max_images, "{} images past the limit", g.images());
        assert!(g.loras.len() <= limits.max_loras);
        for r in &g.reqs {
            assert!(r.width <= limits.size.max() && r.height <= limits.size.max() && r.width % 8 == 0);
            assert!((1..=limits.max_steps).contains(&r.steps));
            assert!(r.prompt.chars().count() <= limits.max_prompt_chars);
        }
    }
});
