//! Compiles every `kernels/*.cu` with nvcc into one fatbin embedded in the binary:
//! cubins for sm_80, sm_86, sm_89 and sm_90a plus compute_80 PTX (for newer GPUs to JIT).
//!
//! The kernels are one translation unit (a generated file that includes each `.cu`), compiled once
//! per architecture in parallel, each compile's ptxas report (`-Xptxas -v`: registers, shared memory,
//! spills) parsed into `OUT_DIR/ptxas_report.tsv` for `lcm kernels`; `fatbinary` then joins the images.
//!
//! nvcc is found from `$NVCC`, `$CUDA_HOME/bin`, `PATH`, or `.toolchain/cuda/bin` (filled by
//! `scripts/install-nvcc.sh` from PyPI). Without nvcc the build succeeds CPU-only with a warning, unless
//! `LCM_REQUIRE_CUDA=1`; `LCM_NO_CUDA=1` asks for that CPU-only build (the fuzz builds use it). A kernel
//! that fails to compile always fails the build. `LCM_EMULATOR_ONLY=1`
//! skips the nvcc compiles (the binary then has no GPU kernels) and builds only the emulator: the quick
//! loop for editing a kernel on a machine without a GPU (scripts/sabotage.sh uses it).
//!
//! The same kernel files are also compiled as host C++ (the `cc` crate, g++/clang++) against the CUDA
//! headers nvcc brings, with `LCM_EMULATE` defined and `kernels/include/lcm_emulate.h` force-included,
//! plus the emulator's runtime (`kernels/emulate/runtime.cpp`): the emulated device that runs every
//! kernel on the CPU (`cfg(lcm_emulator)`; see docs/kernels.md).
//!
//! The kernel ABI header is also compiled as C (the `cc` crate) into a layout probe, and run through
//! bindgen when libclang is present, so tests can prove the Rust structs match it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

/// (gencode arch, code) for each cubin, then the PTX.
const CUBINS: &[(&str, &str)] =
    &[("compute_80", "sm_80"), ("compute_86", "sm_86"), ("compute_89", "sm_89"), ("compute_90a", "sm_90a")];
