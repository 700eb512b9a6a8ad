//! tests/c/generate.c compiled with the system C compiler (`cc`, or $CC) against include/lcm.h and
//! liblcm_capi.so, run on the tiny fixture model: its images equal the Rust API's for the same
//! request, byte for byte (txt2img with two images, a LoRA swapped in, prepared LoRAs switched in,
//! after a cancel, and with a ControlNet: as given, and Canny-preprocessed from an image resized to the
//! output).

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm::cpu::CpuBackend;
use lcm_pipeline::control_image::ControlPreprocess;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{ControlUnit, LoadSpec, LoraSpec, Request};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder cargo wrote liblcm_capi.so to: this test's own (target/…/deps), or the one above it.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let found = [deps, deps.parent().unwrap()].into_iter().find(|d| d.join("liblcm_capi.so").is_file());
    found.unwrap_or_else(|| panic!("liblcm_capi.so not found beside {}", exe.display())).to_path_buf()
}

/// The Rust API's images for `req` on the tiny fixture, with `loras` merged at load.
fn rust_images(req: &Request, loras: Vec<LoraSpec>) -> Vec<u8> {
    let spec = LoadSpec { model_dir: root().join("tests/fixtures/tiny-sd"), loras, ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let out = pipe.generate(req, &mut |_| {}).unwrap();
    (0..req.num_images).flat_map(|i| out.rgb8(i)).collect()
}

#[test]
fn c_program_generates_the_rust_apis_images() {
    let dir = std::env::temp_dir().join(format!("lcm-capi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    let exe = dir.join("generate");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/generate.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", libs.display()))
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .args(["-llcm_capi", "-lpthread"])
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(out.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let lora = root().join("tests/fixtures/loras/lora_peft.safetensors");
    // The control images, raw RGB for the C program.
    let cn = root().join("tests/fixtures/controlnet/cn-sd15-a");
    let control = |name: &str, size: (usize, usize)| {
        let (w, h, rgb, _) = read_png(&root().join("tests/fixtures/controlnet/images").join(name)).unwrap();
        assert_eq!((w, h), size);
        std::fs::write(dir.join(name).with_extension("rgb"), &rgb).unwrap();
        rgb
    };
    let (rgb64, rgb80) = (control("canny_64x64.png", (64, 64)), control("canny_80x72.png", (80, 72)));
    let out = Command::new(&exe)
        .arg(root().join("tests/fixtures/tiny-sd"))
        .arg(&lora)
        .arg(&dir)
        .arg(&cn)
        .arg(dir.join("canny_64x64.rgb"))
        .arg(dir.join("canny_80x72.rgb"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the C program failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("lcm {}\n", env!("CARGO_PKG_VERSION"))), "{stdout}");

    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let req = Request {
        prompt: "a red house".into(),
        width: 64,
        height: 64,
        steps: 3,
        seed: 7,
        num_images: 2,
        ..Request::default()
    };
    assert!(read("txt2img.rgb") == rust_images(&req, Vec::new()), "txt2img: the C ABI's pixels differ");
    let req = Request { prompt: "a boat".into(), seed: 11, steps: 4, num_images: 1, ..req };
    let with_lora = rust_images(&req, vec![LoraSpec { path: lora, scale: 0.5 }]);
    assert!(read("lora.rgb") == with_lora, "with a LoRA swapped in: the C ABI's pixels differ");
    assert!(read("prepared.rgb") == with_lora, "with prepared LoRAs switched in: the C ABI's pixels differ");
    let without = rust_images(&req, Vec::new());
    assert!(without != with_lora, "the LoRA changed nothing: the comparison above proves nothing");
    assert!(read("prepared_none.rgb") == without, "with prepared no-LoRAs switched in: pixels differ");
    assert!(read("after.rgb") == without, "after the cancel and the LoRA swapped out: pixels differ");
    assert!(read("controlled_none.rgb") == without, "lcm_generate_controlled without ControlNets: pixels differ");

    // With a ControlNet: the Rust API's image for the same units (the 80x72 image Canny-preprocessed at
    // its own size, then resized to the output's).
    let unit = |rgb: &[u8], (w, h): (usize, usize), pre: ControlPreprocess, end: f64| ControlUnit {
        model: cn.clone(),
        image: ControlUnit::image_at(w, h, &pre.apply(rgb, w, h).unwrap(), 64, 64).unwrap(),
        scale: 0.7,
        start: 0.0,
        end,
    };
    let controlled = |units: Vec<ControlUnit>| rust_images(&Request { controls: units, ..req.clone() }, Vec::new());
    let want = controlled(vec![unit(&rgb64, (64, 64), ControlPreprocess::None, 1.0)]);
    assert!(want != without, "the ControlNet changed nothing: the comparison proves nothing");
    assert!(read("controlnet.rgb") == want, "with a ControlNet: the C ABI's pixels differ");
    let canny = ControlPreprocess::Canny { low: 50.0, high: 150.0 };
    let want_canny = controlled(vec![unit(&rgb80, (80, 72), canny, 0.75)]);
    assert!(want_canny != want, "Canny, the resize and the window changed nothing");
    assert!(read("controlnet_canny.rgb") == want_canny, "with a Canny-preprocessed ControlNet: pixels differ");
    let _ = std::fs::remove_dir_all(&dir);
}
