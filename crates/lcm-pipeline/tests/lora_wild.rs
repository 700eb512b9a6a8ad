//! LoRA spellings seen in the wild for SD1.5, beyond the recorded kohya/LDM/peft cases: diffusers'
//! attention-processor files resolve to the same weights as peft names, and the kinds diffusers cannot
//! load (or loads wrongly) are refused naming the key. (`lora_te1_` is covered end to end by the
//! single-file `sf_lora` case; tests/fixtures/generate_single_file.py checks diffusers' behaviour for
//! each kind here.)

mod common;

use common::{fixtures, read_tensors, write_tensors, Tensors};

use std::fs;
use std::path::PathBuf;

use lcm_models::{ClipConfig, UnetConfig};
use lcm_pipeline::lora::{LoraSet, Targets};
use safetensors::Dtype;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-lora-wild-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn targets() -> Targets {
    let unet = UnetConfig::from_file(&fixtures().join("tiny-sd/unet/config.json")).unwrap();
    let te = ClipConfig::from_file(&fixtures().join("tiny-sd/text_encoder/config.json"), 0).unwrap();
    Targets::for_models(&unet, &te).unwrap()
}

/// `unet.<…>.attnN.to_q.lora_A.weight` → `unet.<…>.attnN.processor.to_q_lora.down.weight`.
fn processor_key(peft: &str) -> Option<String> {
    let (module, part) = peft.rsplit_once(".lora_")?;
    let factor = match part {
        "A.weight" => "down",
        "B.weight" => "up",
        _ => return None,
    };
    let (attn, proj) = module.rsplit_once(".to_")?;
    let proj = if proj == "out.0" { "out" } else { proj };
    Some(format!("{attn}.processor.to_{proj}_lora.{factor}.weight"))
}

#[test]
fn attention_processor_files_resolve_like_peft_names() {
    let dir = scratch("processor");
    let peft = read_tensors(&fixtures().join("loras/lora_peft.safetensors"));
    let attention: Tensors = peft.into_iter().filter(|(n, ..)| n.starts_with("unet.") && n.contains(".to_")).collect();
    assert!(attention.len() > 40, "{}", attention.len());
    let processor: Tensors =
        attention.iter().map(|(n, d, s, b)| (processor_key(n).unwrap(), *d, s.clone(), b.clone())).collect();
    let (a, b) = (dir.join("peft_attention.safetensors"), dir.join("processor.safetensors"));
    write_tensors(&a, &attention);
    write_tensors(&b, &processor);
    let t = targets();
    let (set_a, set_b) = (LoraSet::open(&[(&a, 1.0)]).unwrap(), LoraSet::open(&[(&b, 1.0)]).unwrap());
    let (ma, mb) = (set_a.resolve(&t).unwrap(), set_b.resolve(&t).unwrap());
    let names: Vec<&str> = ma.targets().collect();
    assert_eq!(names, mb.targets().collect::<Vec<_>>());
    assert!(names.iter().any(|n| n.ends_with("to_out.0.weight")));
    for name in names {
        let (fa, fb) = (&ma.factors(name).unwrap()[0], &mb.factors(name).unwrap()[0]);
        // Neither file carries an alpha: scale 1, as diffusers uses.
        assert_eq!(
            (fa.down.as_slice(), fa.up.as_slice(), fa.scale),
            (fb.down.as_slice(), fb.up.as_slice(), 1.0),
            "{name}"
        );
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn lora_kinds_diffusers_cannot_load_are_refused_by_name() {
    let dir = scratch("refused");
    let kohya = read_tensors(&fixtures().join("loras/lora_kohya.safetensors"));
    let stem = "lora_unet_down_blocks_0_resnets_0_conv1";
    let extra = |key: &str| -> Tensors {
        let mut t = kohya.clone();
        t.push((key.to_string(), Dtype::F16, vec![4, 4, 3, 3], vec![0; 4 * 4 * 9 * 2]));
        t
    };
    let cases = [
        (format!("{stem}.lora_mid.weight"), "CP decomposition"),
        (format!("{stem}.dora_scale"), "DoRA"),
        (format!("{stem}.hada_w1_a"), "LoHa"),
        (format!("{stem}.lokr_w1"), "LoKr"),
        ("lycoris_down_blocks_0_resnets_0_conv1.lora_down.weight".to_string(), "lycoris_"),
    ];
    for (i, (key, kind)) in cases.iter().enumerate() {
        let p = dir.join(format!("l{i}.safetensors"));
        write_tensors(&p, &extra(key));
        let err = LoraSet::open(&[(&p, 1.0)]).err().expect("should be refused").to_string();
        println!("{err}");
        assert!(
            err.contains(key.as_str()) && err.contains(kind) && err.contains(&format!("l{i}.safetensors")),
            "{err}"
        );
    }
    // SDXL's second text encoder is a LoRA target lcm knows, but not in an SD1.5 model.
    let te2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1";
    let mut t = kohya.clone();
    t.push((format!("{te2}.lora_down.weight"), Dtype::F16, vec![4, 16], vec![0; 4 * 16 * 2]));
    t.push((format!("{te2}.lora_up.weight"), Dtype::F16, vec![64, 4], vec![0; 64 * 4 * 2]));
    let p = dir.join("te2.safetensors");
    write_tensors(&p, &t);
    let err = LoraSet::open(&[(&p, 1.0)]).unwrap().resolve(&targets()).err().expect("no second encoder").to_string();
    println!("{err}");
    assert!(err.contains(te2) && err.contains("one text encoder") && err.contains("te2.safetensors"), "{err}");
    let _ = fs::remove_dir_all(dir);
}
