//! Single-file ControlNets (tests/fixtures/controlnet/cn_sd15_a.safetensors: cn-sd15-a's weights in the
//! original `control_model.*` names, written by tests/fixtures/generate_controlnet.py): the config read
//! from the shapes is the folder's, the outputs are the folder's exactly, and both match diffusers'
//! recorded ControlNetModel call (records/controlnet/models.safetensors). SDXL's cn-sdxl, renamed here
//! into the original names, too. Files that are not ControlNets, or damaged ones, are refused naming
//! the file and the tensor.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_close, fixtures, record, tensor, Scratch};
use lcm_core::{SafeTensorsFile, Tensor};
use lcm_cpu::CpuBackend;
use lcm_models::checkpoint::controlnet_file::ControlNetFile;
use lcm_models::checkpoint::ldm::UnetLayout;
use lcm_models::{AddedCond, ControlNet, ControlNetConfig, UnetConfig, Variant};
use safetensors::Dtype;

const TOL: f64 = 1e-4;

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn file() -> PathBuf {
    fixtures().join("controlnet/cn_sd15_a.safetensors")
}

fn folder(name: &str) -> PathBuf {
    fixtures().join("controlnet").join(name)
}

/// The UNet a fixture ControlNet was made from (`ControlNetModel.from_unet`).
fn base(unet: &str) -> UnetConfig {
    UnetConfig::from_file(&fixtures().join(unet).join("unet/config.json")).unwrap()
}

/// Configs compare through their Debug form: every field, as parsed.
fn same(what: &str, inferred: &ControlNetConfig, folder: &ControlNetConfig) {
    assert_eq!(format!("{inferred:#?}"), format!("{folder:#?}"), "{what}: the config read from the shapes differs");
}

/// One call on the recorded inputs `p.*` (NCHW): the down residuals, then the mid one.
fn run(net: &mut ControlNet<CpuBackend>, p: &str) -> Vec<Tensor> {
    let rec = record("controlnet/models.safetensors");
    let t = |n: &str| tensor(&rec, &format!("{p}.{n}"));
    let sdxl = rec.get(&format!("{p}.time_ids")).is_ok();
    let cond = sdxl.then(|| (t("text_embeds"), t("time_ids")));
    let added = cond.as_ref().map(|(text_embeds, time_ids)| AddedCond { text_embeds, time_ids });
    let (be, scale) = (CpuBackend::new(), t("scale").data[0]);
    let (mut down, mid) =
        net.forward(&be, &t("sample"), &t("timestep").data, &t("context"), &t("cond"), scale, added).unwrap();
    down.push(mid);
    down
}

/// Every output against diffusers' recorded one.
fn matches_record(what: &str, outs: &[Tensor], p: &str) {
    let rec = record("controlnet/models.safetensors");
    let (mid, down) = outs.split_last().unwrap();
    assert!(rec.get(&format!("{p}.down.{}", down.len())).is_err(), "{what}: fewer residuals than recorded");
    for (i, d) in down.iter().enumerate() {
        let want = tensor(&rec, &format!("{p}.down.{i}"));
        assert_eq!(d.shape, want.shape, "{what} down.{i}");
        assert_close(&format!("{what} down.{i}"), &d.data, &want.data, TOL);
    }
    assert_close(&format!("{what} mid"), &mid.data, &tensor(&rec, &format!("{p}.mid")).data, TOL);
}

/// The same outputs, bit for bit: the same weights under other names.
fn identical(what: &str, a: &[Tensor], b: &[Tensor]) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.shape == y.shape && x.data == y.data, "{what}: output {i} differs from the folder's");
    }
}

fn load_folder(name: &str) -> ControlNet<CpuBackend> {
    ControlNet::load_folder(&CpuBackend::new(), &folder(name), Variant::PreferFull).unwrap()
}

#[test]
fn the_shapes_give_the_folders_config() {
    let from_folder = load_folder("cn-sd15-a").config;
    let f = ControlNetFile::open(file()).unwrap();
    // With its base UNet (tiny-sd, whose 2 heads no shape gives), exactly the folder's config.
    same("with tiny-sd's UNet", &f.infer(Some(&base("tiny-sd"))).unwrap(), &from_folder);
    // Without, SD1.5's 8 heads; everything else is the folder's.
    let alone = f.infer(None).unwrap();
    assert_eq!(alone.unet.heads, vec![8; 4]);
    let heads = from_folder.unet.heads.clone();
    same("alone", &ControlNetConfig { unet: UnetConfig { heads, ..alone.unet.clone() }, ..alone }, &from_folder);
    assert_eq!(from_folder.conditioning_embedding_out_channels, [8, 8, 16, 16]);
}

