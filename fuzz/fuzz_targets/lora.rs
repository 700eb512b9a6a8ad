//! A LoRA file (kohya with diffusers or LDM module names, peft with header alphas) through
//! `LoraFile::open`, then resolved against the tiny fixture's UNet and text encoder and merged.
#![no_main]
use std::sync::OnceLock;

use lcm_models::{ClipConfig, UnetConfig};
use lcm_pipeline::lora::{LoraFile, LoraSet, Targets};
use libfuzzer_sys::fuzz_target;

fn targets() -> &'static Targets {
    static T: OnceLock<Targets> = OnceLock::new();
    T.get_or_init(|| {
        let f = lcm_fuzz::fixtures().join("tiny-sd");
        let unet = UnetConfig::from_file(&f.join("unet/config.json")).unwrap();
        let clip = ClipConfig::from_file(&f.join("text_encoder/config.json"), 0).unwrap();
        Targets::for_models(&unet, &clip).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = lcm_fuzz::safetensors_bytes(data) else { return };
    let path = lcm_fuzz::write("lora.safetensors", &bytes);
    let Ok(file) = LoraFile::open(&path, 0.5) else { return };
    let set = LoraSet::new(vec![file]);
    let targets = targets();
    let Ok(mut merger) = set.resolve(targets) else { return };
    let mut buf = Vec::new();
    for spec in targets.unet.iter().chain(&targets.text_encoder) {
        let n: usize = spec.shape.iter().product();
        buf.clear();
        buf.resize(n, 0.25f32);
        let _ = merger.apply(spec, &mut buf);
    }
    let _ = merger.finish();
});
