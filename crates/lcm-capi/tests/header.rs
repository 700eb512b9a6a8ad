//! include/lcm.h is what cbindgen generates from src/lib.rs with cbindgen.toml: a change to the ABI
//! that is not in the header fails here. `LCM_BLESS=1 cargo test -p lcm-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_matches_the_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen over src/lib.rs");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/lcm.h");
    if std::env::var("LCM_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/lcm.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "include/lcm.h differs from what cbindgen generates from src/lib.rs: run \
         `LCM_BLESS=1 cargo test -p lcm-capi --test header` and commit the header\n--- generated ---\n{}",
        String::from_utf8_lossy(&fresh)
    );
}
