//! The GPUs a launch plan can be made for without one (`lcm bench --plan`): what the planners read
//! (SM count, opt-in shared memory: [`Limits`]) and what the cost model (`cost.rs`) reads (clocks,
//! occupancy limits, tensor and memory throughput). docs/kernels.md gives the source of every number.

use lcm_core::{Error, Result};

use super::launch::Limits;

/// One GPU's figures. Throughputs are whole-chip peaks; the cost model derates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuSpec {
    /// The `--plan` name: h100, h200, a100, l40s.
    pub name: &'static str,
    /// The product it stands for.
    pub model: &'static str,
    /// Compute capability (major, minor).
    pub cc: (u32, u32),
    pub sm_count: u32,
    /// Boost clock (MHz): what the shared-memory bandwidth scales with.
    pub clock_mhz: u32,
    /// Shared memory a block may opt in to (bytes).
    pub smem_optin: u32,
    /// Shared memory per SM for all resident blocks (bytes).
    pub smem_per_sm: u32,
    /// 32-bit registers per SM.
    pub regs_per_sm: u32,
    pub max_threads_per_sm: u32,
    pub max_ctas_per_sm: u32,
    /// Dense f16 tensor-core peak with f32 accumulation (TFLOP/s) through the best instruction
    /// (wgmma on sm_90): the ceiling no kernel passes.
    pub tensor_peak_tflops: f64,
    /// The share of that peak `mma.sync` (what every kernel here issues) can reach: 1 before Hopper,
    /// 2/3 on sm_90 (FlashAttention-3 paper, §1: mma.sync reaches about 2/3 of H100's tensor peak).
    pub mma_sync_share: f64,
    /// DRAM (HBM/GDDR) peak, GB/s.
    pub dram_gbs: f64,
}

/// Shared memory serves 32 banks × 4 bytes per clock per SM on sm_80–sm_90 (CUDA C++ Programming
/// Guide, "Shared Memory" of compute capabilities 8.x and 9.0).
pub const SMEM_BYTES_PER_CLOCK: f64 = 128.0;

/// The GPUs `--plan` knows, by name.
pub const GPUS: &[GpuSpec] = &[
    GpuSpec {
        name: "h100",
        model: "H100 SXM5 80GB",
        cc: (9, 0),
        sm_count: 132,
        clock_mhz: 1980,
        smem_optin: 232_448,
        smem_per_sm: 233_472,
        regs_per_sm: 65_536,
        max_threads_per_sm: 2048,
        max_ctas_per_sm: 32,
        tensor_peak_tflops: 989.4,
        mma_sync_share: 2.0 / 3.0,
        dram_gbs: 3350.0,
    },
    GpuSpec {
        name: "h200",
        model: "H200 SXM 141GB",
        cc: (9, 0),
        sm_count: 132,
        clock_mhz: 1980,
        smem_optin: 232_448,
        smem_per_sm: 233_472,
        regs_per_sm: 65_536,
        max_threads_per_sm: 2048,
        max_ctas_per_sm: 32,
        tensor_peak_tflops: 989.4,
        mma_sync_share: 2.0 / 3.0,
        dram_gbs: 4800.0,
    },
    GpuSpec {
        name: "a100",
        model: "A100 SXM4 80GB",
        cc: (8, 0),
        sm_count: 108,
        clock_mhz: 1410,
        smem_optin: 166_912,
        smem_per_sm: 167_936,
        regs_per_sm: 65_536,
        max_threads_per_sm: 2048,
        max_ctas_per_sm: 32,
        tensor_peak_tflops: 312.0,
        mma_sync_share: 1.0,
        dram_gbs: 2039.0,
    },
    GpuSpec {
        name: "l40s",
        model: "L40S 48GB",
        cc: (8, 9),
        sm_count: 142,
        clock_mhz: 2520,
        smem_optin: 101_376,
        smem_per_sm: 102_400,
        regs_per_sm: 65_536,
        max_threads_per_sm: 1536,
        max_ctas_per_sm: 24,
        tensor_peak_tflops: 362.05,
        mma_sync_share: 1.0,
        dram_gbs: 864.0,
    },
];

impl GpuSpec {
    /// The GPU `name` names, or an error listing the known ones.
    pub fn by_name(name: &str) -> Result<&'static GpuSpec> {
        GPUS.iter().find(|g| g.name == name.to_ascii_lowercase()).ok_or_else(|| {
            let known: Vec<&str> = GPUS.iter().map(|g| g.name).collect();
            Error::invalid("--plan", format!("`{name}`: expected one of {}", known.join(", ")))
        })
    }

    /// What the launch planners read: the same [`Limits`] the backend reads from a real device.
    pub fn limits(&self) -> Limits {
        Limits { sm_count: self.sm_count, smem_optin: self.smem_optin }
    }

    /// The f16 rate `mma.sync` can reach, FLOP/s.
    pub fn mma_flops(&self) -> f64 {
        self.tensor_peak_tflops * 1e12 * self.mma_sync_share
    }

    /// Shared-memory bandwidth of one SM, bytes/s.
    pub fn smem_bytes_per_sm(&self) -> f64 {
        SMEM_BYTES_PER_CLOCK * self.clock_mhz as f64 * 1e6
    }

    pub fn dram_bytes(&self) -> f64 {
        self.dram_gbs * 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_a_bad_name_lists_the_known_ones() {
        assert_eq!(GpuSpec::by_name("H100").unwrap().sm_count, 132);
        assert_eq!(GpuSpec::by_name("l40s").unwrap().limits().smem_optin, 101_376);
        let e = GpuSpec::by_name("h300").unwrap_err().to_string();
        assert!(e.contains("--plan") && e.contains("h300") && e.contains("h100, h200, a100, l40s"), "{e}");
    }

    #[test]
    fn the_planners_test_limits_are_the_table_h100() {
        assert_eq!(
            GpuSpec::by_name("h100").unwrap().limits().smem_optin,
            super::super::launch::test_limits::H100.smem_optin
        );
    }
}