const PTX_ARCH: &str = "compute_80";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo::rustc-check-cfg=cfg(lcm_emulator)");
    for var in ["NVCC", "CUDA_HOME", "LCM_REQUIRE_CUDA", "LCM_EMULATOR_ONLY", "LCM_NO_CUDA", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=.toolchain/cuda/bin/nvcc");

    abi_probe(&kernels, &out);

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for dir in [&kernels, &kernels.join("include"), &kernels.join("emulate")] {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }

    let fatbin = out.join("lcm.fatbin");
    let report = out.join("ptxas_report.tsv");
    let require = env::var("LCM_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    // LCM_NO_CUDA=1: CPU-only on purpose (the fuzz builds: no nvcc compiles, no emulator).
    let no_cuda = env::var("LCM_NO_CUDA").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc(&root).filter(|_| !no_cuda) else {
        if require {
            panic!("LCM_REQUIRE_CUDA=1 but nvcc was not found in $NVCC, $CUDA_HOME/bin, PATH or .toolchain/cuda/bin (or LCM_NO_CUDA=1 is set); run scripts/install-nvcc.sh");
        }
        if no_cuda {
            println!("cargo:warning=LCM_NO_CUDA=1: building lcm CPU-only (no GPU kernels, no emulator)");
        } else {
            println!("cargo:warning=nvcc not found: building lcm CPU-only. For the CUDA kernels run `scripts/install-nvcc.sh` (nvcc 13.0 from PyPI into .toolchain/) or set NVCC / CUDA_HOME, then rebuild.");
        }
        fs::write(&fatbin, b"").expect("write OUT_DIR");
        fs::write(&report, "").expect("write OUT_DIR");
        return;
    };

    let unit = out.join("lcm_kernels.cu");
    let body: String = sources.iter().map(|s| format!("#include \"{}\"\n", s.display())).collect();
    fs::write(&unit, &body).expect("write OUT_DIR");
    emulator(&kernels, &nvcc, &out, &body, require);
    if env::var("LCM_EMULATOR_ONLY").is_ok_and(|v| v == "1") {
        println!("cargo:warning=LCM_EMULATOR_ONLY=1: no GPU kernels in this build (the emulator only)");
        fs::write(&fatbin, b"").expect("write OUT_DIR");
        fs::write(&report, "").expect("write OUT_DIR");
        return;
    }

    let common = |cmd: &mut Command| {
        cmd.args(["-O3", "-lineinfo", "-std=c++17", "--use_fast_math", "-Xptxas", "-v", "-I"])
            .arg(kernels.join("include"))
            .arg(&unit);
    };
    // One thread per target: each nvcc gets its own stderr, so the ptxas reports do not interleave.
    let mut jobs: Vec<_> = CUBINS
        .iter()
        .map(|&(arch, code)| {
            let mut cmd = Command::new(&nvcc);
            cmd.arg("-cubin").arg(format!("-gencode=arch={arch},code={code}"));
            common(&mut cmd);
            let path = out.join(format!("lcm_{code}.cubin"));
            cmd.arg("-o").arg(&path);
            (code.to_string(), path, cmd)
        })
        .chain(std::iter::once({
            let mut cmd = Command::new(&nvcc);
            cmd.arg("-ptx").arg(format!("-arch={PTX_ARCH}"));
            common(&mut cmd);
            let path = out.join(format!("lcm_{PTX_ARCH}.ptx"));
            cmd.arg("-o").arg(&path);
            (PTX_ARCH.to_string(), path, cmd)
        }))
        .collect();
    let parallel = env::var("NUM_JOBS").ok().and_then(|n| n.parse().ok()).unwrap_or(2usize).max(1);
    let mut results = Vec::new();
    for chunk in jobs.chunks_mut(parallel) {
        let handles: Vec<_> = chunk
            .iter_mut()
            .map(|(code, path, cmd)| {
                let mut cmd = std::mem::replace(cmd, Command::new("true"));
                let (code, path) = (code.clone(), path.clone());
                thread::spawn(move || (code, path, cmd.output()))
            })
            .collect();
        results.extend(handles.into_iter().map(|h| h.join().expect("nvcc thread")));
    }

    let mut tsv = String::from("arch\tkernel\tregisters\tsmem_bytes\tstack_bytes\tspill_stores\tspill_loads\n");
    let mut fatbin_cmd = Command::new(nvcc.with_file_name("fatbinary"));
    fatbin_cmd.arg(format!("--create={}", fatbin.display())).arg("-64");
    for (code, path, output) in results {
        let output = output.unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!("nvcc failed for {code}:\n{stderr}");
        }
        if code.starts_with("sm_") {
            for k in parse_ptxas(&stderr) {
                if k.spill_stores + k.spill_loads > 0 {
                    println!(
                        "cargo:warning=kernel {} spills on {code}: {} bytes stored, {} loaded",
                        k.name, k.spill_stores, k.spill_loads
                    );
                }
                tsv += &format!(
                    "{code}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    k.name, k.registers, k.smem, k.stack, k.spill_stores, k.spill_loads
                );
            }
            let sm = code.trim_start_matches("sm_");
            fatbin_cmd.arg(format!("--image3=kind=elf,sm={sm},file={}", path.display()));
        } else {
            let sm = code.trim_start_matches("compute_");
            fatbin_cmd.arg(format!("--image3=kind=ptx,sm={sm},file={}", path.display()));
        }
    }
    let status = fatbin_cmd.status().expect("run fatbinary");
    assert!(status.success(), "fatbinary failed");
    fs::write(&report, tsv).expect("write OUT_DIR");
}

