//! Textual-inversion embeddings against diffusers' `load_textual_inversion` (records of
//! tests/fixtures/generate_embeddings.py): A1111 `emb_params` and `string_to_param` files, a diffusers
//! `learned_embeds` file named by its own token, SDXL `clip_l` + `clip_g`; multi-vector tokens
//! expanded as `maybe_convert_prompt` expands them. The token ids and text-encoder outputs match per
//! model call (relative L2 < 1e-4), the images end to end (< 1e-3); an embeddings folder loads as A1111
//! reads one; bad files are refused naming the file and what is wrong.

mod common;
#[path = "common/recorded_case.rs"]
mod recorded_case;

use std::path::{Path, PathBuf};

use common::{against_record, fixtures, read_tensors, write_tensors};
use lcm_core::{rel_l2, SafeTensorsFile};
use lcm_cpu::CpuBackend;
use lcm_models::arch::clip::output;
use lcm_pipeline::embeddings::{load_embedding, scan_embeddings_dir};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::LoadSpec;
use safetensors::Dtype;
use serde_json::Value;

const SET: &str = "embeddings";

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("records/embeddings/cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap()
}

#[test]
fn pipelines_with_embeddings_match_diffusers() {
    let cases = cases();
    assert!(cases.len() >= 4, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (spec, req) = recorded_case::case(&fixtures(), SET, name(c));
        assert!(!spec.embeddings.is_empty(), "{}: no embedding", name(c));
        let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{}: {e}", name(c)));
        let out = pipe.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", name(c)));
        failures.extend(against_record(SET, name(c), &out));
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}

/// The ids each tokenizer gives the prompt (multi-vector tokens expanded) are diffusers', and the text
/// encoders' outputs with the grown tables are `encode_prompt`'s.
#[test]
fn token_ids_and_text_encoder_outputs_match_diffusers() {
    let be = CpuBackend::new();
    let rec = SafeTensorsFile::open(fixtures().join("records/embeddings/text.safetensors")).unwrap();
    let get = |k: &str| rec.get(k).unwrap_or_else(|e| panic!("{e}")).to_f32();
    for c in cases() {
        let n = name(&c);
        let (spec, req) = recorded_case::case(&fixtures(), SET, n);
        let mut parts = lcm_pipeline::load::load(&be, &spec).unwrap_or_else(|e| panic!("{n}: {e}"));
        let text = &mut parts.text;
        let ids_of = |tok: &lcm_pipeline::tokenizer::ClipTokenizer| -> Vec<i32> {
            let prompt = tok.convert_prompt(&req.prompt).unwrap();
            tok.encode(&prompt).unwrap().iter().map(|&i| i as i32).collect()
        };
        let ids = ids_of(&text.first.tokenizer);
        let want: Vec<i32> = get(&format!("{n}/ids")).iter().map(|&v| v as i32).collect();
        assert_eq!(ids, want, "{n}: first tokenizer's ids");
        let embeds = get(&format!("{n}/prompt_embeds"));
        match text.second.as_mut() {
            None => {
                let ours = text.first.model.forward(&be, &ids, 1).unwrap();
                let err = rel_l2(&ours.data, &embeds);
                println!("{n:<22} prompt_embeds rel L2 {err:.2e}");
                assert!(err < 1e-4, "{n}: prompt_embeds rel L2 {err:.2e}");
            }
            Some(second) => {
                let ids_2 = ids_of(&second.tokenizer);
                let want: Vec<i32> = get(&format!("{n}/ids_2")).iter().map(|&v| v as i32).collect();
                assert_eq!(ids_2, want, "{n}: second tokenizer's ids");
                let a = text.first.model.forward_outputs(&be, &ids, 1).unwrap().swap_remove(output::CONTEXT);
                let b = second.model.forward_outputs(&be, &ids_2, 1).unwrap().swap_remove(output::CONTEXT);
                let (wa, wb) = (a.shape[2], b.shape[2]);
                let joined: Vec<f32> = (0..77)
                    .flat_map(|t| a.data[t * wa..(t + 1) * wa].iter().chain(&b.data[t * wb..(t + 1) * wb]).copied())
                    .collect();
                let err = rel_l2(&joined, &embeds);
                let pooled = second.model.text_embeds(&be, &ids_2, 1).unwrap();
                let err_pooled = rel_l2(&pooled.data, &get(&format!("{n}/pooled_prompt_embeds")));
                println!("{n:<22} prompt_embeds rel L2 {err:.2e}, pooled {err_pooled:.2e}");
                assert!(err < 1e-4 && err_pooled < 1e-4, "{n}: rel L2 {err:.2e}, pooled {err_pooled:.2e}");
            }
        }
    }
}

fn tiny_sd_spec() -> LoadSpec {
    LoadSpec { model_dir: fixtures().join("tiny-sd"), ..LoadSpec::default() }
}

fn tiny_sdxl_spec() -> LoadSpec {
    LoadSpec { model_dir: fixtures().join("sdxl/tiny-sdxl"), ..LoadSpec::default() }
}

fn emb(rel: &str) -> PathBuf {
    fixtures().join("embeddings").join(rel)
}

/// The trigger words A1111's syntax needs: the word's plain BPE ids (no added token), and the new ids.
#[test]
fn trigger_words_carry_bpe_ids_and_new_rows() {
    let be = CpuBackend::new();
    let spec = LoadSpec {
        embeddings: vec![
            (emb("a1111_emb_params.safetensors"), Some("<emb>".into())),
            (emb("cat-toy/learned_embeds.safetensors"), None),
        ],
        ..tiny_sd_spec()
    };
    let parts = lcm_pipeline::load::load(&be, &spec).unwrap();
    let text = &parts.text;
    let tok = &text.first.tokenizer;
    let set = &text.embeddings;
    let (triggers, none) = (&set.triggers[0], &set.triggers[1]);
    assert!(none.is_empty(), "one text encoder: no second encoder's triggers");
    assert_eq!(triggers.len(), 2);
    assert_eq!(triggers[0].vectors, [49408, 49409]);
    assert_eq!(triggers[1].vectors, [49410]);
    assert_eq!(set.loaded[1].trigger, "<cat-toy>", "a diffusers file is named by its own token");
    assert_eq!(set.loaded[0].tokens, ["<emb>", "<emb>_1"]);
    assert_eq!(text.first.model.config.vocab_size, 49411);
    // The trigger's tokens are BPE pieces of "<emb>", all in the base vocabulary; the tokenizer with
    // the added tokens gives the new id instead.
    let bpe = &triggers[0].tokens;
    assert!(bpe.len() > 1 && bpe.iter().all(|&i| i < 49408), "{bpe:?}");
    assert_eq!(tok.encode_base("<emb>").unwrap(), *bpe);
    assert_eq!(tok.encode_unpadded("<emb>").unwrap(), [49408]);
    assert_eq!(tok.convert_prompt("a <emb>, <cat-toy>").unwrap(), "a <emb> <emb>_1, <cat-toy>");
}

/// A folder read as A1111 reads embeddings/: stems are trigger words; a pickle, an image and an SDXL
/// embedding (on an SD1.5 model) are skipped with why; the result equals the explicit file's.
#[test]
fn embeddings_folder_loads_like_a1111_and_matches_the_explicit_file() {
    let dir = TempDir::new("dir");
    let sub = dir.0.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(emb("a1111_emb_params.safetensors"), dir.0.join("<emb>.safetensors")).unwrap();
    std::fs::copy(emb("a1111_string_to_param.safetensors"), sub.join("s2p.safetensors")).unwrap();
    std::fs::copy(emb("sdxl_emb.safetensors"), dir.0.join("xl.safetensors")).unwrap();
    std::fs::write(dir.0.join("old.pt"), b"PK\x03\x04 a torch zip").unwrap();
    std::fs::write(dir.0.join("cat.png"), b"\x89PNG").unwrap();
    std::fs::write(dir.0.join("s2p.preview.png"), b"\x89PNG").unwrap();
    std::fs::write(dir.0.join("notes.txt"), b"hello").unwrap();

    let scanned = scan_embeddings_dir(&dir.0).unwrap();
    let triggers: Vec<&str> = scanned.embeddings.iter().map(|e| e.trigger.as_str()).collect();
    assert_eq!(triggers, ["<emb>", "s2p", "xl"]);
    let skipped: Vec<String> = scanned.skipped.iter().map(|s| file_name(&s.path)).collect();
    assert_eq!(skipped, ["cat.png", "old.pt"]);
    assert!(scanned.skipped[1].reason.contains("pickle"), "{}", scanned.skipped[1].reason);

    let (spec, req) = recorded_case::case(&fixtures(), SET, "ti_sd_a1111_2vec");
    let spec = LoadSpec { embeddings: Vec::new(), embeddings_dir: Some(dir.0.clone()), ..spec };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let set = pipe.embeddings();
    let loaded: Vec<&str> = set.loaded.iter().map(|l| l.trigger.as_str()).collect();
    assert_eq!(loaded, ["<emb>", "s2p"]);
    let xl = set.skipped.iter().find(|s| file_name(&s.path) == "xl.safetensors").expect("SDXL embedding skipped");
    assert!(xl.reason.contains("SDXL embedding"), "{}", xl.reason);
    let out = pipe.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(against_record(SET, "ti_sd_a1111_2vec", &out), None);
}

/// Swapping LoRAs re-reads text-encoder weights from their source: the grown table survives.
#[test]
fn lora_swaps_keep_the_embeddings() {
    let (spec, req) = recorded_case::case(&fixtures(), SET, "ti_sd_a1111_2vec");
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let lora = lcm_pipeline::spec::LoraSpec { path: fixtures().join("loras/lora_peft.safetensors"), scale: 1.0 };
    pipe.set_loras(&[lora]).unwrap();
    pipe.set_loras(&[]).unwrap();
    let out = pipe.generate(&req, &mut |_| {}).unwrap();
    assert_eq!(against_record(SET, "ti_sd_a1111_2vec", &out), None);
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lcm-emb-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file of F32 tensors (and raw others) in `dir`.
fn write(dir: &TempDir, file: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
    let path = dir.0.join(file);
    let t = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), Dtype::F32, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    write_tensors(&path, &t);
    path
}

fn load_err(spec: LoadSpec) -> String {
    match Pipeline::load(CpuBackend::new(), spec) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_embedding_files_are_refused_by_name() {
    let dir = TempDir::new("bad");
    let ones = |n: usize| vec![0.5f32; n];

    // Pickles, by name or by their first bytes.
    let pt = dir.0.join("old.pt");
    std::fs::write(&pt, b"PK\x03\x04 a torch zip").unwrap();
    let e = load_embedding(&pt, None).unwrap_err().to_string();
    assert!(e.contains("old.pt") && e.contains("pickle") && e.contains("safetensors"), "{e}");

    // Shapes and contents no reader can use.
    let three = write(&dir, "three.safetensors", &[("emb_params", vec![1, 2, 16], ones(32))]);
    let e = load_embedding(&three, None).unwrap_err().to_string();
    assert!(e.contains("three.safetensors") && e.contains("emb_params") && e.contains("[1, 2, 16]"), "{e}");
    let mut nan = ones(16);
    nan[3] = f32::NAN;
    let bad = write(&dir, "nan.safetensors", &[("emb_params", vec![16], nan)]);
    let e = load_embedding(&bad, None).unwrap_err().to_string();
    assert!(e.contains("nan.safetensors") && e.contains("element 3"), "{e}");
    let many = write(&dir, "many.safetensors", &[("a", vec![16], ones(16)), ("b", vec![16], ones(16))]);
    let e = load_embedding(&many, None).unwrap_err().to_string();
    assert!(e.contains("many.safetensors") && e.contains("`a`, `b`") && e.contains("clip_l"), "{e}");
    let half = write(&dir, "half.safetensors", &[("clip_l", vec![2, 16], ones(32))]);
    let e = load_embedding(&half, None).unwrap_err().to_string();
    assert!(e.contains("half.safetensors") && e.contains("clip_g") && e.contains("missing"), "{e}");
    let uneven =
        write(&dir, "uneven.safetensors", &[("clip_l", vec![2, 16], ones(32)), ("clip_g", vec![3, 32], ones(96))]);
    let e = load_embedding(&uneven, None).unwrap_err().to_string();
    assert!(e.contains("uneven.safetensors") && e.contains("3 vectors") && e.contains("has 2"), "{e}");

    // A width neither encoder has: the file, the tensor, its width and the encoder's.
    let wide = write(&dir, "wide.safetensors", &[("emb_params", vec![2, 32], ones(64))]);
    let e = load_err(LoadSpec { embeddings: vec![(wide, None)], ..tiny_sd_spec() });
    assert!(e.contains("wide.safetensors") && e.contains("emb_params") && e.contains("32") && e.contains("16"), "{e}");

    // One family's embedding on the other's model (A1111 skips them; named files are errors here).
    let e = load_err(LoadSpec { embeddings: vec![(emb("sdxl_emb.safetensors"), None)], ..tiny_sd_spec() });
    assert!(e.contains("sdxl_emb.safetensors") && e.contains("SDXL embedding"), "{e}");
    let sd = emb("a1111_emb_params.safetensors");
    let e = load_err(LoadSpec { embeddings: vec![(sd.clone(), None)], ..tiny_sdxl_spec() });
    assert!(e.contains("a1111_emb_params.safetensors") && e.contains("clip_l") && e.contains("clip_g"), "{e}");
    let g_wide = write(&dir, "g.safetensors", &[("clip_l", vec![1, 16], ones(16)), ("clip_g", vec![1, 16], ones(16))]);
    let e = load_err(LoadSpec { embeddings: vec![(g_wide, None)], ..tiny_sdxl_spec() });
    assert!(e.contains("g.safetensors") && e.contains("clip_g") && e.contains("32"), "{e}");

    // Token names: one in the vocabulary (diffusers' refusal), two embeddings with one name.
    let e = load_err(LoadSpec { embeddings: vec![(sd.clone(), Some("cat".into()))], ..tiny_sd_spec() });
    assert!(e.contains("a1111_emb_params.safetensors") && e.contains("`cat`") && e.contains("vocabulary"), "{e}");
    let twice = vec![(sd.clone(), Some("<x>".into())), (emb("cat-toy/learned_embeds.safetensors"), Some("<x>".into()))];
    let e = load_err(LoadSpec { embeddings: twice, ..tiny_sd_spec() });
    assert!(e.contains("learned_embeds.safetensors") && e.contains("<x>"), "{e}");
    // "<x>_1" is the 2-vector "<x>"'s second token.
    let clash =
        vec![(sd.clone(), Some("<x>".into())), (emb("cat-toy/learned_embeds.safetensors"), Some("<x>_1".into()))];
    let e = load_err(LoadSpec { embeddings: clash, ..tiny_sd_spec() });
    assert!(e.contains("learned_embeds.safetensors") && e.contains("<x>_1"), "{e}");
    let e = load_err(LoadSpec { embeddings: vec![(dir.0.join("absent.safetensors"), None)], ..tiny_sd_spec() });
    assert!(e.contains("absent.safetensors") && e.contains("not found"), "{e}");
    let e = load_err(LoadSpec { embeddings_dir: Some(dir.0.join("nowhere")), ..tiny_sd_spec() });
    assert!(e.contains("nowhere") && e.contains("not found"), "{e}");
}

/// Embedding files in F16 and BF16 widen exactly; `string_to_token.*` beside `string_to_param.*` is
/// ignored; the trigger word is the stem for A1111 files and the key for diffusers files.
#[test]
fn file_formats_and_trigger_words() {
    let e = load_embedding(emb("a1111_emb_params.safetensors"), None).unwrap();
    assert_eq!((e.trigger.as_str(), e.vectors(), e.first.width), ("a1111_emb_params", 2, 16));
    let raw = read_tensors(&emb("a1111_emb_params.safetensors"));
    assert_eq!(raw[0].1, Dtype::F16);
    let e = load_embedding(emb("a1111_string_to_param.safetensors"), Some("<s>")).unwrap();
    assert_eq!((e.trigger.as_str(), e.vectors(), e.first.tensor.as_str()), ("<s>", 3, "string_to_param.*"));
    let e = load_embedding(emb("cat-toy/learned_embeds.safetensors"), None).unwrap();
    assert_eq!((e.trigger.as_str(), e.vectors()), ("<cat-toy>", 1));
    let e = load_embedding(emb("sdxl_emb.safetensors"), None).unwrap();
    let g = e.second.as_ref().unwrap();
    assert_eq!((e.trigger.as_str(), e.vectors(), e.first.width, g.width), ("sdxl_emb", 2, 16, 32));
}

/// A single-file checkpoint's text encoder grows the same way (its table read again from the mapped
/// file): an embedding whose vector is the row of the word `a` encodes exactly as `a` does.
#[test]
fn single_file_text_encoder_takes_embeddings() {
    let be = CpuBackend::new();
    let ck = fixtures().join("single-file/sd15_tiny.safetensors");
    let config = fixtures().join("single-file/config");
    let tok = lcm_pipeline::tokenizer::ClipTokenizer::from_dir(config.join("tokenizer")).unwrap();
    let word = tok.encode_unpadded("a").unwrap();
    assert_eq!(word.len(), 1, "one token");
    let file = SafeTensorsFile::open(&ck).unwrap();
    let table = file.get("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight").unwrap();
    let width = table.shape[1];
    let at = word[0] as usize * width;
    let row = table.to_f32()[at..at + width].to_vec();
    let dir = TempDir::new("sf");
    let path = write(&dir, "a.safetensors", &[("emb_params", vec![1, width], row)]);
    let spec = LoadSpec {
        model_dir: ck,
        config_dir: Some(config),
        embeddings: vec![(path, Some("<p>".into()))],
        ..LoadSpec::default()
    };
    let mut parts = lcm_pipeline::load::load(&be, &spec).unwrap();
    let te = &mut parts.text.first;
    let ids = |p: &str| te.tokenizer.encode(p).unwrap().iter().map(|&i| i as i32).collect::<Vec<_>>();
    let (plain, with) = (ids("a dog and a cat"), ids("a dog and <p> cat"));
    assert_eq!(te.model.config.vocab_size, table.shape[0] + 1);
    assert_ne!(plain, with);
    let a = te.model.forward(&be, &plain, 1).unwrap();
    let b = te.model.forward(&be, &with, 1).unwrap();
    assert_eq!(a.data, b.data);
}
