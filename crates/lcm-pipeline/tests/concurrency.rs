//! Several pipelines in several threads of one process give the images sequential runs give, bit for
//! bit; a pipeline moves between threads (`Send`) by construction.

mod common;

use common::fixtures;

use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_image_rgb8;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, LoraSpec, Request};

fn assert_send<T: Send>() {}

/// Pipeline `k`'s LoRAs and requests: each thread runs a different model setup and mix.
fn job(k: usize) -> (Vec<LoraSpec>, Vec<Request>) {
    let loras = match k % 3 {
        0 => vec![],
        1 => vec![LoraSpec { path: fixtures().join("loras/lora_kohya.safetensors"), scale: 1.0 }],
        _ => vec![LoraSpec { path: fixtures().join("loras/lora_peft.safetensors"), scale: 0.7 }],
    };
    let (w, h, rgb) = read_image_rgb8(&fixtures().join("images/init_64x64.png")).unwrap();
    let reqs = (0..3)
        .map(|i| Request {
            prompt: format!("thread {k} request {i}"),
            // img2img at strength 0.5 runs int(steps·0.5) steps: at least 2.
            steps: if i == 2 { 2 + k % 3 } else { 1 + (k + i) % 3 },
            seed: (100 * k + i) as u64,
            width: [64, 96][(k + i) % 2],
            height: 64,
            guidance_scale: if i == 1 { 2.0 } else { 1.0 },
            init_image: (i == 2).then(|| InitImage::from_rgb8(w, h, &rgb, 0.5).unwrap()),
            ..Default::default()
        })
        .map(|r| if r.init_image.is_some() { Request { width: w, height: h, ..r } } else { r })
        .collect();
    (loras, reqs)
}

fn run(k: usize) -> Vec<Vec<f32>> {
    let (loras, reqs) = job(k);
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), loras, ..Default::default() };
    let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap();
    reqs.iter().map(|r| p.generate(r, &mut |_| {}).unwrap().images.data).collect()
}

#[test]
fn threads_give_the_images_sequential_runs_give() {
    assert_send::<Pipeline<CpuBackend>>();
    const THREADS: usize = 4;
    let sequential: Vec<_> = (0..THREADS).map(run).collect();
    let threaded: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS).map(|k| s.spawn(move || run(k))).collect();
        handles.into_iter().map(|h| h.join().expect("thread panicked")).collect()
    });
    for (k, (a, b)) in sequential.iter().zip(&threaded).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(x.iter().all(|v| v.is_finite()));
            let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "thread {k} request {i}: the threaded image differs from the sequential one");
        }
    }
    // And one pipeline handed from thread to thread gives them too.
    let (loras, reqs) = job(1);
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), loras, ..Default::default() };
    let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let img = std::thread::scope(|s| s.spawn(|| p.generate(r, &mut |_| {}).unwrap().images.data).join().unwrap());
        assert_eq!(img, sequential[1][i], "moved pipeline, request {i}");
    }
}