/// The emulation build: the kernels' unit as host C++ plus the runtime, one static library. The CUDA
/// headers are the ones next to nvcc (`<cuda>/bin/nvcc` -> `<cuda>/include`).
fn emulator(kernels: &Path, nvcc: &Path, out: &Path, unit_body: &str, require: bool) {
    let cuda_include = nvcc.parent().and_then(Path::parent).map(|root| root.join("include"));
    let Some(cuda_include) = cuda_include.filter(|d| d.join("cuda_fp16.h").is_file()) else {
        let msg = format!("no cuda_fp16.h next to {}: building without the kernel emulator", nvcc.display());
        if require {
            panic!("LCM_REQUIRE_CUDA=1: {msg}");
        }
        println!("cargo:warning={msg}");
        return;
    };
    let unit = out.join("lcm_kernels_emulated.cpp");
    fs::write(&unit, unit_body).expect("write OUT_DIR");
    let include = kernels.join("include");
    let built = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(3)
        .define("LCM_EMULATE", "1")
        .include(&include)
        .include(&cuda_include)
        // Kernels pun halves through integer types (as CUDA code does); the host compiler must not assume
        // otherwise. `#pragma unroll` means nothing to it.
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        // Same bits on every machine: no fused multiply-adds the source did not ask for.
        .flag("-ffp-contract=off")
        .flag("-include")
        .flag(include.join("lcm_emulate.h").display().to_string())
        .file(&unit)
        .file(kernels.join("emulate/runtime.cpp"))
        .file(kernels.join("emulate/ptx.cpp"))
        .try_compile("lcm_emulated_kernels");
    match built {
        Ok(()) => println!("cargo:rustc-cfg=lcm_emulator"),
        Err(e) if require => panic!("LCM_REQUIRE_CUDA=1 and the kernel emulation build failed: {e}"),
        Err(e) => println!("cargo:warning=building without the kernel emulator: {e}"),
    }
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let exe = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from).and_then(exe) {
        return Some(p);
    }
    if let Some(p) = env::var_os("CUDA_HOME").and_then(|h| exe(PathBuf::from(h).join("bin/nvcc"))) {
        return Some(p);
    }
    if let Some(p) = env::var_os("PATH").and_then(|path| env::split_paths(&path).find_map(|d| exe(d.join("nvcc")))) {
        return Some(p);
    }
    exe(root.join(".toolchain/cuda/bin/nvcc"))
}

struct KernelResources {
    name: String,
    registers: u32,
    smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// Reads ptxas `-v` output: for each "Compiling entry function 'k'" the following "bytes stack frame,
/// … spill stores, … spill loads" and "Used N registers, … M bytes smem" lines.
fn parse_ptxas(text: &str) -> Vec<KernelResources> {
    let num_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find(|part| part.contains(unit))
            .and_then(|part| part.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or(0)
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources { name, registers: 0, smem: 0, stack: 0, spill_stores: 0, spill_loads: 0 });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack = num_before(line, "stack frame");
                k.spill_stores = num_before(line, "spill stores");
                k.spill_loads = num_before(line, "spill loads");
            } else if line.contains("registers") {
                let after = line.split("Used").nth(1).unwrap_or("");
                k.registers = num_before(after, "registers");
                k.smem = num_before(after, "smem");
            }
        }
    }
    out
}

/// The ABI header compiled as C: a table of every struct's size and field offsets (see
/// kernels/include/abi_probe.c), and bindgen's view of it when libclang can be loaded.
fn abi_probe(kernels: &Path, out: &Path) {
    let include = kernels.join("include");
    cc::Build::new().file(include.join("abi_probe.c")).include(&include).warnings(true).compile("lcm_abi_probe");
    // bindgen panics when libclang cannot be loaded; that only skips the comparison, so keep it quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let bindings = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header(include.join("lcm_abi.h").display().to_string())
            .allowlist_type("Lcm.*")
            .rustified_enum("LcmPrediction")
            .rustified_enum("LcmStepRule")
            .layout_tests(false)
            .generate()
            .ok()
    });
    std::panic::set_hook(hook);
    let text = match bindings {
        Ok(Some(b)) => b.to_string(),
        _ => String::new(), // libclang missing: the bindgen comparison test says it was skipped
    };
    fs::write(out.join("abi_bindgen.rs"), text).expect("write OUT_DIR");
}
