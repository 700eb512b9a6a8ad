//! Single-file (LDM-layout) checkpoints end to end against diffusers: every case recorded by
//! tests/fixtures/generate_single_file.py (`StableDiffusionPipeline.from_single_file(file,
//! config=single-file/config)` + LCMScheduler; with a LoRA, CFG, a separate LDM VAE file, a separate
//! diffusers VAE folder) must give the same denoised latents (relative L2 < 1e-3) and image (mean
//! absolute difference < 1/255) — with the configs from `config_dir`, and again with the configs read
//! from the file's shapes (the fixture is shaped so that everything can be inferred). Then the same
//! file in other spellings, and the folder fixtures converted into single files here.

mod common;

use common::{fixtures, read_tensors, write_tensors, Tensors};

use std::fs;
use std::path::{Path, PathBuf};

use lcm_core::{rel_l2, SafeTensorsFile};
use lcm_cpu::CpuBackend;
use lcm_models::checkpoint::ldm::{vae_ldm_is_conv, vae_to_ldm, UnetLayout};
use lcm_models::UnetConfig;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::{Output, Pipeline};
use lcm_pipeline::spec::{Field, InitImage, LoadSpec, LoraSpec, Request};
use safetensors::Dtype;
use serde_json::Value;

struct Case {
    name: String,
    spec: LoadSpec,
    req: Request,
}

fn request(c: &Value) -> Request {
    Request {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: c["guidance_scale"].as_f64().unwrap() as f32,
        seed: c["seed"].as_u64().unwrap(),
        width: c["width"].as_u64().unwrap() as usize,
        height: c["height"].as_u64().unwrap() as usize,
        num_images: c["num_images"].as_u64().unwrap() as usize,
        sampler: None,
        prompt_syntax: Default::default(),
        controls: Vec::new(),
        init_image: c.get("image").map(|img| {
            let (w, h, rgb, _) = read_png(&fixtures().join(img.as_str().unwrap())).unwrap();
            InitImage::from_rgb8(w, h, &rgb, c["strength"].as_f64().unwrap() as f32).unwrap()
        }),
    }
}

fn cases() -> Vec<Case> {
    let text = fs::read_to_string(fixtures().join("records/single_file/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            spec: LoadSpec {
                model_dir: fixtures().join(c["model"].as_str().unwrap()),
                config_dir: Some(fixtures().join(c["config"].as_str().unwrap())),
                vae: c["vae"].as_str().map(|v| fixtures().join(v)),
                loras: c["loras"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| LoraSpec {
                        path: fixtures().join(l[0].as_str().unwrap()),
                        scale: l[1].as_f64().unwrap() as f32,
                    })
                    .collect(),
                ..LoadSpec::default()
            },
            req: request(c),
        })
        .collect()
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no recorded case {name}"))
}

/// Latents relative L2 and image mean |d| against `records/<dir>/<case>.safetensors`.
fn against(dir: &str, case: &str, out: &Output) -> (f64, f64) {
    let f = SafeTensorsFile::open(fixtures().join(format!("records/{dir}/{case}.safetensors"))).unwrap();
    let latents = f.get("latents").unwrap();
    assert_eq!(out.latents.shape, latents.shape, "{case}: latent shape");
    let lat = rel_l2(&out.latents.data, &latents.to_f32());
    let image = f.get("image").unwrap().to_f32();
    assert_eq!(out.images.data.len(), image.len(), "{case}: image size");
    let mad = out.images.data.iter().zip(&image).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / image.len() as f64;
    (lat, mad)
}