#[test]
fn the_single_file_runs_as_the_folder_and_as_diffusers() {
    let mut net = load_folder("cn-sd15-a");
    let want = run(&mut net, "sd15");
    matches_record("cn-sd15-a folder", &want, "sd15");
    let be = CpuBackend::new();
    let mut single = ControlNet::load_single_file_for(&be, &file(), Some(&base("tiny-sd"))).unwrap();
    let (a, b) = (&single.weights().specs, &net.weights().specs);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "weight specs");
    let got = run(&mut single, "sd15");
    identical("cn_sd15_a.safetensors", &got, &want);
    matches_record("cn_sd15_a.safetensors", &got, "sd15");
    // Without the base UNet it loads too (8 heads: other numbers, the same weights).
    let alone = ControlNet::<CpuBackend>::load_single_file(&be, &file()).unwrap();
    assert_eq!(format!("{:?}", alone.weights().specs), format!("{b:?}"));
}

/// A copy of `src` in a scratch folder, its tensors edited.
fn edited(tag: &str, src: &Path, edit: impl FnOnce(&mut Tensors)) -> (Scratch, PathBuf) {
    let s = Scratch::empty(tag);
    let p = s.path().join("cn.safetensors");
    fs::copy(src, &p).unwrap();
    common::rewrite(s.path(), "cn.safetensors", edit);
    (s, p)
}

fn rename(t: &mut Tensors, f: impl Fn(&str) -> String) {
    t.iter_mut().for_each(|e| e.0 = f(&e.0));
}

#[test]
fn other_namings_and_dtypes_load_the_same_weights() {
    let want = run(&mut load_folder("cn-sd15-a"), "sd15");
    let be = CpuBackend::new();
    let tiny_sd = base("tiny-sd");
    let diffusers_names = folder("cn-sd15-a").join("diffusion_pytorch_model.safetensors");
    let (_a, unprefixed) = edited("cn-bare", &file(), |t| rename(t, |n| n.replace("control_model.", "")));
    let (_b, bf16) = edited("cn-bf16", &file(), |t| common::convert(t, Dtype::BF16));
    // A whole ControlLDM checkpoint: only the `control_model.` keys are the ControlNet's.
    let (_c, ldm) =
        edited("cn-ldm", &file(), |t| t.push(("model.diffusion_model.x".into(), Dtype::F16, vec![1], vec![0; 2])));
    for (what, p) in
        [("diffusers names", diffusers_names), ("no prefix", unprefixed), ("bf16", bf16), ("ControlLDM", ldm)]
    {
        let mut net =
            ControlNet::load_single_file_for(&be, &p, Some(&tiny_sd)).unwrap_or_else(|e| panic!("{what}: {e}"));
        identical(what, &run(&mut net, "sd15"), &want);
    }
}

/// diffusers name → original name, written out here independently of the loader's mapping.
fn original_name(name: &str, layout: &UnetLayout, hint_blocks: usize) -> String {
    let (module, param) = name.rsplit_once('.').unwrap();
    let m = if let Some(rest) = module.strip_prefix("controlnet_cond_embedding.") {
        let i = match rest {
            "conv_in" => 0,
            "conv_out" => 2 * hint_blocks + 2,
            b => 2 * b.strip_prefix("blocks.").unwrap().parse::<usize>().unwrap() + 2,
        };
        format!("input_hint_block.{i}")
    } else if let Some(i) = module.strip_prefix("controlnet_down_blocks.") {
        format!("zero_convs.{i}.0")
    } else if module == "controlnet_mid_block" {
        "middle_block_out.0".into()
    } else {
        layout.to_ldm(module).unwrap()
    };
    format!("control_model.{m}.{param}")
}

#[test]
fn an_sdxl_controlnet_in_original_names_runs_as_its_folder_and_as_diffusers() {
    let mut net = load_folder("cn-sdxl");
    let want = run(&mut net, "sdxl");
    matches_record("cn-sdxl folder", &want, "sdxl");
    let layout = UnetLayout::from_config(&net.config.unet);
    let src = folder("cn-sdxl").join("diffusion_pytorch_model.safetensors");
    let (_s, p) = edited("cn-sdxl", &src, |t| rename(t, |n| original_name(n, &layout, 6)));
    let f = ControlNetFile::open(&p).unwrap();
    same("cn-sdxl with tiny-sdxl's UNet", &f.infer(Some(&base("sdxl/tiny-sdxl"))).unwrap(), &net.config);
    let mut single = f.load(&CpuBackend::new(), f.infer(Some(&base("sdxl/tiny-sdxl"))).unwrap()).unwrap();
    let got = run(&mut single, "sdxl");
    identical("cn-sdxl in original names", &got, &want);
    matches_record("cn-sdxl in original names", &got, "sdxl");
    // Alone, SDXL's 256-wide time ids do not fit its 72-wide added embedding: said, by tensor.
    let err = f.infer(None).unwrap_err().to_string();
    assert_mentions(&err, &["cn.safetensors", "control_model.label_emb.0.0.weight", "256-wide time ids"]);
}

