//! `Pipeline::generate_batch` (what `lcm serve` batches its queue with): every request in a batch gets
//! the images it gets alone — its own prompts, its own generator — with and without CFG, up to f32
//! rounding (the CPU GEMM's blocking depends on the batch size), and requests that cannot share a graph
//! (another size, strength or sampler) are refused by name.

use std::path::Path;

use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions};
use lcm_pipeline::spec::{InitImage, LoadSpec, Request};

fn tiny() -> Pipeline<CpuBackend> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
    Pipeline::load(CpuBackend::new(), LoadSpec { model_dir: dir, ..LoadSpec::default() }).unwrap()
}

fn request(prompt: &str, seed: u64, num_images: usize, guidance_scale: f32) -> Request {
    Request {
        prompt: prompt.into(),
        negative_prompt: Some(format!("not {prompt}")),
        steps: 3,
        guidance_scale,
        seed,
        width: 64,
        height: 64,
        num_images,
        sampler: None,
        prompt_syntax: Default::default(),
        controls: Vec::new(),
        init_image: None,
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    assert!(den > 0.0 && num.is_finite());
    (num / den).sqrt()
}

#[test]
fn batched_requests_get_their_own_images() {
    let mut p = tiny();
    for g in [1.0, 2.5] {
        let reqs = [request("a red house", 1, 1, g), request("a cat", 7, 2, g), request("", 3, 1, g)];
        let mut steps = 0;
        let batch = p.generate_batch(&reqs, &mut |_| steps += 1, None).expect("batch");
        assert_eq!((batch.len(), steps), (3, 3));
        for (r, got) in reqs.iter().zip(&batch) {
            let alone = p.generate(r, &mut |_| {}).expect("alone");
            assert_eq!(got.images.shape, alone.images.shape);
            assert_eq!(got.latents.shape, alone.latents.shape);
            // The CPU GEMM's blocking follows the problem's size, so a batch sums in another order:
            // rounding-level differences, never more (a wrong seed or prompt is off by O(1)).
            let rel = rel_l2(&got.latents.data, &alone.latents.data);
            let (a, b): (Vec<u8>, Vec<u8>) = (
                (0..r.num_images).flat_map(|i| got.rgb8(i)).collect(),
                (0..r.num_images).flat_map(|i| alone.rgb8(i)).collect(),
            );
            let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
            println!("g={g} seed={}: latents rel L2 {rel:.1e}, {differing} of {} 8-bit values differ", r.seed, a.len());
            assert!(rel < 1e-5, "g={g} seed={}: batched latents differ (rel L2 {rel:e})", r.seed);
            assert!(
                max <= 1 && differing * 1000 < a.len(),
                "g={g} seed={}: {differing} values differ, by up to {max}",
                r.seed
            );
        }
        assert!(batch[0].images.data != batch[2].images.data, "different seeds gave one image");
    }
}

#[test]
fn mismatched_batches_are_refused() {
    let mut p = tiny();
    let mut other = request("b", 2, 1, 1.0);
    other.width = 72;
    let err = p.generate_batch(&[request("a", 1, 1, 1.0), other], &mut |_| {}, None).err().expect("refused");
    assert!(err.to_string().contains("batch"), "{err}");
    let mut img = request("b", 2, 1, 1.0);
    img.init_image = Some(InitImage::from_rgb8(64, 64, &[128; 64 * 64 * 3], 0.5).unwrap());
    assert!(p.generate_batch(&[request("a", 1, 1, 1.0), img.clone()], &mut |_| {}, None).is_err());
    let mut stronger = img.clone();
    stronger.init_image.as_mut().unwrap().strength = 0.75;
    let err = p.generate_batch(&[img, stronger], &mut |_| {}, None).err().expect("two strengths refused");
    assert!(err.to_string().contains("one strength"), "{err}");
    assert!(p.generate_batch(&[], &mut |_| {}, None).unwrap().is_empty());
    // Two samplers are two graphs: refused by name; one named sampler equal to the default batches.
    let euler = Request { sampler: Some(SamplerOptions::new(SamplerKind::Euler)), ..request("b", 2, 1, 1.0) };
    let err = p.generate_batch(&[request("a", 1, 1, 1.0), euler], &mut |_| {}, None).err().expect("refused");
    assert!(err.to_string().contains("same sampler"), "{err}");
    let lcm = Request { sampler: Some(p.sampler()), ..request("b", 2, 1, 1.0) };
    assert_eq!(p.generate_batch(&[request("a", 1, 1, 1.0), lcm], &mut |_| {}, None).expect("one sampler").len(), 2);
}

/// img2img requests of one strength batch too (`lcm frames`): each keeps its own init image and
/// generator, so it gets its unbatched latents up to the rounding the txt2img batch allows.
#[test]
fn batched_img2img_requests_keep_their_own_init_images() {
    let mut p = tiny();
    let frame = |shade: u8, seed: u64| {
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 251) as u8 ^ shade).collect();
        let mut r = request("a red house", seed, 1, 1.0);
        r.init_image = Some(InitImage::from_rgb8(64, 64, &rgb, 0.7).unwrap());
        r
    };
    let reqs = [frame(0, 4), frame(90, 4), frame(0, 5)];
    let batch = p.generate_batch(&reqs, &mut |_| {}, None).expect("img2img batch");
    for (r, got) in reqs.iter().zip(&batch) {
        let alone = p.generate(r, &mut |_| {}).expect("alone");
        let rel = rel_l2(&got.latents.data, &alone.latents.data);
        assert!(rel < 1e-5, "seed {}: batched img2img latents differ (rel L2 {rel:e})", r.seed);
    }
    // Another image or another seed is another result, not a rounding difference.
    for (a, b) in [(0, 1), (0, 2)] {
        let rel = rel_l2(&batch[a].latents.data, &batch[b].latents.data);
        assert!(rel > 1e-2, "requests {a} and {b} gave one result (rel L2 {rel:e})");
    }
}
