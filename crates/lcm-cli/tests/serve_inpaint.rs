//! Inpainting through `lcm serve` on the tiny inpainting fixture (CPU): A1111 img2img with `mask`
//! (white = inpaint; `mask_blur` as Pillow's GaussianBlur; `inpainting_mask_invert`) and OpenAI's
//! `POST /v1/images/edits` (multipart; transparent = edit, from the mask or the image's own alpha, and
//! through the official openai Python client) give `lcm generate --image … --mask …`'s pixels for the
//! same settings; bad inputs are 400s naming the form field.

mod serve_util;

use std::path::{Path, PathBuf};

use serde_json::json;
use serve_util::*;

fn model() -> PathBuf {
    fixtures().join("inpaint/tiny-sd-inpaint")
}

fn image_path(name: &str) -> PathBuf {
    fixtures().join("inpaint/images").join(name)
}

/// The only image of an answer (A1111 `images[0]` or OpenAI `data[0].b64_json`), as RGB.
fn image(r: &Resp) -> Vec<u8> {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = r.json();
    let b = j["images"][0].as_str().or(j["data"][0]["b64_json"].as_str()).expect("an image");
    png_rgb(b).2
}

fn png_bytes(w: usize, h: usize, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut e = png::Encoder::new(&mut v, w as u32, h as u32);
    e.set_color(color);
    e.write_header().unwrap().write_image_data(data).unwrap();
    v
}

fn write_gray_png(path: &Path, gray: &[u8]) {
    std::fs::write(path, png_bytes(64, 64, png::ColorType::Grayscale, gray)).unwrap();
}

/// The fixture's L mask (white = repaint), 64x64.
fn mask_gray() -> Vec<u8> {
    let bytes = std::fs::read(image_path("mask_l_64x64.png")).unwrap();
    let (w, h, gray, alpha) = lcm_pipeline::output::decode_png_mask(std::io::Cursor::new(bytes), 1024).unwrap();
    assert_eq!((w, h, alpha), (64, 64, false));
    gray
}

/// `lcm generate --model tiny-sd-inpaint --image init_64x64.png --mask MASK --steps 4` plus `extra`.
fn cli(name: &str, mask: &Path, extra: &[&str]) -> Vec<u8> {
    let init = image_path("init_64x64.png");
    let args =
        [&["--image", init.to_str().unwrap(), "--mask", mask.to_str().unwrap(), "--steps", "4"][..], extra].concat();
    lcm_generate_model(name, &model(), &args, 1).remove(0)
}

fn b64_file(p: &Path) -> String {
    b64(&std::fs::read(p).unwrap())
}

#[test]
fn a1111_masks_give_lcm_generates_pixels() {
    let s = Server::start_model("inp-a1111", &model(), &[]);
    let init = b64_file(&image_path("init_64x64.png"));
    let mask_png = image_path("mask_l_64x64.png");
    let body = |extra: serde_json::Value| {
        let mut b = json!({"prompt": "a photo of a cat", "seed": 3, "steps": 4, "denoising_strength": 0.8,
                           "init_images": [init], "mask": b64_file(&mask_png), "inpainting_fill": 1,
                           "inpaint_full_res": false, "inpaint_full_res_padding": 32});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let flags = ["--prompt", "a photo of a cat", "--seed", "3", "--strength", "0.8"];

    // mask_blur 0: the mask as it is.
    let got = image(&s.post("/sdapi/v1/img2img", &body(json!({"mask_blur": 0}))));
    let want = cli("inp-a1111-0", &mask_png, &flags);
    assert!(got == want, "A1111 img2img with a mask (mask_blur 0): pixels differ from lcm generate");

    // mask_blur 4 (A1111's default, also when absent): the CLI given the mask blurred by blur.rs.
    let dir = scratch("inp-a1111-blur");
    let blurred = lcm_serve::blur::gaussian_blur(&mask_gray(), 64, 64, 4.0, 4.0);
    let binarised = |g: &[u8]| g.iter().map(|&v| v >= 128).collect::<Vec<_>>();
    assert!(binarised(&blurred) != binarised(&mask_gray()), "the blur changes the binarised mask");
    let blurred_png = dir.join("blurred.png");
    write_gray_png(&blurred_png, &blurred);
    let want = cli("inp-a1111-4", &blurred_png, &flags);
    let got = image(&s.post("/sdapi/v1/img2img", &body(json!({"mask_blur": 4}))));
    assert!(got == want, "A1111 img2img with mask_blur 4: pixels differ from lcm generate on the blurred mask");
    let got = image(&s.post("/sdapi/v1/img2img", &body(json!({}))));
    assert!(got == want, "A1111 img2img without mask_blur (default 4): pixels differ");

    // inpainting_mask_invert 1: the inverted mask.
    let inverted: Vec<u8> = mask_gray().iter().map(|&g| 255 - g).collect();
    let inverted_png = dir.join("inverted.png");
    write_gray_png(&inverted_png, &inverted);
    let want = cli("inp-a1111-inv", &inverted_png, &flags);
    let got = image(&s.post("/sdapi/v1/img2img", &body(json!({"mask_blur": 0, "inpainting_mask_invert": 1}))));
    assert!(got == want, "A1111 img2img with inpainting_mask_invert: pixels differ");
}

type Parts<'a> = Vec<(&'a str, Option<&'a str>, &'a [u8])>;
/// Form parts that own their bytes.
type OwnedParts<'a> = Vec<(&'a str, Option<&'a str>, Vec<u8>)>;

