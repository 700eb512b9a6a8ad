//! A single-file checkpoint (LDM key names, SD1.5 or SDXL) through `Checkpoint::open`, the architecture
//! inferred from its shapes and checked; and the same file as a separate VAE (`VaeFile`).
#![no_main]
use lcm_models::{Checkpoint, VaeFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = lcm_fuzz::safetensors_bytes(data) else { return };
    let path = lcm_fuzz::write("model.safetensors", &bytes);
    if let Ok(ck) = Checkpoint::open(&path) {
        let unet = ck.infer_unet();
        let clip = ck.infer_text_encoder(0);
        let _ = ck.infer_text_encoder(1);
        // SDXL's second encoder (OpenCLIP-bigG, LDM names); an SD1.5 file gets an error here.
        let clip_2 = ck.is_sdxl().then(|| ck.infer_text_encoder_2(0));
        let vae = ck.infer_vae(0.18215, None);
        if let (Ok(u), Ok(c), Ok(v)) = (unet, clip, vae) {
            match clip_2 {
                Some(Ok(c2)) => drop(ck.check(&u, &c, Some(&c2), v.as_ref())),
                Some(Err(_)) => {}
                None => drop(ck.check(&u, &c, None, v.as_ref())),
            }
            let _ = u.graph(1, 8, 8, 4);
        }
    }
    if let Ok(vf) = VaeFile::open(&path) {
        if let Ok(cfg) = vf.infer(0.18215, None) {
            let _ = vf.check(&cfg);
        }
    }
});
