//! Control-image preprocessing against what Pillow 13.0.0 and OpenCV 5.0.0 compute
//! (tests/fixtures/records/control_preprocess.safetensors, written by
//! tests/fixtures/generate_control_preprocess.py), and its refusals of bad input.
//!
//! Record names: `image/<name>` [H, W, 3], `resize/<name>/<W>x<H>` [H, W, 3],
//! `canny/<name>/<low>/<high>` [H, W]; all U8.

mod common;

use std::collections::BTreeMap;

use lcm_core::Error;
use lcm_pipeline::control_image::{canny_rgb8, resize_lanczos_rgb8, ControlPreprocess, MAX_SIDE};
use safetensors::Dtype;

/// The record's tensors by name: shape and bytes.
fn records() -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let path = common::fixtures().join("records/control_preprocess.safetensors");
    common::read_tensors(&path)
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            assert_eq!(dtype, Dtype::U8, "{name}");
            (name, (shape, bytes))
        })
        .collect()
}

/// The input image a case refers to: (width, height, bytes).
fn image<'a>(recs: &'a BTreeMap<String, (Vec<usize>, Vec<u8>)>, name: &str) -> (usize, usize, &'a [u8]) {
    let (shape, bytes) = &recs[&format!("image/{name}")];
    assert_eq!(shape.len(), 3);
    assert_eq!(shape[2], 3);
    (shape[1], shape[0], bytes)
}

#[test]
fn lanczos_resize_matches_pillow() {
    let recs = records();
    let mut cases = 0;
    let mut worst = 0u8;
    let mut report = Vec::new();
    for (key, (shape, want)) in recs.iter().filter(|(k, _)| k.starts_with("resize/")) {
        let parts: Vec<&str> = key.split('/').collect();
        let (name, size) = (parts[1], parts[2]);
        let (nw, nh) = size.split_once('x').unwrap();
        let (nw, nh): (usize, usize) = (nw.parse().unwrap(), nh.parse().unwrap());
        assert_eq!(shape, &vec![nh, nw, 3], "{key}");
        let (w, h, rgb) = image(&recs, name);
        let got = resize_lanczos_rgb8(rgb, w, h, nw, nh).unwrap();
        assert_eq!(got.len(), want.len(), "{key}");
        let max = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
        report.push(format!("{key}: {w}x{h} -> {nw}x{nh}: max |diff| {max}, {differing} bytes differ"));
        worst = worst.max(max);
        cases += 1;
    }
    eprintln!("{}", report.join("\n"));
    eprintln!("Lanczos resize: {cases} cases, max |diff| {worst}");
    assert!(cases >= 20, "only {cases} resize cases in the record");
    assert_eq!(worst, 0, "resize differs from Pillow:\n{}", report.join("\n"));
}

#[test]
fn canny_matches_opencv() {
    let recs = records();
    let mut cases = 0;
    let mut failures = Vec::new();
    for (key, (shape, want)) in recs.iter().filter(|(k, _)| k.starts_with("canny/")) {
        let parts: Vec<&str> = key.split('/').collect();
        let (name, low, high) = (parts[1], parts[2].parse::<f64>().unwrap(), parts[3].parse::<f64>().unwrap());
        let (w, h, rgb) = image(&recs, name);
        assert_eq!(shape, &vec![h, w], "{key}");
        let got = canny_rgb8(rgb, w, h, low, high).unwrap();
        let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
        if differing > 0 {
            failures.push(format!("{key}: {differing} of {} pixels differ", w * h));
        }
        // The preprocessor gives the same map in all three channels.
        let rgb_map = ControlPreprocess::Canny { low, high }.apply(rgb, w, h).unwrap();
        assert!(rgb_map.chunks(3).zip(&got).all(|(p, &e)| p == [e, e, e]), "{key}: apply");
        cases += 1;
    }
    eprintln!("Canny: {cases} cases, {} with differing pixels", failures.len());
    assert!(cases >= 40, "only {cases} Canny cases in the record");
    assert!(failures.is_empty(), "Canny differs from OpenCV:\n{}", failures.join("\n"));
}

