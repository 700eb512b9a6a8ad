//! diffusers' meaning of absent and null config keys: an absent `norm_num_groups` is 32, an explicit
//! `mid_block_type: null` is a UNet without a mid block (whose graph then names no `mid_block.*` weight).

use std::path::Path;

use lcm_models::arch::unet::MidBlock;
use lcm_models::{arch::sd15, UnetConfig};
use serde_json::Value;

fn with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> UnetConfig {
    let mut v: Value = serde_json::from_str(sd15::UNET_CONFIG).unwrap();
    edit(v.as_object_mut().unwrap());
    UnetConfig::from_json(Path::new("edited"), &v.to_string()).expect("a config diffusers accepts")
}

#[test]
fn absent_norm_groups_default_to_32_and_null_mid_block_means_none() {
    assert_eq!(with(|m| drop(m.remove("norm_num_groups"))).norm_groups, 32);
    let no_mid = with(|m| drop(m.insert("mid_block_type".into(), Value::Null)));
    assert_eq!(no_mid.mid_block, MidBlock::None);
    let names: Vec<String> = no_mid.graph(1, 8, 8, 77).unwrap().weights.into_iter().map(|w| w.name).collect();
    assert!(!names.iter().any(|n| n.starts_with("mid_block.")), "no mid block, no mid_block weights");
    assert_eq!(with(|_| {}).mid_block, MidBlock::CrossAttn);
    let explicit_null = serde_json::from_str::<Value>(sd15::UNET_CONFIG).map(|mut v| {
        v["norm_num_groups"] = Value::Null;
        v.to_string()
    });
    let err = UnetConfig::from_json(Path::new("edited"), &explicit_null.unwrap()).unwrap_err();
    assert!(err.to_string().contains("norm_num_groups"), "{err}");
}