/// A multipart/form-data body: (Content-Type, bytes); a part with a file name is a file.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "lcm-test-boundary-7d3f";
    let mut b = Vec::new();
    for (name, file, data) in parts {
        b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        match file {
            Some(f) => b.extend_from_slice(format!("; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes()),
            None => b.extend_from_slice(b"\r\n\r\n"),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), b)
}

/// OpenAI's mask for the fixture's: RGBA, fully transparent (alpha 0) where it repaints.
fn openai_mask() -> Vec<u8> {
    let rgba: Vec<u8> = mask_gray().iter().flat_map(|&g| [0, 0, 0, if g >= 128 { 0 } else { 255 }]).collect();
    png_bytes(64, 64, png::ColorType::Rgba, &rgba)
}

const EDITS: &str = "/v1/images/edits";

#[test]
fn openai_edits_give_lcm_generates_pixels_and_name_bad_fields() {
    let s = Server::start_model("inp-edits", &model(), &["--max-body-mb", "1"]);
    let init = std::fs::read(image_path("init_64x64.png")).unwrap();
    let mask = openai_mask();
    let want = cli(
        "inp-edits-ref",
        &image_path("mask_l_64x64.png"),
        &["--prompt", "a red fox", "--seed", "5", "--strength", "1"],
    );

    let (ct, body) = multipart(&[
        ("image", Some("init.png"), &init),
        ("mask", Some("mask.png"), &mask),
        ("prompt", None, b"a red fox"),
        ("n", None, b"1"),
        ("size", None, b"64x64"),
        ("response_format", None, b"b64_json"),
        ("model", None, b"tiny-sd-inpaint"),
        ("seed", None, b"5"),
        ("steps", None, b"4"),
    ]);
    let r = s.post_as(EDITS, &ct, &body);
    assert!(image(&r) == want, "edits with a mask: pixels differ from lcm generate");
    assert_eq!(r.json()["seed"], 5);

    // No mask part: the image's own fully transparent pixels.
    let (_, _, rgb) = lcm_pipeline::output::decode_png_rgb8(std::io::Cursor::new(&init), 1024).unwrap();
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .zip(mask_gray())
        .flat_map(|(p, g)| [p[0], p[1], p[2], if g >= 128 { 0 } else { 255 }])
        .collect();
    let init_alpha = png_bytes(64, 64, png::ColorType::Rgba, &rgba);
    let (ct, body) =
        multipart(&[("image", Some("a.png"), &init_alpha), ("prompt", None, b"a red fox"), ("seed", None, b"5")]);
    assert!(image(&s.post_as(EDITS, &ct, &body)) == want, "edits with the image's alpha: pixels differ");

    // Bad input: 400 naming the form field.
    let opaque_mask = png_bytes(64, 64, png::ColorType::Rgba, &[255; 64 * 64 * 4]);
    let gray_mask = std::fs::read(image_path("mask_l_64x64.png")).unwrap();
    let small_mask = png_bytes(32, 32, png::ColorType::Rgba, &[0; 32 * 32 * 4]);
    let (p, img, m): (&[u8], Option<&str>, Option<&str>) = (b"a fox", Some("i.png"), Some("m.png"));
    let base = |extra: Parts<'static>| -> OwnedParts {
        let mut v = vec![("image", img, init.clone()), ("prompt", None, p.to_vec()), ("mask", m, mask.clone())];
        v.extend(extra.into_iter().map(|(k, f, d)| (k, f, d.to_vec())));
        v
    };
    let without = |name: &str| base(vec![]).into_iter().filter(|(k, _, _)| *k != name).collect::<Vec<_>>();
    let with_mask = |bytes: &[u8]| {
        let mut v = without("mask");
        v.push(("mask", m, bytes.to_vec()));
        v
    };
    let with_image = |bytes: &[u8]| {
        let mut v = without("image");
        v.push(("image", img, bytes.to_vec()));
        v
    };
    let cases: Vec<(OwnedParts, &str)> = vec![
        (without("image"), "image"),
        (without("prompt"), "prompt"),
        (without("mask"), "mask"),
        (with_mask(&small_mask), "mask"),
        (with_mask(&opaque_mask), "mask"),
        (with_mask(&gray_mask), "mask"),
        (with_mask(b"\xff\xd8\xff\xe0 a JPEG"), "mask"),
        (with_image(b"GIF89a"), "image"),
        (base(vec![("size", None, b"64x72")]), "size"),
        (base(vec![("response_format", None, b"url")]), "response_format"),
        (base(vec![("strength", None, b"0")]), "strength"),
        (base(vec![("seed", None, b"x")]), "seed"),
        (base(vec![("n", None, b"99")]), "n"),
        (base(vec![("loras", None, b"[{\"name\": \"nope\"}]")]), "loras[0].name"),
        (base(vec![("style", None, b"vivid")]), "style"),
        (base(vec![("image", img, b"\x89PNG\r\n\x1a\n")]), "image"),
    ];
    for (parts, field) in cases {
        let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
        let refs: Vec<(&str, Option<&str>, &[u8])> = parts.iter().map(|(k, f, d)| (*k, *f, d.as_slice())).collect();
        let (ct, body) = multipart(&refs);
        let r = s.post_as(EDITS, &ct, &body);
        assert_eq!(r.status, 400, "{names:?}: {}", r.body_text());
        assert_eq!(r.error_field(), field, "{names:?}: {}", r.body_text());
    }
    // Not multipart, or a broken body: named too; over --max-body-mb: 413.
    assert_eq!(s.post(EDITS, "{\"prompt\": \"a\"}").error_field(), "content-type");
    let r = s.post_as(
        EDITS,
        "multipart/form-data; boundary=xx",
        b"--xx\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na",
    );
    assert_eq!((r.status, r.error_field().as_str()), (400, "body"));
    let (ct, big) = multipart(&[("image", Some("i.png"), &vec![0u8; 2 << 20])]);
    assert_eq!(s.post_as(EDITS, &ct, &big).status, 413);
}