fn run(spec: LoadSpec, req: &Request) -> Output {
    let what = spec.model_dir.display().to_string();
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{what}: {e}"));
    pipe.generate(req, &mut |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn assert_matches(dir: &str, case: &str, label: &str, out: &Output) {
    let (lat, mad) = against(dir, case, out);
    println!("{case:<18} {label:<28} latents rel L2 {lat:.2e}  image MAD {mad:.2e}");
    assert!(lat < 1e-3 && mad < 1.0 / 255.0, "{case} ({label}): latents rel L2 {lat:.2e}, image MAD {mad:.2e}");
}

#[test]
fn every_recorded_case_matches_diffusers_with_config() {
    let all = cases();
    assert_eq!(all.len(), 5, "expected the full case list");
    for c in all {
        let out = run(c.spec.clone(), &c.req);
        assert_matches("single_file", &c.name, "--config", &out);
    }
}

#[test]
fn every_recorded_case_matches_diffusers_with_configs_from_the_shapes() {
    // No config folder: UNet, VAE and text encoder from the shapes, SD1.5's scheduler; the tokenizer
    // still has to come from somewhere (the CLI takes SD1.5's from the Hugging Face cache).
    for c in cases() {
        let tokenizer = c.spec.config_dir.as_ref().unwrap().join("tokenizer");
        let spec = LoadSpec { config_dir: None, tokenizer_dir: Some(tokenizer), ..c.spec };
        let out = run(spec, &c.req);
        assert_matches("single_file", &c.name, "configs from the shapes", &out);
    }
}

/// A folder under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lcm-single-file-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The fixture file rewritten: every tensor through `edit` (name, dtype, shape, bytes).
fn variant(dir: &Scratch, name: &str, source: &Path, edit: impl Fn(&mut Tensors)) -> PathBuf {
    let mut t = read_tensors(source);
    edit(&mut t);
    let p = dir.0.join(name);
    write_tensors(&p, &t);
    p
}

/// f16 → f32 or bf16; the fixture's values are exact in both, so nothing may change.
fn widen(t: &mut Tensors, to: Dtype) {
    for (name, d, _, bytes) in t.iter_mut().filter(|t| t.1 == Dtype::F16) {
        let mut f32s = Vec::new();
        lcm_core::dtype::widen_to_f32(lcm_core::DType::F16, bytes, &mut f32s);
        *bytes = match to {
            Dtype::F32 => f32s.iter().flat_map(|v| v.to_le_bytes()).collect(),
            // bf16 is f32's upper half; exact values have an all-zero lower half.
            _ => f32s
                .iter()
                .flat_map(|v| {
                    let bits = v.to_bits();
                    assert_eq!(bits & 0xffff, 0, "{name}: {v} is not exact in bf16");
                    ((bits >> 16) as u16).to_le_bytes()
                })
                .collect(),
        };
        *d = to;
    }
}

#[test]
fn f32_and_bf16_copies_and_text_encoders_without_text_model_give_the_same_image() {
    let c = case("sf_4step");
    let dir = Scratch::new("spellings");
    let f32 = variant(&dir, "f32.safetensors", &c.spec.model_dir, |t| widen(t, Dtype::F32));
    let bf16 = variant(&dir, "bf16.safetensors", &c.spec.model_dir, |t| widen(t, Dtype::BF16));
    // Older checkpoints name CLIP `cond_stage_model.transformer.embeddings…` (no `text_model.` level).
    let flat = variant(&dir, "flat-clip.safetensors", &c.spec.model_dir, |t| {
        for (n, ..) in t.iter_mut() {
            *n = n.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.");
        }
    });
    for (path, label) in [(f32, "F32 copy"), (bf16, "BF16 copy"), (flat, "CLIP without text_model.")] {
        let out = run(LoadSpec { model_dir: path, ..c.spec.clone() }, &c.req);
        assert_matches("single_file", &c.name, label, &out);
    }
}

#[test]
fn the_lora_in_other_spellings_gives_the_same_image() {
    // The recorded file says `lora_unet_<diffusers path>` and `lora_te1_`; LDM module names
    // (`lora_unet_input_blocks_1_1_…`) and `lora_te_` must land on the same weights.
    let c = case("sf_lora");
    let dir = Scratch::new("lora-spellings");
    let unet = lcm_models::Checkpoint::open(&c.spec.model_dir).unwrap().infer_unet().unwrap();
    let layout = UnetLayout::from_config(&unet);
    let ldm = variant(&dir, "lora_ldm.safetensors", &c.spec.loras[0].path, |t| {
        for (n, ..) in t.iter_mut() {
            *n = ldm_lora_key(&layout, &unet, n).unwrap_or_else(|| n.replace("lora_te1_", "lora_te_"));
        }
    });
    let spec = LoadSpec { loras: vec![LoraSpec { path: ldm, scale: 1.0 }], ..c.spec.clone() };
    assert_matches("single_file", &c.name, "LoRA with LDM names", &run(spec, &c.req));
}

/// `lora_unet_<diffusers path>.<part>` with the module renamed to its LDM name.
fn ldm_lora_key(layout: &UnetLayout, unet: &UnetConfig, key: &str) -> Option<String> {
    let (stem, part) = key.split_once('.')?;
    let underscored = stem.strip_prefix("lora_unet_")?;
    // Find the module whose underscored diffusers path is this one.
    let module = unet
        .graph(1, 8, 8, 1)
        .unwrap()
        .weights
        .iter()
        .filter_map(|s| s.name.strip_suffix(".weight").map(str::to_string))
        .find(|m| m.replace('.', "_") == underscored)?;
    Some(format!("lora_unet_{}.{part}", layout.to_ldm(&module)?.replace('.', "_")))
}

/// A diffusers fixture folder (tiny-sd or tiny-lcm) written as one LDM-layout file, as
/// convert_diffusers_to_original_stable_diffusion.py would (here with lcm's own name mapping, which
/// the recorded single-file cases check against diffusers' converter independently).
fn as_single_file(dir: &Scratch, folder: &str) -> PathBuf {
    let root = fixtures().join(folder);
    let unet = UnetConfig::from_file(&root.join("unet/config.json")).unwrap();
    let layout = UnetLayout::from_config(&unet);
    let mut all = Tensors::new();
    for (n, d, s, b) in read_tensors(&root.join("unet/diffusion_pytorch_model.safetensors")) {
        let ldm = layout.to_ldm(&n).unwrap_or_else(|| n.clone()); // time_embedding.cond_proj keeps its name
        all.push((format!("model.diffusion_model.{ldm}"), d, s, b));
    }
    for (n, d, mut s, b) in read_tensors(&root.join("vae/diffusion_pytorch_model.safetensors")) {
        let ldm = vae_to_ldm(&n, 4).unwrap();
        if vae_ldm_is_conv(&ldm) {
            s.extend([1, 1]);
        }
        all.push((format!("first_stage_model.{ldm}"), d, s, b));
    }
    for (n, d, s, b) in read_tensors(&root.join("text_encoder/model.fp16.safetensors")) {
        all.push((format!("cond_stage_model.transformer.{n}"), d, s, b));
    }
    let p = dir.0.join(format!("{folder}.safetensors"));
    write_tensors(&p, &all);
    p
}

fn pipeline_case(name: &str) -> Request {
    let text = fs::read_to_string(fixtures().join("records/pipeline/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    request(v.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap())
}

#[test]
fn a_full_lcm_in_one_file_takes_the_guidance_embedding() {
    // tiny-lcm's UNet has time_cond_proj_dim; in one file its `time_embedding.cond_proj` keeps the
    // diffusers name. The text encoder is 16 wide with 2 heads, which the shapes cannot tell (64-wide
    // heads give none), so its folder serves as --config.
    let dir = Scratch::new("lcm");
    let file = as_single_file(&dir, "tiny-lcm");
    let spec =
        LoadSpec { model_dir: file.clone(), config_dir: Some(fixtures().join("tiny-lcm")), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    assert!(pipe.has_guidance_embedding());
    let out = pipe.generate(&pipeline_case("lcm_4step"), &mut |_| {}).unwrap();
    assert_matches("pipeline", "lcm_4step", "tiny-lcm as one file", &out);
    let ck = lcm_models::Checkpoint::open(&file).unwrap();
    assert_eq!(ck.infer_unet().unwrap().time_cond_proj_dim, Some(256));
    let err = ck.infer_text_encoder(0).unwrap_err().to_string();
    assert!(err.contains("16 wide") && err.contains("--config"), "{err}");
}

#[test]
fn img2img_reads_the_encoder_from_the_single_file() {
    let dir = Scratch::new("img2img");
    let file = as_single_file(&dir, "tiny-sd");
    let spec = LoadSpec { model_dir: file, config_dir: Some(fixtures().join("tiny-sd")), ..LoadSpec::default() };
    let out = run(spec, &pipeline_case("sd_img2img"));
    assert_matches("pipeline", "sd_img2img", "tiny-sd as one file", &out);
}

#[test]
fn a_separate_vae_file_replaces_a_folder_models_vae() {
    // --vae with a diffusers folder model: same latents, another image (that the separate VAE decodes
    // as diffusers does is the sf_vae_ldm case's business).
    let req = pipeline_case("sd_4step");
    let own = run(LoadSpec { model_dir: fixtures().join("tiny-sd"), ..LoadSpec::default() }, &req);
    let vae = fixtures().join("single-file/vae_ldm.safetensors");
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), vae: Some(vae), ..LoadSpec::default() };
    let swapped = run(spec, &req);
    assert_eq!(own.latents.data, swapped.latents.data, "the VAE must not change the denoising");
    let d = rel_l2(&swapped.images.data, &own.images.data);
    println!("image rel diff with the separate VAE: {d:.3}");
    assert!(d > 0.05, "the separate VAE was not used");
}

#[test]
fn a_bare_single_file_with_a_small_vocabulary_needs_its_tokenizer_and_says_so() {
    // Without config_dir or tokenizer_dir the built-in CLIP tokenizer is used, whose ids the fixture's
    // 1000-token text encoder cannot take.
    let spec = LoadSpec { model_dir: fixtures().join("single-file/sd15_tiny.safetensors"), ..LoadSpec::default() };
    let err = Pipeline::load(CpuBackend::new(), spec).err().expect("a 1000-token text encoder").to_string();
    assert!(
        err.contains("sd15_tiny.safetensors") && err.contains("1000 token embeddings") && err.contains("`config_dir`"),
        "{err}"
    );
    let spec = LoadSpec {
        model_dir: fixtures().join("tiny-sd"),
        config_dir: Some(fixtures().join("single-file/config")),
        ..LoadSpec::default()
    };
    let err = Pipeline::load(CpuBackend::new(), spec).err().expect("config_dir with a folder");
    assert_eq!(Field::of(&err), Some(Field::ConfigDir), "{err}");
    let err = err.to_string();
    assert!(err.starts_with("config_dir: ") && err.contains("single-file"), "{err}");
}

#[test]
fn a_tokenizer_json_only_folder_tokenizes_as_transformers() {
    // The config folder's tokenizer is what transformers 5 saves: tokenizer.json + tokenizer_config.json.
    let dir = fixtures().join("single-file/config/tokenizer");
    assert!(!dir.join("vocab.json").exists() && dir.join("tokenizer.json").is_file());
    let tok = lcm_pipeline::tokenizer::ClipTokenizer::from_dir(&dir).unwrap();
    let text = fs::read_to_string(fixtures().join("records/single_file/tokenizer.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    for c in cases.as_array().unwrap() {
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(c["text"].as_str().unwrap()).unwrap().to_vec(), want, "{}", c["text"]);
    }
}

#[test]
fn a_bare_single_file_gets_lcm_from_sd15s_scheduler_config() {
    // tiny-sd ships SD1.5's own scheduler_config.json (PNDM); LCMScheduler.from_config of it is what
    // diffusers' from_single_file gives an SD1.5 checkpoint.
    let sd15 =
        lcm_pipeline::scheduler::LcmConfig::from_json_file(fixtures().join("tiny-sd/scheduler/scheduler_config.json"));
    let bare = lcm_pipeline::scheduler::SchedulerConfig::sd15();
    assert_eq!(lcm_pipeline::scheduler::LcmConfig::from_config(&bare).unwrap(), sd15.unwrap());
}

#[test]
fn a_checkpoint_without_its_vae_takes_a_separate_one() {
    let c = case("sf_vae_ldm");
    let dir = Scratch::new("no-vae");
    let bare = variant(&dir, "unet_clip.safetensors", &c.spec.model_dir, |t| {
        t.retain(|(n, ..)| !n.starts_with("first_stage_model."))
    });
    let spec = LoadSpec { model_dir: bare.clone(), vae: None, ..c.spec.clone() };
    let err = Pipeline::load(CpuBackend::new(), spec).err().expect("no VAE anywhere").to_string();
    assert!(err.contains("unet_clip.safetensors") && err.contains("has no VAE") && err.contains("`vae`"), "{err}");
    for config_dir in [c.spec.config_dir.clone(), None] {
        let tokenizer_dir = Some(fixtures().join("single-file/config/tokenizer"));
        let spec = LoadSpec { model_dir: bare.clone(), config_dir, tokenizer_dir, ..c.spec.clone() };
        assert_matches("single_file", &c.name, "no VAE in the file + --vae", &run(spec, &c.req));
    }
}
