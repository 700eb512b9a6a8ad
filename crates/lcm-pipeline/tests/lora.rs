//! LoRA parsing, name resolution and merging against the weights diffusers' `fuse_lora` produced
//! (records written by tests/fixtures/generate_pipeline.py), plus the errors a bad file must raise.

mod common;

use common::fixtures;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use lcm_core::{rel_l2, SafeTensorsFile, WeightFiles};
use lcm_models::checkpoint::ldm::UnetLayout;
use lcm_models::{ClipConfig, UnetConfig};
use lcm_pipeline::lora::{LoraFile, LoraSet, Targets};
use safetensors::tensor::{serialize_to_file, TensorView};
use safetensors::Dtype;

fn lora(name: &str) -> PathBuf {
    fixtures().join("loras").join(name)
}

fn unet_config() -> UnetConfig {
    UnetConfig::from_file(&fixtures().join("tiny-sd/unet/config.json")).unwrap()
}

fn targets(clip_skip: usize) -> Targets {
    let clip = ClipConfig::from_file(&fixtures().join("tiny-sd/text_encoder/config.json"), clip_skip).unwrap();
    Targets::for_models(&unet_config(), &clip).unwrap()
}

/// The tiny-sd base weights of every LoRA-able spec, by graph name.
fn base_weights(t: &Targets) -> BTreeMap<String, Vec<f32>> {
    let unet = WeightFiles::open(fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    let te = WeightFiles::open(fixtures().join("tiny-sd/text_encoder/model.fp16.safetensors")).unwrap();
    let mut out = BTreeMap::new();
    for (files, specs) in [(&unet, &t.unet), (&te, &t.text_encoder)] {
        for spec in specs.iter() {
            out.insert(spec.name.clone(), files.get_shaped(&spec.name, &spec.shape).unwrap().to_f32());
        }
    }
    out
}

/// Runs every weight of both models through the merge hook, as the loaders do, and checks `finish`.
fn merge(loras: &[(PathBuf, f32)], clip_skip: usize) -> BTreeMap<String, Vec<f32>> {
    let t = targets(clip_skip);
    let set = LoraSet::open(loras).unwrap();
    let mut merger = set.resolve(&t).unwrap();
    let mut weights = base_weights(&t);
    {
        let mut hook = merger.hook();
        for spec in t.unet.iter().chain(&t.text_encoder) {
            hook(spec, weights.get_mut(&spec.name).unwrap()).unwrap();
        }
    }
    merger.finish().unwrap();
    weights
}

fn delta(merged: &[f32], base: &[f32]) -> Vec<f32> {
    merged.iter().zip(base).map(|(m, b)| m - b).collect()
}

/// Rewrites a fixture LoRA (as F32) after `edit`, keeping or replacing its header metadata.
fn rewrite(
    src: &str,
    dst: &Path,
    keep_metadata: bool,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> PathBuf {
    let file = SafeTensorsFile::open(lora(src)).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .names()
        .map(|n| {
            let v = file.get(n).unwrap();
            (n.to_string(), v.shape.to_vec(), v.to_f32())
        })
        .collect();
    edit(&mut tensors);
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
    let metadata = keep_metadata.then(|| header_metadata(&lora(src)));
    serialize_to_file(views, metadata, dst).unwrap();
    dst.to_path_buf()
}

fn header_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn open_err(path: &Path) -> String {
    LoraFile::open(path, 1.0).err().expect("opening should fail").to_string()
}

fn resolve_err(path: &Path) -> String {
    let set = LoraSet::open(&[(path, 1.0)]).unwrap();
    set.resolve(&targets(0)).err().expect("resolving should fail").to_string()
}

#[test]
fn ldm_names_follow_the_sd15_structure() {
    let sd15 = UnetLayout::new(vec![2; 4], vec![true, true, true, false]);
    for (ldm, diffusers) in [
        ("input_blocks.0.0", "conv_in"),
        ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks.4.1", "down_blocks.1.attentions.0"),
        ("input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut"),
        (
            "input_blocks.8.1.transformer_blocks.0.attn1.to_q",
            "down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q",
        ),
        ("input_blocks.11.0.emb_layers.1", "down_blocks.3.resnets.1.time_emb_proj"),
        ("middle_block.0.out_layers.3", "mid_block.resnets.0.conv2"),
        ("middle_block.1", "mid_block.attentions.0"),
        ("middle_block.2.in_layers.0", "mid_block.resnets.1.norm1"),
        ("output_blocks.0.0.out_layers.0", "up_blocks.0.resnets.0.norm2"),
        ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
        ("output_blocks.8.2.conv", "up_blocks.2.upsamplers.0.conv"),
        ("output_blocks.11.1.proj_out", "up_blocks.3.attentions.2.proj_out"),
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2.bias", "time_embedding.linear_2.bias"),
        ("out.0", "conv_norm_out"),
        ("out.2.weight", "conv_out.weight"),
    ] {
        assert_eq!(sd15.to_diffusers(ldm).as_deref(), Some(diffusers), "{ldm}");
        assert_eq!(sd15.to_ldm(diffusers).as_deref(), Some(ldm), "{diffusers}");
    }
    for unknown in ["input_blocks.12.0", "output_blocks.11.2.conv", "input_blocks.1.0.in_layers.1", "input_blocks.1"] {
        assert_eq!(sd15.to_diffusers(unknown), None, "{unknown}");
    }
    assert_eq!(sd15.to_ldm("time_embedding.cond_proj"), None);
}

/// The tiny fixtures' structure: SD1.5's levels with one resnet per down block (two slots per level).
#[test]
fn ldm_names_follow_the_tiny_structure() {
    let tiny = UnetLayout::new(vec![1; 4], vec![true, true, true, false]);
    let config = unet_config();
    if config.layers_per_block == [1; 4] {
        assert_eq!(UnetLayout::from_config(&config), tiny);
    }
    for (ldm, diffusers) in [
        ("input_blocks.1.1", "down_blocks.0.attentions.0"),
        ("input_blocks.2.0.op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks.3.0.in_layers.2", "down_blocks.1.resnets.0.conv1"),
        ("input_blocks.7.0.out_layers.3", "down_blocks.3.resnets.0.conv2"),
        ("output_blocks.1.1.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.2.1", "up_blocks.1.attentions.0"),
        ("output_blocks.3.2.conv", "up_blocks.1.upsamplers.0.conv"),
        ("output_blocks.7.1.proj_in", "up_blocks.3.attentions.1.proj_in"),
    ] {
        assert_eq!(tiny.to_diffusers(ldm).as_deref(), Some(diffusers), "{ldm}");
        assert_eq!(tiny.to_ldm(diffusers).as_deref(), Some(ldm), "{diffusers}");
    }
    assert_eq!(tiny.to_diffusers("input_blocks.8.0"), None);
}

/// Every weight of a UNet maps to a distinct LDM name and back, for SD1.5's structure and for one with
/// uneven levels (1, 3, 2 resnets; no attention at the first level).
#[test]
fn ldm_names_round_trip_every_unet_weight() {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-sd/unet/config.json")).unwrap()).unwrap();
    config["block_out_channels"] = serde_json::json!([32, 32, 64]);
    config["layers_per_block"] = serde_json::json!([1, 3, 2]);
    config["down_block_types"] = serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]);
    config["up_block_types"] = serde_json::json!(["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]);
    let path = scratch("uneven_unet_config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let uneven = UnetConfig::from_file(&path).unwrap();
    let layout = UnetLayout::from_config(&uneven);
    assert_eq!(layout.to_ldm("down_blocks.0.downsamplers.0.conv").as_deref(), Some("input_blocks.2.0.op"));
    assert_eq!(layout.to_ldm("down_blocks.1.attentions.2").as_deref(), Some("input_blocks.5.1"));
    assert_eq!(layout.to_ldm("down_blocks.2.resnets.1").as_deref(), Some("input_blocks.8.0"));
    assert_eq!(layout.to_ldm("up_blocks.0.upsamplers.0.conv").as_deref(), Some("output_blocks.2.2.conv"));
    assert_eq!(layout.to_ldm("up_blocks.1.attentions.3").as_deref(), Some("output_blocks.6.1"));
    assert_eq!(layout.to_ldm("up_blocks.1.upsamplers.0.conv").as_deref(), Some("output_blocks.6.2.conv"));
    assert_eq!(layout.to_ldm("up_blocks.2.resnets.1.conv1").as_deref(), Some("output_blocks.8.0.in_layers.2"));

    for config in [unet_config(), uneven] {
        let layout = UnetLayout::from_config(&config);
        let specs = config.graph(1, 8, 8, 1).unwrap().weights;
        let mut seen = HashMap::new();
        for spec in &specs {
            let ldm = layout.to_ldm(&spec.name).unwrap_or_else(|| panic!("{} has no LDM name", spec.name));
            assert_eq!(layout.to_diffusers(&ldm).as_deref(), Some(spec.name.as_str()), "{ldm}");
            if let Some(other) = seen.insert(ldm.clone(), spec.name.clone()) {
                panic!("{other} and {} both map to {ldm}", spec.name);
            }
        }
        assert!(specs.len() > 300, "{} UNet weights", specs.len());
    }
}

#[test]
fn each_format_matches_diffusers_fuse_lora() {
    let record = SafeTensorsFile::open(fixtures().join("records/lora_merged_unet.safetensors")).unwrap();
    let base = base_weights(&targets(0));
    for file in ["lora_peft.safetensors", "lora_kohya.safetensors", "lora_kohya_ldm.safetensors"] {
        let merged = merge(&[(lora(file), 1.0)], 0);
        let mut checked = 0;
        for name in record.names() {
            let graph_name = name.strip_prefix("unet.").or_else(|| name.strip_prefix("text_encoder.")).unwrap();
            let want = record.get(name).unwrap().to_f32();
            let base = &base[graph_name];
            // The record holds a real delta (~30% of the weight), so a merge that did nothing fails.
            assert!(rel_l2(base, &want) > 0.05, "{name}: the record barely differs from the base weight");
            let err = rel_l2(&merged[graph_name], &want);
            assert!(err < 1e-5, "{file}: {name}: relative L2 {err:e}");
            checked += 1;
        }
        assert_eq!(checked, 13);
    }
}

#[test]
fn the_three_formats_give_identical_weights() {
    let set = LoraSet::open(&[(lora("lora_peft.safetensors"), 1.0)]).unwrap();
    let t = targets(0);
    let merger = set.resolve(&t).unwrap();
    // Every module hits its own weight; the file holds all LCM-LoRA target kinds.
    let modules = set.files[0].tensors.len();
    assert_eq!(merger.targets().count(), modules);
    for kind in
        ["to_q", "to_out.0", "proj_in", "ff.net.2", "conv_shortcut", "time_emb_proj", "upsamplers.0.conv", "fc1"]
    {
        assert!(merger.targets().any(|n| n.contains(kind)), "no {kind} target");
    }
    assert!(set.files[0].tensors.iter().all(|m| m.rank == 4 && m.alpha == Some(8.0) && m.scale == 2.0));
    let peft = merge(&[(lora("lora_peft.safetensors"), 1.0)], 0);
    for file in ["lora_kohya.safetensors", "lora_kohya_ldm.safetensors"] {
        let other = merge(&[(lora(file), 1.0)], 0);
        for name in merger.targets() {
            assert_eq!(peft[name], other[name], "{file}: {name}");
        }
    }
}

#[test]
fn user_scale_scales_the_delta() {
    let base = base_weights(&targets(0));
    let full = merge(&[(lora("lora_kohya.safetensors"), 1.0)], 0);
    let part = merge(&[(lora("lora_kohya.safetensors"), 0.7)], 0);
    let mut changed = 0;
    for (name, b) in &base {
        let want: Vec<f32> = delta(&full[name], b).iter().map(|d| 0.7 * d).collect();
        let got = delta(&part[name], b);
        if want.iter().any(|&d| d != 0.0) {
            changed += 1;
            let err = rel_l2(&got, &want);
            assert!(err < 1e-5, "{name}: {err:e}");
        } else {
            assert_eq!(part[name], *b, "{name} is not a target and must pass unchanged");
        }
    }
    assert_eq!(changed, LoraFile::open(lora("lora_kohya.safetensors"), 1.0).unwrap().tensors.len());
}

#[test]
fn two_loras_add() {
    let base = base_weights(&targets(0));
    let one = merge(&[(lora("lora_peft.safetensors"), 1.0)], 0);
    let two = merge(&[(lora("lora2_peft.safetensors"), 0.5)], 0);
    let both = merge(&[(lora("lora_peft.safetensors"), 1.0), (lora("lora2_peft.safetensors"), 0.5)], 0);
    let set = LoraSet::open(&[(lora("lora2_peft.safetensors"), 0.5)]).unwrap();
    assert!(set.files[0].tensors.iter().all(|m| m.rank == 2 && m.scale == 1.5), "rank 2, alpha 3 from the header");
    for (name, b) in &base {
        let want: Vec<f32> = delta(&one[name], b).iter().zip(delta(&two[name], b)).map(|(x, y)| x + y).collect();
        let got = delta(&both[name], b);
        assert!(rel_l2(&got, &want) < 1e-5, "{name}");
    }
}

/// The LoRA delta is what `factors` hands a backend that applies it unmerged: scale · up @ down.
#[test]
fn factors_reproduce_the_merged_delta() {
    let t = targets(0);
    let set = LoraSet::open(&[(lora("lora_kohya_ldm.safetensors"), 0.7)]).unwrap();
    let merger = set.resolve(&t).unwrap();
    let base = base_weights(&t);
    let merged = merge(&[(lora("lora_kohya_ldm.safetensors"), 0.7)], 0);
    for name in ["down_blocks.0.resnets.0.conv1.weight", "text_model.encoder.layers.1.mlp.fc2.weight"] {
        let factors = merger.factors(name).unwrap();
        assert_eq!(factors.len(), 1);
        let f = &factors[0];
        assert!((f.scale - 0.7 * 2.0).abs() < 1e-6, "user 0.7 × alpha 8 / rank 4");
        let out = f.up.len() / f.rank;
        let k = f.down.len() / f.rank;
        let mut want = vec![0.0f32; out * k];
        for o in 0..out {
            for j in 0..k {
                let s: f64 = (0..f.rank).map(|r| f.up[o * f.rank + r] as f64 * f.down[r * k + j] as f64).sum();
                want[o * k + j] = (f.scale as f64 * s) as f32;
            }
        }
        let err = rel_l2(&delta(&merged[name], &base[name]), &want);
        assert!(err < 1e-5, "{name}: {err:e}");
    }
    assert!(merger.factors("conv_in.weight").unwrap().is_empty());
}

/// Text-encoder keys without the `text_model` level (transformers 5), and one file mixing kohya UNet
/// modules with peft text-encoder modules, merge the same numbers.
#[test]
fn text_encoder_spellings_and_mixed_files() {
    let peft_short = rewrite("lora_peft.safetensors", &scratch("peft_short.safetensors"), true, |ts| {
        for (n, _, _) in ts.iter_mut() {
            *n = n.replace("text_encoder.text_model.", "text_encoder.");
        }
    });
    let kohya_short = rewrite("lora_kohya.safetensors", &scratch("kohya_short.safetensors"), false, |ts| {
        for (n, _, _) in ts.iter_mut() {
            *n = n.replace("lora_te_text_model_", "lora_te_");
        }
    });
    let mixed = rewrite("lora_kohya_ldm.safetensors", &scratch("mixed.safetensors"), false, |ts| {
        ts.retain(|(n, _, _)| n.starts_with("lora_unet_"));
        let peft = SafeTensorsFile::open(lora("lora_peft.safetensors")).unwrap();
        for n in peft.names().filter(|n| n.starts_with("text_encoder.")) {
            let v = peft.get(n).unwrap();
            ts.push((n.to_string(), v.shape.to_vec(), v.to_f32()));
        }
        // peft modules without header metadata take alpha from an `.alpha` tensor.
        let stems: Vec<String> =
            ts.iter().filter_map(|(n, _, _)| n.strip_suffix(".lora_A.weight").map(str::to_string)).collect();
        ts.extend(stems.into_iter().map(|s| (format!("{s}.alpha"), vec![], vec![8.0])));
    });
    let want = merge(&[(lora("lora_peft.safetensors"), 1.0)], 0);
    for file in [peft_short, kohya_short, mixed] {
        assert_eq!(merge(&[(file.clone(), 1.0)], 0), want, "{}", file.display());
    }
}

/// diffusers' files carry alpha only in the header; without it alpha = rank (scale 1, half of 2).
#[test]
fn peft_alpha_comes_from_the_header_metadata() {
    let bare = rewrite("lora_peft.safetensors", &scratch("peft_bare.safetensors"), false, |_| {});
    let f = LoraFile::open(&bare, 1.0).unwrap();
    assert!(f.tensors.iter().all(|m| m.alpha.is_none() && m.scale == 1.0));
    let base = base_weights(&targets(0));
    let with = merge(&[(lora("lora_peft.safetensors"), 1.0)], 0);
    let without = merge(&[(bare, 1.0)], 0);
    let name = "mid_block.attentions.0.proj_out.weight";
    let half: Vec<f32> = delta(&with[name], &base[name]).iter().map(|d| d / 2.0).collect();
    assert!(rel_l2(&delta(&without[name], &base[name]), &half) < 1e-5);
}

#[test]
fn a_lora_on_a_layer_clip_skip_removes_is_skipped() {
    let set = LoraSet::open(&[(lora("lora_kohya.safetensors"), 1.0)]).unwrap();
    let merger = set.resolve(&targets(1)).unwrap();
    let skipped: Vec<&str> = merger.skipped().map(|(_, stem)| stem).collect();
    assert_eq!(skipped.len(), 6, "{skipped:?}");
    assert!(skipped.iter().all(|s| s.starts_with("lora_te_text_model_encoder_layers_2_")), "{skipped:?}");
    // Merging all loaded weights succeeds, and `finish` does not ask for the skipped layer.
    let merged = merge(&[(lora("lora_kohya.safetensors"), 1.0)], 1);
    assert!(!merged.contains_key("text_model.encoder.layers.2.mlp.fc1.weight"));
}

#[test]
fn finish_reports_targets_that_never_loaded() {
    let t = targets(0);
    let set = LoraSet::open(&[(lora("lora_peft.safetensors"), 1.0)]).unwrap();
    let mut merger = set.resolve(&t).unwrap();
    let mut weights = base_weights(&t);
    for spec in &t.unet {
        merger.apply(spec, weights.get_mut(&spec.name).unwrap()).unwrap();
    }
    let err = merger.finish().unwrap_err().to_string();
    assert!(err.contains("never loaded") && err.contains("text_encoder.text_model."), "{err}");
    assert!(err.contains("17 more"), "{err}");
}

#[test]
fn a_module_the_model_lacks_is_an_error_naming_it() {
    let path = rewrite("lora_kohya.safetensors", &scratch("extra.safetensors"), false, |ts| {
        ts.push(("lora_unet_foo.lora_down.weight".into(), vec![4, 32], vec![0.1; 128]));
        ts.push(("lora_unet_foo.lora_up.weight".into(), vec![32, 4], vec![0.1; 128]));
    });
    let err = resolve_err(&path);
    assert!(err.contains("lora_unet_foo.lora_down.weight") && err.contains("matches no module of the UNet"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn one_weight_targeted_twice_in_a_file_is_an_error() {
    // The same module under its diffusers and its LDM name.
    let layout = UnetLayout::from_config(&unet_config());
    let ldm = layout.to_ldm("down_blocks.0.resnets.0.conv1").unwrap().replace('.', "_");
    let path = rewrite("lora_kohya.safetensors", &scratch("twice.safetensors"), false, |ts| {
        let copies: Vec<_> = ts
            .iter()
            .filter(|(n, _, _)| n.starts_with("lora_unet_down_blocks_0_resnets_0_conv1."))
            .map(|(n, s, d)| (n.replace("down_blocks_0_resnets_0_conv1", &ldm), s.clone(), d.clone()))
            .collect();
        assert_eq!(copies.len(), 3);
        ts.extend(copies);
    });
    let err = resolve_err(&path);
    assert!(err.contains("down_blocks.0.resnets.0.conv1.weight") && err.contains("same file"), "{err}");
}

#[test]
fn factors_that_do_not_fit_are_errors() {
    // Rank: down has rank 4, up 3.
    let path = rewrite("lora_kohya.safetensors", &scratch("rank.safetensors"), false, |ts| {
        let up =
            ts.iter_mut().find(|(n, _, _)| n == "lora_unet_mid_block_attentions_0_proj_out.lora_up.weight").unwrap();
        up.1 = vec![64, 3, 1, 1];
        up.2.truncate(64 * 3);
    });
    let err = open_err(&path);
    assert!(
        err.contains("lora_unet_mid_block_attentions_0_proj_out.lora_down.weight") && err.contains("rank"),
        "{err}"
    );

    // Input size: down [4, 16] on a [32, 32] weight.
    let path = rewrite("lora_peft.safetensors", &scratch("fit.safetensors"), true, |ts| {
        let key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight";
        let down = ts.iter_mut().find(|(n, _, _)| n == key).unwrap();
        down.1 = vec![4, 16];
        down.2.truncate(64);
    });
    let err = resolve_err(&path);
    assert!(err.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"), "{err}");
    assert!(err.contains("does not fit") && err.contains(".lora_A.weight"), "{err}");

    // Half a pair.
    let path = rewrite("lora_kohya.safetensors", &scratch("half.safetensors"), false, |ts| {
        ts.retain(|(n, _, _)| n != "lora_unet_down_blocks_1_resnets_0_conv2.lora_up.weight");
    });
    let err = open_err(&path);
    assert!(err.contains("lora_unet_down_blocks_1_resnets_0_conv2.") && err.contains("lora_up"), "{err}");
}

#[test]
fn bad_files_are_errors_naming_them() {
    let missing = scratch("no_such_lora.safetensors");
    let err = open_err(&missing);
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let not_safetensors = scratch("not_safetensors.safetensors");
    std::fs::write(&not_safetensors, b"this is not a safetensors file at all").unwrap();
    let err = open_err(&not_safetensors);
    assert!(err.contains("not a valid safetensors"), "{err}");

    let path = rewrite("lora_kohya.safetensors", &scratch("unknown_key.safetensors"), false, |ts| {
        ts.push(("model.diffusion_model.foo.weight".into(), vec![2], vec![1.0, 2.0]));
    });
    let err = open_err(&path);
    assert!(
        err.contains("model.diffusion_model.foo.weight") && err.contains("none of the known LoRA formats"),
        "{err}"
    );
}

/// The merger plugs into the model loaders as their weight hook, one hook across two models.
#[test]
fn the_hook_plugs_into_the_model_loaders() {
    use lcm_models::{ClipTextModel, LoadOptions, Unet, Variant};
    let backend = lcm_cpu::CpuBackend::new();
    let set = LoraSet::open(&[(lora("lora_peft.safetensors"), 1.0)]).unwrap();
    let mut merger = set.resolve(&targets(0)).unwrap();
    let mut hook = merger.hook();
    let dir = fixtures().join("tiny-sd/text_encoder");
    ClipTextModel::load(&backend, &dir, 0, LoadOptions { variant: Variant::PreferFull, hook: Some(&mut hook) })
        .unwrap();
    drop(hook);
    let err = merger.finish().unwrap_err().to_string();
    assert!(err.contains("unet.") && err.contains("never loaded"), "only UNet targets are left: {err}");
    let mut hook = merger.hook();
    let dir = fixtures().join("tiny-sd/unet");
    Unet::load(&backend, &dir, LoadOptions { variant: Variant::PreferFull, hook: Some(&mut hook) }).unwrap();
    drop(hook);
    merger.finish().unwrap();
}
