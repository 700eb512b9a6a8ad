//! Tiled VAE decoding and encoding equal diffusers' `enable_tiling()` (tests/fixtures/generate_tiling.py:
//! 32-pixel tiles on the tiny-sd VAE, so the shapes hold several rows and columns of tiles, partial edge
//! tiles and both blend directions).

mod common;

use common::{assert_close, fixtures, record, tensor};
use lcm_core::Tensor;
use lcm_cpu::CpuBackend;
use lcm_models::{LoadOptions, Vae, VaeParts, VaeTiling};

const TOL: f64 = 1e-4;

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn tiled_decode_and_encode_match_diffusers() {
    let rec = record("vae_tiling.safetensors");
    let be = CpuBackend::new();
    let mut vae = Vae::load(&be, &fixtures().join("tiny-sd/vae"), VaeParts::Both, LoadOptions::default()).unwrap();
    let tiling = VaeTiling::new(&vae.config, Some(32)).unwrap();

    let z = tensor(&rec, "decode_in");
    let want = tensor(&rec, "decode_out");
    let out = vae.decode_tiled(&be, &z, tiling).unwrap();
    assert_eq!(out.shape, want.shape);
    assert_close(&format!("tiled vae decode {:?}", z.shape), &out.data, &want.data, TOL);
    // The record must be one tiling changes: an untiled decode is far from it.
    let untiled = vae.decode(&be, &z).unwrap();
    assert!(rel_l2(&untiled.data, &want.data) > 100.0 * TOL, "the tiled record equals an untiled decode");

    let x = tensor(&rec, "encode_in");
    let want = tensor(&rec, "encode_moments");
    let moments: Tensor = vae.encode_moments_tiled(&be, &x, tiling).unwrap();
    assert_eq!(moments.shape, want.shape);
    assert_close(&format!("tiled vae encode {:?}", x.shape), &moments.data, &want.data, TOL);
    let untiled = vae.encode_moments(&be, &x).unwrap();
    assert!(rel_l2(&untiled.data, &want.data) > 100.0 * TOL, "the tiled record equals an untiled encode");
}

/// Inputs no larger than one tile run untiled, as diffusers' size check says.
#[test]
fn inputs_within_one_tile_are_not_tiled() {
    let rec = record("vae_tiling.safetensors");
    let be = CpuBackend::new();
    let mut vae = Vae::load(&be, &fixtures().join("tiny-sd/vae"), VaeParts::Decoder, LoadOptions::default()).unwrap();
    let z = tensor(&rec, "decode_in");
    let tiling = VaeTiling::new(&vae.config, Some(16 * 8)).unwrap(); // 16 latents: z is 10 x 13
    assert_eq!(vae.decode_tiled(&be, &z, tiling).unwrap(), vae.decode(&be, &z).unwrap());
}

/// Tiling is AutoencoderKL's: a TAESD is refused by name, not tiled by the wrong scheme.
#[test]
fn taesd_is_not_tiled() {
    let be = CpuBackend::new();
    let vae = Vae::load(&be, &fixtures().join("taesd"), VaeParts::Decoder, LoadOptions::default()).unwrap();
    let e = VaeTiling::new(&vae.config, None).unwrap_err().to_string();
    assert!(e.starts_with("vae_tiling: ") && e.contains("TAESD"), "{e}");
}

/// A tile size that does not split into whole quarters of latents is refused, naming the rule.
#[test]
fn tile_sizes_must_be_multiples_of_four_latents() {
    let be = CpuBackend::new();
    let vae = Vae::load(&be, &fixtures().join("tiny-sd/vae"), VaeParts::Decoder, LoadOptions::default()).unwrap();
    for bad in [0, 16, 40, 100] {
        let e = VaeTiling::new(&vae.config, Some(bad)).unwrap_err().to_string();
        assert!(e.contains("multiple of 32") && e.contains(&format!("{bad} pixels")), "{bad}: {e}");
    }
    // The config's sample_size (64 in the fixture) is the default.
    assert_eq!(VaeTiling::new(&vae.config, None).unwrap().tile, 64);
}

/// Tiled decoding's memory is bounded by tiles, not by the image: the decoder's arenas (one per tile
/// shape: full, right edge, bottom edge, corner) sum to at most four full-tile arenas at any image size,
/// below the arena of one untiled decode.
#[test]
fn tiled_decode_memory_is_bounded_by_the_tile() {
    let be = CpuBackend::new();
    let dir = fixtures().join("tiny-sd/vae");
    let load = || Vae::load(&be, &dir, VaeParts::Decoder, LoadOptions::default()).unwrap();
    let arena = |vae: &Vae<CpuBackend>| vae.decoder_runner().arenas().iter().map(|(_, b)| b).sum::<usize>();
    let latents =
        |n: usize| Tensor::new(vec![1, 4, n, n], (0..4 * n * n).map(|i| ((i % 7) as f32 - 3.0) / 3.0).collect());

    let mut one_tile = load();
    one_tile.decode(&be, &latents(4)).unwrap();
    let tile_arena = arena(&one_tile);
    for n in [10, 33] {
        let mut tiled = load();
        let tiling = VaeTiling::new(&tiled.config, Some(32)).unwrap();
        let out = tiled.decode_tiled(&be, &latents(n), tiling).unwrap();
        assert_eq!(out.shape, vec![1, 3, 8 * n, 8 * n]);
        let mut untiled = load();
        untiled.decode(&be, &latents(n)).unwrap();
        let (t, u) = (arena(&tiled), arena(&untiled));
        println!("{n}x{n} latents: tiled arenas {t} B, untiled {u} B, one tile {tile_arena} B");
        assert!(t <= 4 * tile_arena, "{n}: tiled arenas {t} B exceed four tiles' {tile_arena} B");
        assert!(t < u, "{n}: tiled arenas {t} B not below the untiled {u} B");
    }
}
