//! `lcm kernels`: the ptxas resource report of every kernel compiled into this binary.

use lcm::cuda::fatbin;
use lcm_core::Result;

pub fn run() -> Result<()> {
    if !fatbin::compiled() {
        println!("this lcm was built without nvcc: no CUDA kernels. Run scripts/install-nvcc.sh and rebuild.");
        return Ok(());
    }
    let rows = fatbin::resources();
    let width = rows.iter().map(|r| r.kernel.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<width$}  {:<7} {:>5} {:>10} {:>6} {:>12}",
        "kernel", "arch", "regs", "smem (B)", "stack", "spills (B)"
    );
    for r in &rows {
        let spills = r.spill_stores + r.spill_loads;
        println!(
            "{:<width$}  {:<7} {:>5} {:>10} {:>6} {:>12}{}",
            r.kernel,
            r.arch,
            r.registers,
            r.smem_bytes,
            r.stack_bytes,
            format!("{}/{}", r.spill_stores, r.spill_loads),
            if spills > 0 { "  <- spills" } else { "" }
        );
    }
    let archs: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.arch.as_str()).collect();
    println!(
        "{} kernels x {} architectures ({}) + compute_80 PTX",
        rows.len() / archs.len().max(1),
        archs.len(),
        archs.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
