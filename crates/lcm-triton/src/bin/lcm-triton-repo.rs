//! `lcm-triton-repo MODEL OUT_DIR [--instances N] [--device cpu|cuda|auto] [--lora FILE[:SCALE]]...
//! [--max-batch N] [--queue-delay-us US]`: writes a Triton model repository holding the model `lcm`
//! (OUT_DIR/lcm/config.pbtxt and the version folder OUT_DIR/lcm/1/). `scripts/triton.sh repo` runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use lcm_pipeline::spec::LoraSpec;
use triton_lcm::config::{config_pbtxt, InstanceKind, RepoOptions, MODEL_NAME};

const USAGE: &str = "usage: lcm-triton-repo MODEL OUT_DIR [--instances N] [--device cpu|cuda|auto] \
                     [--lora FILE[:SCALE]]... [--max-batch N] [--queue-delay-us US]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<PathBuf, String> {
    let mut positional = Vec::new();
    let mut o = RepoOptions {
        model: PathBuf::new(),
        loras: Vec::new(),
        instances: 1,
        kind: InstanceKind::Auto,
        max_batch_size: 4,
        max_queue_delay_us: 5000,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag}: expected a value"));
        let number = |flag: &str, v: String, max: u64| match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("{flag} `{v}`: expected a whole number in 1..={max}")),
        };
        match arg.as_str() {
            "--instances" => o.instances = number("--instances", value("--instances")?, 64)? as usize,
            "--max-batch" => o.max_batch_size = number("--max-batch", value("--max-batch")?, 64)? as usize,
            "--queue-delay-us" => {
                o.max_queue_delay_us = number("--queue-delay-us", value("--queue-delay-us")?, 10_000_000)?
            }
            "--device" => {
                o.kind = match value("--device")?.as_str() {
                    "cpu" => InstanceKind::Cpu,
                    "cuda" => InstanceKind::Gpu,
                    "auto" => InstanceKind::Auto,
                    other => return Err(format!("--device `{other}`: expected cpu, cuda or auto")),
                }
            }
            "--lora" => {
                let v = value("--lora")?;
                let lora = LoraSpec::parse(&v).map_err(|e| format!("--lora `{v}`: {e}"))?;
                let path = lora.path.canonicalize().map_err(|e| format!("--lora {}: {e}", lora.path.display()))?;
                o.loras.push(LoraSpec { path, ..lora });
            }
            "-h" | "--help" => return Err("help".into()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [model, out] = <[PathBuf; 2]>::try_from(positional).map_err(|_| "expected MODEL and OUT_DIR".to_string())?;
    // Absolute, so the repository works from any working directory (Triton resolves relative paths
    // from the model's folder).
    o.model = model.canonicalize().map_err(|e| format!("MODEL {}: {e}", model.display()))?;
    let dir = out.join(MODEL_NAME);
    std::fs::create_dir_all(dir.join("1")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("config.pbtxt");
    std::fs::write(&path, config_pbtxt(&o)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
