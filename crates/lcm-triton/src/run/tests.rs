use std::path::Path;

use lcm::{Device, Engine};
use lcm_pipeline::spec::{LoadSpec, Request};

use super::*;

fn engine() -> Engine {
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd");
    Engine::load(Device::Cpu, LoadSpec { model_dir, ..LoadSpec::default() }).unwrap().0
}

fn req(seed: u64, steps: usize) -> Request {
    Request { prompt: format!("a fox {seed}"), seed, steps, width: 64, height: 64, ..Request::default() }
}

fn alone(engine: &mut Engine, r: &Request) -> Vec<u8> {
    engine.generate_with(r, &mut |_| {}, None).unwrap().rgb8(0)
}

#[test]
fn batched_requests_get_their_own_images_and_a_bad_one_only_its_error() {
    let mut engine = engine();
    let bad = Request { width: 60, ..req(9, 2) };
    let parsed = vec![Ok(vec![req(1, 2)]), Ok(vec![bad]), Ok(vec![req(2, 2), req(3, 2)]), Ok(vec![req(4, 3)])];
    let answers = run(&mut engine, parsed, 8);
    assert_eq!(answers.len(), 4);
    let err = answers[1].as_ref().unwrap_err().to_string();
    assert!(err.starts_with("input 'width': 60"), "{err}");
    for (answer, seeds) in
        [(&answers[0], vec![(1, 2)]), (&answers[2], vec![(2, 2), (3, 2)]), (&answers[3], vec![(4, 3)])]
    {
        let images = answer.as_ref().unwrap();
        assert_eq!((images.width, images.height, images.rgb.len()), (64, 64, seeds.len()));
        for (rgb, (seed, steps)) in images.rgb.iter().zip(seeds) {
            assert_eq!(rgb, &alone(&mut engine, &req(seed, steps)), "seed {seed}");
        }
    }
}

#[test]
fn groups_follow_the_batching_rule_and_the_image_limit() {
    let ok = |v: Vec<Request>| (0, v);
    let reqs = vec![ok(vec![req(1, 2)]), ok(vec![req(2, 3)]), ok(vec![req(3, 2), req(4, 2)]), ok(vec![req(5, 2)])];
    assert_eq!(groups(&reqs, 8), vec![vec![0, 2, 3], vec![1]]);
    assert_eq!(groups(&reqs, 3), vec![vec![0, 2], vec![1], vec![3]]);
}

#[test]
fn one_requests_rows_must_share_a_size() {
    let mut engine = engine();
    let answers = run(&mut engine, vec![Ok(vec![req(1, 2), Request { width: 128, ..req(2, 2) }])], 8);
    let err = answers[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("input 'width'") && err.contains("share a size"), "{err}");
}