#[test]
fn a1111_mask_refusals_name_the_field() {
    let s = Server::start_model("inp-bad", &model(), &[]);
    let init = b64_file(&image_path("init_64x64.png"));
    let mask = b64_file(&image_path("mask_l_64x64.png"));
    let small = b64(&png_bytes(32, 32, png::ColorType::Grayscale, &[255; 32 * 32]));
    let black = b64(&png_bytes(64, 64, png::ColorType::Grayscale, &[0; 64 * 64]));
    let cases = [
        (json!({"mask": mask, "inpainting_fill": 0}), "inpainting_fill"),
        (json!({"mask": mask, "inpainting_fill": 2}), "inpainting_fill"),
        (json!({"mask": mask, "inpaint_full_res": true}), "inpaint_full_res"),
        (json!({"mask": mask, "inpaint_full_res": 1}), "inpaint_full_res"),
        (json!({"mask": mask, "inpainting_mask_invert": 2}), "inpainting_mask_invert"),
        (json!({"mask": mask, "mask_blur": -1}), "mask_blur"),
        (json!({"mask": mask, "mask_blur_x": 1000}), "mask_blur_x"),
        (json!({"mask": mask, "inpaint_full_res_padding": "x"}), "inpaint_full_res_padding"),
        (json!({"mask": "!!!"}), "mask"),
        (json!({"mask": b64(b"GIF89a")}), "mask"),
        (json!({"mask": 5}), "mask"),
        (json!({"mask": small}), "mask"),
        (json!({"mask": black, "mask_blur": 0}), "mask"),
        (json!({"mask": mask, "mask_round": true}), "mask_round"),
    ];
    for (extra, field) in cases {
        let mut b = json!({"prompt": "a", "init_images": [init]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = s.post("/sdapi/v1/img2img", &b.to_string());
        assert_eq!(r.status, 400, "{extra}: {}", r.body_text());
        assert_eq!(r.error_field(), field, "{extra}: {}", r.body_text());
    }
    // Without a mask these fields change nothing: accepted at any well-typed value (clients send them).
    let r = s.post(
        "/sdapi/v1/img2img",
        &json!({"prompt": "a", "init_images": [init], "steps": 1, "inpainting_fill": 0, "inpaint_full_res": true,
                "mask_blur": 4, "inpainting_mask_invert": 0})
        .to_string(),
    );
    // The 9-channel UNet needs a mask: the engine's refusal names it.
    assert_eq!((r.status, r.error_field().as_str()), (400, "mask"), "{}", r.body_text());
}

/// The official `openai` Python client (pinned; scripts/ci-python.sh, which CI runs) edits with a mask
/// whose transparent pixels mark the area, and gets `lcm generate`'s pixels for the same settings.
/// `LCM_SKIP_OPENAI=1` skips it outside CI; in CI (`CI` set) a missing client fails it.
#[test]
fn the_openai_python_client_edits_like_lcm_generate() {
    let in_ci = std::env::var_os("CI").is_some();
    if !in_ci && std::env::var("LCM_SKIP_OPENAI").is_ok_and(|v| v == "1") {
        println!("SKIPPED: LCM_SKIP_OPENAI=1");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = std::process::Command::new(root.join("scripts/ci-python.sh")).output().unwrap();
    assert!(o.status.success(), "scripts/ci-python.sh failed: {}", String::from_utf8_lossy(&o.stderr));
    let python = root.join(String::from_utf8_lossy(&o.stdout).trim());

    let s = Server::start_model("inp-openai", &model(), &[]);
    let dir = scratch("inp-openai");
    let mask = dir.join("mask.png");
    std::fs::write(&mask, openai_mask()).unwrap();
    let out = dir.join("client.png");
    let script = r#"
import base64, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
r = client.images.edit(model="tiny-sd-inpaint", image=open(sys.argv[2], "rb"), mask=open(sys.argv[3], "rb"),
                       prompt="a red fox", n=1, size="64x64", response_format="b64_json",
                       extra_body={"seed": 5, "steps": 4})
open(sys.argv[4], "wb").write(base64.b64decode(r.data[0].b64_json))
try:
    client.images.edit(image=open(sys.argv[2], "rb"), prompt="a red fox", size="64x64")
    print("no error")
except openai.BadRequestError as e:
    print("BadRequestError", e.status_code, e.body["field"])
"#;
    let init = image_path("init_64x64.png");
    let o = std::process::Command::new(&python)
        .args(["-c", script, &format!("http://{}", s.addr), init.to_str().unwrap(), mask.to_str().unwrap()])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout.trim(), "BadRequestError 400 mask");
    let (w, h, got, _) = lcm_pipeline::output::read_png(&out).unwrap();
    assert_eq!((w, h), (64, 64));
    let want = cli(
        "inp-openai-ref",
        &image_path("mask_l_64x64.png"),
        &["--prompt", "a red fox", "--seed", "5", "--strength", "1"],
    );
    assert!(got == want, "the openai client's edit: pixels differ from lcm generate");
}
