//! A sharded component: `<stem>.safetensors.index.json` plus two shards, through `find_weights`.
//! Input: index JSON, then the two shards, separated by the 4 bytes `\0SH\0`.
#![no_main]
use lcm_models::checkpoint::diffusers::find_weights;
use lcm_models::Variant;
use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\0SH\0";

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    parts
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let dir = lcm_fuzz::scratch().join("shards");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.safetensors.index.json"), parts[0]).unwrap();
    for (i, shard) in parts.iter().skip(1).take(2).enumerate() {
        let Some(bytes) = lcm_fuzz::safetensors_bytes(shard) else { return };
        std::fs::write(dir.join(format!("m-{:05}-of-00002.safetensors", i + 1)), bytes).unwrap();
    }
    let Ok(files) = find_weights(&dir, "m", Variant::PreferFull) else { return };
    let names: Vec<String> = files.names().map(str::to_string).collect();
    for n in names {
        if let Ok(v) = files.get(&n) {
            assert_eq!(v.to_f32().len(), v.numel());
        }
    }
});
