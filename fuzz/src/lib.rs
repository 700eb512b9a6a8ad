//! Helpers shared by the fuzz targets: the loaders take paths, so each input is written to a scratch file
//! of this process first, and a safetensors header can be given as bare JSON (the data section is then
//! synthesised), so that the fuzzer spends its time on key names and shapes, not on megabytes of weights.

use std::path::{Path, PathBuf};

/// A scratch folder private to this fuzzing process (libFuzzer's `-fork`/`-jobs` run several).
pub fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("lcm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("scratch write");
    p
}

/// The tiny SD1.5 fixture folder of this repository.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The largest data section a synthesised file gets (a header may claim any offsets).
const MAX_SYNTH: u64 = 8 << 20;

/// The input as a safetensors file: as-is unless it starts with `{`, in which case it is a header and
/// the data section is filled with a small repeating pattern up to the largest end offset it names
/// (`None` when that is over [`MAX_SYNTH`]). The header itself is passed through untouched, so the
/// loader still sees every malformed field.
pub fn safetensors_bytes(input: &[u8]) -> Option<Vec<u8>> {
    if input.first() != Some(&b'{') {
        return Some(input.to_vec());
    }
    let end = serde_json::from_slice::<serde_json::Value>(input)
        .ok()
        .and_then(|v| {
            v.as_object().map(|o| {
                o.values().filter_map(|t| t.get("data_offsets")?.as_array()?.get(1)?.as_u64()).max().unwrap_or(0)
            })
        })
        .unwrap_or(0);
    if end > MAX_SYNTH {
        return None;
    }
    let mut out = Vec::with_capacity(8 + input.len() + end as usize);
    out.extend_from_slice(&(input.len() as u64).to_le_bytes());
    out.extend_from_slice(input);
    // 0x3c00 is 1.0 in f16; as f32 pairs it is a small finite number: finite weights, nonzero alphas.
    // Copied from one pattern buffer: a byte-at-a-time fill was a tenth of a checkpoint input's time.
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| [0x00, 0x3c].repeat(MAX_SYNTH as usize / 2));
    out.extend_from_slice(&pattern[..end as usize]);
    Some(out)
}