/// The `what` and message of an [`Error::Invalid`].
fn invalid(e: Error) -> (String, String) {
    match e {
        Error::Invalid { what, msg } => (what, msg),
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[test]
fn parse_accepts_the_documented_forms() {
    let p = |s: &str| s.parse::<ControlPreprocess>().unwrap();
    assert_eq!(p("none"), ControlPreprocess::None);
    assert_eq!(p("NONE"), ControlPreprocess::None);
    assert_eq!(p("canny"), ControlPreprocess::Canny { low: 100.0, high: 200.0 });
    assert_eq!(p("canny:50:100"), ControlPreprocess::Canny { low: 50.0, high: 100.0 });
    assert_eq!(p("canny:200:100"), ControlPreprocess::Canny { low: 200.0, high: 100.0 });
    assert_eq!(p("canny:0:255"), ControlPreprocess::Canny { low: 0.0, high: 255.0 });
    assert_eq!(p("canny: 99.5 : 200.7 "), ControlPreprocess::Canny { low: 99.5, high: 200.7 });
    assert_eq!(p("canny:100:200").to_string(), "canny:100:200");
}

#[test]
fn parse_errors_name_the_field_and_what_was_expected() {
    let cases = [
        ("", "unknown preprocessor"),
        ("sobel", "unknown preprocessor"),
        ("depth:1:2", "unknown preprocessor"),
        ("none:1", "takes no parameters"),
        ("canny:100", "no thresholds or exactly two"),
        ("canny:1:2:3", "no thresholds or exactly two"),
        ("canny::200", "is not a number"),
        ("canny:abc:200", "is not a number"),
        ("canny:100:2OO", "is not a number"),
        ("canny:NaN:200", "outside 0..=255"),
        ("canny:100:inf", "outside 0..=255"),
        ("canny:-1:200", "outside 0..=255"),
        ("canny:100:255.5", "outside 0..=255"),
    ];
    for (input, why) in cases {
        let (what, msg) = invalid(input.parse::<ControlPreprocess>().unwrap_err());
        assert_eq!(what, "control_preprocess", "{input:?}");
        assert!(msg.contains(why), "{input:?}: {msg}");
        assert!(msg.contains("canny:LOW:HIGH") && msg.contains("0 ≤ LOW, HIGH ≤ 255"), "{input:?}: {msg}");
        assert!(msg.contains(&format!("{input:?}")), "{input:?} not quoted in: {msg}");
    }
}

#[test]
fn bad_thresholds_are_refused() {
    let rgb = vec![0u8; 4 * 3 * 3];
    for (low, high) in [(f64::NAN, 1.0), (1.0, f64::NAN), (-0.5, 10.0), (1.0, f64::INFINITY)] {
        let (what, msg) = invalid(canny_rgb8(&rgb, 4, 3, low, high).unwrap_err());
        assert_eq!(what, "control_preprocess");
        assert!(msg.contains("threshold"), "{msg}");
        let (what, _) = invalid(ControlPreprocess::Canny { low, high }.apply(&rgb, 4, 3).unwrap_err());
        assert_eq!(what, "control_preprocess");
    }
    // Thresholds above what the parser takes are fine for the function: nothing is that strong.
    assert_eq!(canny_rgb8(&rgb, 4, 3, 1e300, 1e300).unwrap(), vec![0u8; 12]);
}

#[test]
fn bad_buffers_and_sizes_name_the_image_size() {
    let rgb = vec![0u8; 37 * 23 * 3];
    let check = |r: lcm_core::Result<Vec<u8>>, needle: &str| {
        let (what, msg) = invalid(r.unwrap_err());
        assert_eq!(what, "control_image");
        assert!(msg.contains(needle), "{needle:?} not in: {msg}");
    };
    // Buffer length does not match the size.
    check(resize_lanczos_rgb8(&rgb[1..], 37, 23, 10, 10), "37x23");
    check(resize_lanczos_rgb8(&rgb, 37, 22, 10, 10), "37x22");
    check(canny_rgb8(&rgb, 36, 23, 1.0, 2.0), "36x23");
    check(ControlPreprocess::None.apply(&rgb, 37, 24), "37x24");
    check(ControlPreprocess::CANNY_DEFAULT.apply(&rgb[..10], 37, 23), "37x23");
    // Zero and huge sizes (huge ones would otherwise overflow width·height·3 or allocate gigabytes).
    check(resize_lanczos_rgb8(&[], 0, 23, 10, 10), "0x23");
    check(canny_rgb8(&[], 5, 0, 1.0, 2.0), "5x0");
    check(resize_lanczos_rgb8(&rgb, 37, 23, 0, 10), "target size 0x10");
    check(resize_lanczos_rgb8(&rgb, 37, 23, 10, MAX_SIDE + 1), &format!("10x{}", MAX_SIDE + 1));
    check(canny_rgb8(&rgb, usize::MAX, usize::MAX, 1.0, 2.0), "each side must be");
    // 23x37 holds as many bytes as 37x23: that one is accepted.
    assert!(resize_lanczos_rgb8(&rgb, 23, 37, 10, 10).is_ok());
}