fn assert_mentions(err: &str, parts: &[&str]) {
    println!("{err}");
    for p in parts {
        assert!(err.contains(p), "error `{err}` should mention `{p}`");
    }
}

/// Loads `path` as the pipeline does; the error text.
fn refusal(path: &Path) -> String {
    match ControlNet::<CpuBackend>::load_single_file(&CpuBackend::new(), path) {
        Ok(_) => panic!("{} should be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn files_that_are_no_controlnet_are_refused_with_what_they_look_like() {
    let (_s, p) = edited("cn-prefix", &file(), |t| rename(t, |n| n.replace("control_model.", "cn_model.")));
    let expected = ["cn.safetensors", "is not a ControlNet", "control_model.input_hint_block.0.weight"];
    assert_mentions(&refusal(&p), &[&expected[..], &["cn_model.input_hint_block.0.weight"]].concat());
    let sd = refusal(&fixtures().join("single-file/sd15_tiny.safetensors"));
    assert_mentions(&sd, &[&expected[1..], &["sd15_tiny.safetensors", "Stable Diffusion checkpoint"]].concat());
    assert_mentions(&refusal(&fixtures().join("loras/lora_kohya.safetensors")), &["is not a ControlNet", "LoRA"]);
    let (_d, p) = edited("cn-diff", &file(), |t| t.push(("difference".into(), Dtype::F16, vec![1], vec![0; 2])));
    assert_mentions(&refusal(&p), &["cn.safetensors", "difference ControlNet"]);
}

#[test]
fn a_damaged_hint_block_is_named() {
    let cut = |n: &str| n.starts_with("control_model.input_hint_block.14.");
    let (_s, p) = edited("cn-hint-cut", &file(), |t| t.retain(|e| !cut(&e.0)));
    assert_mentions(&refusal(&p), &["cn.safetensors", "control_model.input_hint_block.14.weight", "missing", "even"]);
    let gap = |n: &str| n.starts_with("control_model.input_hint_block.6.");
    let (_g, p) = edited("cn-hint-gap", &file(), |t| t.retain(|e| !gap(&e.0)));
    assert_mentions(&refusal(&p), &["control_model.input_hint_block.6.weight", "missing", "`.8`"]);
}

#[test]
fn missing_misshapen_unknown_and_non_finite_tensors_are_named() {
    let key = "control_model.zero_convs.3.0.weight";
    let (_s, p) = edited("cn-zero-shape", &file(), |t| {
        let e = t.iter_mut().find(|e| e.0 == key).unwrap();
        e.2[1] /= 2;
        e.3.truncate(e.3.len() / 2);
    });
    let expected = [key, "has shape [32, 16, 1, 1]", "expected [32, 32, 1, 1]", "controlnet_down_blocks.3.weight"];
    assert_mentions(&refusal(&p), &expected);
    let key = "control_model.zero_convs.7.0.bias";
    let (_m, p) = edited("cn-zero-missing", &file(), |t| t.retain(|e| e.0 != key));
    assert_mentions(&refusal(&p), &["cn.safetensors", key, "missing", "controlnet_down_blocks.7.bias"]);
    let key = "control_model.zero_convs.8.0.bias";
    let (_u, p) = edited("cn-unknown", &file(), |t| t.push((key.into(), Dtype::F16, vec![64], vec![0; 128])));
    assert_mentions(&refusal(&p), &[key, "not a weight of this ControlNet"]);
    let key = "control_model.middle_block_out.0.bias";
    let (_n, p) = edited("cn-nan", &file(), |t| {
        let e = t.iter_mut().find(|e| e.0 == key).unwrap();
        e.3[2..4].copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes());
    });
    assert_mentions(&refusal(&p), &["controlnet_mid_block.bias", "element 1 is inf", "finite"]);
}

#[test]
fn pickles_and_broken_files_are_refused() {
    let s = Scratch::empty("cn-pickle");
    for name in ["control_sd15_canny.pth", "cn.ckpt", "cn.bin"] {
        let p = s.path().join(name);
        fs::write(&p, b"anything").unwrap();
        assert_mentions(&refusal(&p), &[name, "pickle", "safetensors"]);
    }
    let zip = s.path().join("zip.safetensors");
    fs::write(&zip, b"PK\x03\x04archive").unwrap();
    assert_mentions(&refusal(&zip), &["zip.safetensors", "pickle"]);
    let cut = s.path().join("cut.safetensors");
    let bytes = fs::read(file()).unwrap();
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&refusal(&cut), &["cut.safetensors", "truncated or corrupt"]);
    assert_mentions(&refusal(&s.path().join("absent.safetensors")), &["absent.safetensors", "not found"]);
    // The fixture itself is untouched by all this.
    assert_eq!(SafeTensorsFile::open(file()).unwrap().names().count(), 212);
}
