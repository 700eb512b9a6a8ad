use super::*;
use lcm_pipeline::infer::INPUTS;

fn options() -> RepoOptions {
    RepoOptions {
        model: PathBuf::from("/models/tiny-sd"),
        loras: vec![LoraSpec { path: PathBuf::from("/loras/a.safetensors"), scale: 0.5 }],
        instances: 2,
        kind: InstanceKind::Cpu,
        max_batch_size: 8,
        max_queue_delay_us: 5000,
    }
}

#[test]
fn config_lists_every_input_of_the_contract_with_its_type_and_dims() {
    let text = config_pbtxt(&options());
    for spec in INPUTS.iter().chain([&OUTPUT]) {
        let dims: Vec<String> = spec.dims.iter().map(i64::to_string).collect();
        let block = format!(
            "name: \"{}\"\n    data_type: {}\n    dims: [ {} ]",
            spec.name,
            spec.dtype.config_name(),
            dims.join(", ")
        );
        assert!(text.contains(&block), "{} missing from\n{text}", spec.name);
    }
    assert_eq!(text.matches("optional: true").count(), INPUTS.iter().filter(|s| !s.required).count());
    assert!(text.contains("max_batch_size: 8") && text.contains("count: 2\n    kind: KIND_CPU"));
    assert!(text.contains("string_value: \"/loras/a.safetensors:0.5\""));
}

/// deploy/triton/model_repository/lcm/config.pbtxt is what `scripts/triton.sh repo` writes for its
/// settings: a change to the contract shows up here until the example is regenerated.
#[test]
fn the_checked_in_example_is_the_generated_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/triton/model_repository/lcm/config.pbtxt");
    let checked_in = std::fs::read_to_string(&root).expect("the example config");
    let o = RepoOptions {
        model: PathBuf::from("/models/lcm-dreamshaper-v7"),
        loras: Vec::new(),
        instances: 1,
        kind: InstanceKind::Gpu,
        max_batch_size: 4,
        max_queue_delay_us: 5000,
    };
    assert_eq!(
        checked_in,
        config_pbtxt(&o),
        "regenerate: cargo run -p lcm-triton --bin lcm-triton-repo (docs/triton.md)"
    );
}

fn settings(params: &str) -> Result<Settings> {
    Settings::from_config_json(
        &format!(r#"{{"max_batch_size": 4, "parameters": {{{params}}}}}"#),
        Path::new("/repo/lcm"),
    )
}

#[test]
fn parameters_become_the_load_spec_with_paths_from_the_model_folder() {
    let s = settings(
        r#""model": {"string_value": "weights"}, "loras": {"string_value": "a.safetensors:0.5, /b.safetensors"},
           "lora_mode": {"string_value": "runtime"}, "vae": {"string_value": "/vae"}"#,
    )
    .unwrap();
    assert_eq!(s.spec.model_dir, PathBuf::from("/repo/lcm/weights"));
    assert_eq!(s.spec.loras[0], LoraSpec { path: PathBuf::from("/repo/lcm/a.safetensors"), scale: 0.5 });
    assert_eq!(s.spec.loras[1], LoraSpec { path: PathBuf::from("/b.safetensors"), scale: 1.0 });
    assert_eq!(s.spec.lora_mode, LoraMode::Runtime);
    assert_eq!(s.spec.vae, Some(PathBuf::from("/vae")));
}

#[test]
fn bad_parameters_are_errors_naming_the_parameter() {
    let err = |p: &str| settings(p).unwrap_err().to_string();
    assert!(err("").contains("parameter 'model': missing"), "{}", err(""));
    let e = err(r#""model": {"string_value": "m"}, "modle": {"string_value": "x"}"#);
    assert!(e.contains("'modle': unknown parameter"), "{e}");
    let e = err(r#""model": {"string_value": "m"}, "lora_mode": {"string_value": "fused"}"#);
    assert!(e.contains("'lora_mode': `fused`"), "{e}");
    let e = err(r#""model": {"string_value": "m"}, "precision": {"string_value": "fp8"}"#);
    assert!(e.contains("'precision'"), "{e}");
    let e = err(r#""model": {"string_value": "m"}, "loras": {"string_value": "a:inf"}"#);
    assert!(e.contains("'loras'") && e.contains("finite"), "{e}");
    assert!(Settings::from_config_json("{", Path::new("/")).is_err());
}
