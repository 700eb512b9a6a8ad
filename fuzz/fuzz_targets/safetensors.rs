//! One `.safetensors` file through `SafeTensorsFile::open` and every tensor read as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = lcm_fuzz::safetensors_bytes(data) else { return };
    let path = lcm_fuzz::write("t.safetensors", &bytes);
    let Ok(files) = lcm_core::WeightFiles::open(&path) else { return };
    let names: Vec<String> = files.names().map(str::to_string).collect();
    for n in names {
        if let Ok(v) = files.get(&n) {
            let f = v.to_f32();
            assert_eq!(f.len(), v.numel());
        }
        let _ = files.get_shaped(&n, &[1]);
    }
});
