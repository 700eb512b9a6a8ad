//! The arena plan at full SD1.5 size: no two live tensors share bytes, and the arena is close to the
//! live-set lower bound. Also reports the f16 arena sizes (the DESIGN target: activations ≈ 0.3 GB at
//! 512² batch 1).

use std::path::Path;

use lcm_core::fuse::fuse;
use lcm_core::planner::plan;
use lcm_core::Graph;
use lcm_models::{arch::sd15, ClipConfig, UnetConfig, VaeConfig};

fn check(name: &str, g: Graph) -> usize {
    let ops_before = g.ops.len();
    let g = fuse(g);
    let p = plan(&g, 2);
    assert_eq!(p.overlaps(), None, "{name}: live tensors overlap");
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "{name}: {} ops ({} before fusion), arena {:.1} MiB f16, live-set bound {:.1} MiB ({:.1}% over)",
        g.ops.len(),
        ops_before,
        mib(p.size),
        mib(p.live_peak),
        100.0 * (p.size as f64 / p.live_peak as f64 - 1.0)
    );
    assert!(p.size >= p.live_peak);
    assert!(
        (p.size as f64) < 1.25 * p.live_peak as f64,
        "{name}: arena {} far above the bound {}",
        p.size,
        p.live_peak
    );
    p.size
}

#[test]
fn sd15_plans_are_valid_and_tight() {
    let origin = Path::new("sd15");
    let unet = UnetConfig::from_json(origin, sd15::UNET_CONFIG).unwrap();
    let vae = VaeConfig::from_json(origin, sd15::VAE_CONFIG).unwrap();
    let clip = ClipConfig::from_json(origin, sd15::TEXT_ENCODER_CONFIG, 0).unwrap();
    let total = check("unet 64x64 b1", unet.graph(1, 64, 64, 77).unwrap())
        .max(check("vae decoder 512x512 b1", vae.decoder_graph(1, 64, 64).unwrap()))
        .max(check("clip b1", clip.graph(1, 77).unwrap()));
    check("unet 96x64 b2 (CFG)", unet.graph(2, 96, 64, 77).unwrap());
    assert!(total < 400 << 20, "largest arena at 512² batch 1 is {} MiB", total >> 20);
}

/// `Linear → Geglu` is fused as a graph rewrite on every transformer block of SD1.5's UNet (16), and
/// the plan keeps the fused op's output off its input — what a GEMM writing the GEGLU result needs.
/// The denoising loop graph (4 steps) shares the UNet's weights and fuses every block of every step.
#[test]
fn sd15_geglu_is_fused_on_every_transformer_block() {
    use lcm_core::lcm::Sampling;
    use lcm_core::{Op, Program};
    use lcm_models::denoise::NoiseSteps;
    use lcm_models::denoise::{DenoiseConfig, DenoiseShape};
    let unet = UnetConfig::from_json(Path::new("sd15"), sd15::UNET_CONFIG).unwrap();
    let count = |p: &Program| {
        let mut fused = 0;
        for op in &p.graph.ops {
            assert!(!matches!(op, Op::Geglu { .. }), "an unfused Geglu is left");
            if let Op::Linear { x, geglu: true, out, .. } = *op {
                let (ox, oo) = (p.plan.offsets[x].unwrap(), p.plan.offsets[out].unwrap());
                let (bx, bo) = (p.plan.bytes[x], p.plan.bytes[out]);
                assert!(ox + bx <= oo || oo + bo <= ox, "the fused GEGLU output shares bytes with its input");
                fused += 1;
            }
        }
        fused
    };
    let step = Program::new(unet.graph(1, 64, 64, 77).unwrap(), 2).unwrap();
    assert_eq!(count(&step), 16);
    let d = DenoiseShape {
        images: 1,
        h: 64,
        w: 64,
        ctx_len: 77,
        uncond_ctx_len: None,
        steps: 4,
        sampling: Sampling::LCM,
        noise: NoiseSteps::AllButLast,
        guided: false,
        inpaint: None,
    };
    let cfg = DenoiseConfig { vae_scale: 0.18215, vae_shift: 0.0, context_split: None };
    let lp = Program::new(unet.denoise_graph(&d, &cfg, &[]).unwrap(), 2).unwrap();
    assert_eq!(count(&lp), 4 * 16);
    assert_eq!(lp.graph.weights.len(), step.graph.weights.len(), "the loop shares the UNet's weights");
    println!("denoising loop, 4 steps at 64x64: {} ops, arena {} MiB f16", lp.graph.ops.len(), lp.plan.size >> 20);
}

/// SD2.1 at full size (what `lcm bench --arch sd2` builds): its parameter counts are diffusers' (UNet
/// 865,910,724; the 23-layer text encoder 340,387,840), and its plans at 768² are valid and tight.
#[test]
fn sd2_plans_are_valid_and_tight_and_its_sizes_are_diffusers() {
    use lcm_models::arch::sd2;
    let origin = Path::new("sd2");
    let unet = UnetConfig::from_json(origin, sd2::UNET_CONFIG).unwrap();
    let clip = ClipConfig::from_json(origin, sd2::TEXT_ENCODER_CONFIG, 0).unwrap();
    let numel =
        |specs: Vec<lcm_core::WeightSpec>| specs.iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>();
    assert_eq!(numel(unet.weights().unwrap()), 865_910_724, "SD2.1 UNet parameters");
    assert_eq!(numel(clip.weights().unwrap()), 340_387_840, "SD2.1 text encoder parameters");
    check("sd2 unet 96x96 b1", unet.graph(1, 96, 96, 77).unwrap());
    check("sd2 clip b1", clip.graph(1, 77).unwrap());
}
