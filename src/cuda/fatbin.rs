//! The compiled kernels, embedded: the fatbin build.rs made, and ptxas's resource report for it.

/// The fatbin (cubins for sm_80/86/89/90a + compute_80 PTX); empty when built without nvcc.
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lcm.fatbin"));

/// ptxas `-v` per kernel and arch, tab-separated with a header line; empty when built without nvcc.
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas_report.tsv"));

/// Bindgen's view of the ABI header at build time (empty when libclang was not found).
pub static ABI_BINDGEN: &str = include_str!(concat!(env!("OUT_DIR"), "/abi_bindgen.rs"));

/// One kernel's resources on one architecture, from the ptxas report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelResources {
    pub arch: String,
    pub kernel: String,
    pub registers: u32,
    pub smem_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

pub fn compiled() -> bool {
    !FATBIN.is_empty()
}

pub fn resources() -> Vec<KernelResources> {
    PTXAS_REPORT
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| f.get(i).and_then(|s| s.parse().ok());
            Some(KernelResources {
                arch: f.first()?.to_string(),
                kernel: f.get(1)?.to_string(),
                registers: n(2)?,
                smem_bytes: n(3)?,
                stack_bytes: n(4)?,
                spill_stores: n(5)?,
                spill_loads: n(6)?,
            })
        })
        .collect()
}
