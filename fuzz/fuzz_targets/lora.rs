//! A LoRA file (kohya with diffusers or LDM module names, peft with header alphas) through
//! `LoraFile::open`, then resolved against the tiny SD1.5 fixture (UNet, text encoder) and the tiny SDXL
//! one (UNet, both text encoders) and merged.
#![no_main]
use std::sync::OnceLock;

use lcm_models::{ClipConfig, UnetConfig};
use lcm_pipeline::lora::{LoraFile, LoraSet, Targets};
use libfuzzer_sys::fuzz_target;

fn targets() -> &'static [Targets; 2] {
    static T: OnceLock<[Targets; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let f = lcm_fuzz::fixtures();
        let sd15 = f.join("tiny-sd");
        let unet = UnetConfig::from_file(&sd15.join("unet/config.json")).unwrap();
        let clip = ClipConfig::from_file(&sd15.join("text_encoder/config.json"), 0).unwrap();
        let sdxl = f.join("sdxl/tiny-sdxl");
        let xl_unet = UnetConfig::from_file(&sdxl.join("unet/config.json")).unwrap();
        let xl_clip = ClipConfig::from_file(&sdxl.join("text_encoder/config.json"), 0).unwrap();
        let xl_clip_2 = ClipConfig::from_file(&sdxl.join("text_encoder_2/config.json"), 0).unwrap();
        [Targets::for_models(&unet, &clip).unwrap(), Targets::for_sdxl(&xl_unet, &xl_clip, &xl_clip_2).unwrap()]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = lcm_fuzz::safetensors_bytes(data) else { return };
    let path = lcm_fuzz::write("lora.safetensors", &bytes);
    let Ok(file) = LoraFile::open(&path, 0.5) else { return };
    let set = LoraSet::new(vec![file]);
    for targets in targets() {
        let Ok(merger) = set.resolve(targets) else { continue };
        // Every factor a merge would read, and the shapes `Merger::apply`'s GEMM takes on trust from
        // `resolve`: Δ[out, k] = up[out, r] @ down[r, k]. Not the GEMM itself: merging is arithmetic on
        // checked shapes, and the instrumented GEMM took half of each input's time.
        for spec in targets.unet.iter().chain(&targets.text_encoder).chain(&targets.text_encoder_2) {
            let Ok(factors) = merger.factors(&spec.name) else { continue };
            let elems: usize = spec.shape.iter().product();
            let (out, k) = (spec.shape[0], elems / spec.shape[0]);
            for f in factors {
                assert_eq!((f.up.len(), f.down.len()), (out * f.rank, f.rank * k), "{}", spec.name);
            }
        }
    }
});
