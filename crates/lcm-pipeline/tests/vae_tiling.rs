//! `Pipeline::set_vae_tiling` against diffusers' `pipe.enable_vae_tiling()` (tests/fixtures/generate_tiling.py:
//! tiny-lcm, 32-pixel tiles): txt2img (tiled decode) and img2img (tiled encode too) give diffusers' image,
//! mean absolute difference < 1/255 as in e2e.rs.

mod common;

use common::fixtures;

use lcm_core::SafeTensorsFile;
use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, Request};

fn recorded(name: &str) -> (Vec<usize>, Vec<f32>) {
    let f = SafeTensorsFile::open(fixtures().join("records/vae_tiling.safetensors")).unwrap();
    let v = f.get(name).unwrap();
    (v.shape.to_vec(), v.to_f32())
}

fn mean_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum::<f64>() / a.len() as f64
}

fn request(width: usize, height: usize, steps: usize, seed: u64) -> Request {
    Request { prompt: "a photo of a cat".into(), steps, guidance_scale: 8.0, seed, width, height, ..Request::default() }
}

#[test]
fn tiled_pipeline_matches_diffusers_enable_vae_tiling() {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-lcm"), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let (rgb_w, rgb_h, rgb, _) = read_png(&fixtures().join("images/init_96x64.png")).unwrap();
    let img2img = Request {
        init_image: Some(InitImage::from_rgb8(rgb_w, rgb_h, &rgb, 0.5).unwrap()),
        ..request(rgb_w, rgb_h, 4, 11)
    };
    let cases = [("pipeline_image", request(128, 64, 2, 7)), ("img2img_image", img2img)];

    for (name, req) in &cases {
        let (shape, want) = recorded(name);
        pipe.set_vae_tiling(Some(Some(32))).unwrap();
        let tiled = pipe.generate(req, &mut |_| {}).unwrap().images;
        assert_eq!(tiled.shape, shape, "{name}");
        let d = mean_abs(&tiled.data, &want);
        println!("{name}: mean |diff| {d:.2e} (tolerance {:.2e})", 1.0 / 255.0);
        assert!(d < 1.0 / 255.0, "{name}: mean |diff| {d:.3e} vs diffusers with tiling");
        // Tiling must matter at this tile size, or the comparison proves nothing.
        pipe.set_vae_tiling(None).unwrap();
        let plain = pipe.generate(req, &mut |_| {}).unwrap().images;
        assert!(mean_abs(&plain.data, &want) > 4.0 / 255.0, "{name}: the untiled image is as close as the tiled one");
    }
}

#[test]
fn a_tile_size_off_the_latent_grid_is_refused() {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-lcm"), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let e = pipe.set_vae_tiling(Some(Some(48))).unwrap_err().to_string();
    assert!(e.starts_with("vae_tile_size: ") && e.contains("48 pixels") && e.contains("multiple of 32"), "{e}");
}
