//! SDXL's models against transformers/diffusers on the CPU in f32 (relative L2 < 1e-4), on the tiny
//! SDXL-structured fixtures of tests/fixtures/generate_sdxl.py: both text encoders as
//! StableDiffusionXLPipeline reads them (penultimate hidden states without the final LayerNorm, with
//! and without clip_skip; text_encoder_2's projected pooled output), and the three UNets (SDXL's
//! structure with the text_time added embedding; an LCM-SDXL UNet with a guidance embedding; SSD-1B's
//! per-layer depths, own up path and resnet-only mid block).

mod common;

use common::{assert_close, fixtures, record, tensor};
use lcm_cpu::CpuBackend;
use lcm_models::arch::clip::{output, ClipOutput};
use lcm_models::{AddedCond, ClipConfig, ClipTextModel, LoadOptions, Unet};

const TOL: f64 = 1e-4;

fn encoder(dir: &str, skip: usize) -> ClipTextModel<CpuBackend> {
    let dir = fixtures().join("sdxl/tiny-sdxl").join(dir);
    let cfg = ClipConfig::from_file(&dir.join("config.json"), skip).unwrap().with_output(ClipOutput::Penultimate);
    ClipTextModel::load_as(&CpuBackend::new(), cfg, &dir, LoadOptions::default()).unwrap()
}

#[test]
fn both_text_encoders_match_transformers_as_sdxl_reads_them() {
    let rec = record("sdxl/models.safetensors");
    let be = CpuBackend::new();
    for (dir, ids, prefix) in [("text_encoder", "input_ids", "te1"), ("text_encoder_2", "input_ids_2", "te2")] {
        let ids: Vec<i32> = tensor(&rec, ids).data.iter().map(|&x| x as i32).collect();
        for skip in [0, 1] {
            let mut te = encoder(dir, skip);
            let outs = te.forward_outputs(&be, &ids, 2).unwrap();
            let want = tensor(&rec, &format!("{prefix}_hidden_m{}", skip + 2));
            assert_eq!(outs[output::CONTEXT].shape, want.shape);
            assert_close(&format!("{dir} hidden_states[-{}]", skip + 2), &outs[output::CONTEXT].data, &want.data, TOL);
            // The negative prompt's states are hidden_states[-2] whatever clip_skip says.
            let m2 = tensor(&rec, &format!("{prefix}_hidden_m2"));
            assert_close(
                &format!("{dir} negative (clip_skip {skip})"),
                &outs[output::NEGATIVE_CONTEXT].data,
                &m2.data,
                TOL,
            );
        }
    }
    let ids: Vec<i32> = tensor(&rec, "input_ids_2").data.iter().map(|&x| x as i32).collect();
    let pooled = encoder("text_encoder_2", 0).text_embeds(&be, &ids, 2).unwrap();
    let want = tensor(&rec, "te2_text_embeds");
    assert_eq!(pooled.shape, want.shape);
    assert_close("text_encoder_2 text_embeds", &pooled.data, &want.data, TOL);
}

#[test]
fn pooled_position_follows_transformers_rule() {
    let cfg = encoder("text_encoder_2", 0).config;
    assert_eq!(cfg.eos_token_id, 2, "SDXL's legacy eos_token_id: the argmax id");
    assert_eq!(cfg.pooled_position(&[998, 5, 999, 0, 0, 999]), 2);
    let other = ClipConfig { eos_token_id: 7, ..cfg };
    assert_eq!(other.pooled_position(&[998, 7, 999, 7]), 1, "the first eos_token_id");
}

#[test]
fn sdxl_lcm_sdxl_and_ssd_unets_match_diffusers() {
    let rec = record("sdxl/models.safetensors");
    let be = CpuBackend::new();
    for (name, folder) in [("unet", "tiny-sdxl"), ("unet_lcm", "tiny-lcm-sdxl"), ("unet_ssd", "tiny-ssd")] {
        let mut unet =
            Unet::load(&be, &fixtures().join("sdxl").join(folder).join("unet"), LoadOptions::default()).unwrap();
        let get = |k: &str| tensor(&rec, &format!("{name}_{k}"));
        let sample = get("sample");
        let t = get("timestep").data[0];
        let cond = unet.config.time_cond_proj_dim.map(|_| get("timestep_cond"));
        let (text_embeds, time_ids) = (get("text_embeds"), get("time_ids"));
        let added = AddedCond { text_embeds: &text_embeds, time_ids: &time_ids };
        let out = unet
            .forward_added(
                &be,
                &sample,
                &vec![t; sample.shape[0]],
                &get("encoder_hidden_states"),
                cond.as_ref(),
                Some(added),
            )
            .unwrap();
        let want = get("out");
        assert_eq!(out.shape, want.shape);
        assert_close(&format!("{folder} UNet"), &out.data, &want.data, TOL);
        let err = unet.forward(&be, &sample, &[t; 2], &get("encoder_hidden_states"), cond.as_ref()).unwrap_err();
        assert!(err.to_string().contains("text_time"), "{err}");
    }
}
