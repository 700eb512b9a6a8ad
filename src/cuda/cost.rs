//! The cost model of `lcm bench --plan`: a launch's predicted time on a [`GpuSpec`] from its work
//! (`work.rs`), its occupancy (registers and shared memory per CTA) and its wave quantization.
//!
//! time = max(tensor, smem, dram, MIN_KERNEL_US) + LAUNCH_GAP_US, where, with `load` = the CTAs the
//! busiest SM runs (⌈ctas / SMs⌉) and `eff` = the share of an SM's throughput its resident warps reach
//! (min(1, warps / SATURATING_WARPS)):
//! - tensor = load · (tensor FLOPs per CTA) / (the SM's mma.sync rate · eff);
//! - smem = load · (shared-memory bytes per CTA) / (the SM's shared-memory bandwidth · eff);
//! - dram = bytes / (DRAM bandwidth · DRAM_EFFICIENCY · min(1, ctas / SMs)).
//!
//! Each term is a lower bound on its own resource, so no prediction is below FLOPs / tensor peak.
//! docs/kernels.md gives every constant's source and the model's calibration against published
//! measurements.

use super::gpu_spec::GpuSpec;
use super::kernel_table::Kernel;
use super::launch::Launch;
use super::work::{work, Work};

/// Gap between two kernels inside a CUDA graph (µs): assumed, see docs/kernels.md.
pub const LAUNCH_GAP_US: f64 = 1.0;
/// The shortest a kernel runs (µs): launch, one DRAM round trip, drain. Assumed, see docs/kernels.md.
pub const MIN_KERNEL_US: f64 = 1.5;
/// Warps an SM needs resident to keep its tensor cores and shared memory busy with mma.sync and
/// ldmatrix (two per scheduler): assumed, see docs/kernels.md.
pub const SATURATING_WARPS: f64 = 8.0;
/// The share of DRAM peak a streaming kernel reaches.
pub const DRAM_EFFICIENCY: f64 = 0.9;
/// Shared memory the driver reserves per CTA on sm_80+ (CUDA C++ Programming Guide, 8.x/9.0).
const SMEM_RESERVED_PER_CTA: u32 = 1024;
/// Registers are allocated per warp in units of 256 (CUDA occupancy calculator, sm_80–sm_90).
const REG_ALLOC_UNIT: u32 = 256;

/// What bounds a launch's predicted time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Tensor,
    Smem,
    Dram,
    /// The launch is too small for any throughput to matter: the minimum kernel time.
    Latency,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Tensor => "tensor",
            Bound::Smem => "smem",
            Bound::Dram => "dram",
            Bound::Latency => "latency",
        }
    }
}

/// One launch, costed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaunchCost {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub ctas: u64,
    pub ctas_per_sm: u32,
    /// ⌈ctas / (SMs · ctas_per_sm)⌉.
    pub waves: u64,
    pub work: Work,
    pub bound: Bound,
    pub predicted_us: f64,
}

/// Registers per thread of each kernel: ptxas for sm_90a (`-O3 --use_fast_math`), docs/kernels.md's
/// table; `registers_match_the_ptxas_report` checks them against the build's report when nvcc ran.
pub fn registers(k: Kernel) -> u32 {
    use Kernel::*;
    match k {
        IgemmLarge => 124,
        IgemmSmall | IgemmSmallF32 => 78,
        IgemmScalarA | IgemmScalarAF32 => 80,
        IgemmLargeF32 => 128,
        AttnHd16 => 64,
        AttnHd32 | AttnHd32Causal => 88,
        AttnHd40 => 103,
        AttnHd64 | AttnHd64Causal => 105,
        AttnHd80 => 133,
        AttnHd128 => 168,
        AttnHd128Causal => 167,
        AttnHd160 => 166,
        AttnHd16Causal => 72,
        AttnHd512 => 128,
        AttnHd512F32 => 184,
        GroupNormStatsV8 => 48,
        GroupNormStatsV4F32 => 47,
        GroupNormApplyV8 => 36,
        GroupNormApplyV1 => 20,
        GroupNormApplyV1F32 => 30,
        GroupNormFinalize | LayerNormV1 => 31,
        MapV1 => 17,
        MapV1F32 => 18,
        ConcatV1 => 20,
        GegluV1 => 21,
        AddChannelV1 | AddScaledV1 | CastF32F16 | CastF16F32 | CastF32F32 | ConcatV8 => 22,
        EmbedV1 | InpaintBlend => 24,
        EmbedV8 | UpsampleV1 | UpsampleV1F32 => 28,
        AddScaledV8 => 29,
        UpsampleV8 | UpsampleV4F32 | TimestepEmbed | LcmStep => 30,
        GroupNormStatsV1 | GroupNormStatsV1F32 | GroupNormApplyV4F32 | LayerNormV8 | MapV8 | MapV4F32
        | AddChannelV8 | GegluV8 | LoraMerge => 32,
    }
}

/// CTAs of launch `l` one SM holds at once (0: it cannot run there).
pub fn ctas_per_sm(l: &Launch, gpu: &GpuSpec) -> u32 {
    let threads = l.block[0] * l.block[1] * l.block[2];
    let warps = threads.div_ceil(32);
    let per_warp = (registers(l.kernel) * 32).div_ceil(REG_ALLOC_UNIT) * REG_ALLOC_UNIT;
    let by_regs = (gpu.regs_per_sm / per_warp) / warps.max(1);
    let by_threads = gpu.max_threads_per_sm / threads.max(1);
    let by_smem = gpu.smem_per_sm / (l.smem + SMEM_RESERVED_PER_CTA);
    by_regs.min(by_threads).min(by_smem).min(gpu.max_ctas_per_sm)
}

/// Launch `l`'s cost on `gpu`.
pub fn cost(l: &Launch, gpu: &GpuSpec) -> LaunchCost {
    let w = work(l);
    let sms = gpu.sm_count as f64;
    let ctas = l.grid.iter().map(|&g| g as u64).product::<u64>().max(1);
    let cps = ctas_per_sm(l, gpu).max(1);
    let waves = ctas.div_ceil(gpu.sm_count as u64 * cps as u64);
    let load = ctas.div_ceil(gpu.sm_count as u64) as f64;
    let warps = (l.block[0] * l.block[1] * l.block[2]).div_ceil(32) as f64;
    let eff = (load.min(cps as f64) * warps / SATURATING_WARPS).min(1.0);
    let per_cta = |total: f64| total / ctas as f64;
    let rate = gpu.mma_flops() / sms / if w.tf32 { 2.0 } else { 1.0 };
    let tensor = load * per_cta(w.tensor_flops) / (rate * eff);
    let smem = load * per_cta(w.smem_bytes) / (gpu.smem_bytes_per_sm() * eff);
    let active = (ctas as f64 / sms).min(1.0);
    let dram = w.dram_bytes / (gpu.dram_bytes() * DRAM_EFFICIENCY * active);
    let floor = MIN_KERNEL_US * 1e-6;
    let (t, bound) = [(tensor, Bound::Tensor), (smem, Bound::Smem), (dram, Bound::Dram), (floor, Bound::Latency)]
        .into_iter()
        .fold((0.0, Bound::Latency), |best, (t, b)| if t > best.0 { (t, b) } else { best });
    LaunchCost {
        kernel: l.kernel,
        grid: l.grid,
        ctas,
        ctas_per_sm: cps,
        waves,
        work: w,
        bound,
        predicted_us: t * 1e6 + LAUNCH_GAP_US,
    }
}

#[cfg(test)]
mod tests {
    use lcm_core::Gemm;

    use super::*;
    use crate::cuda::launch::Precision;
    use crate::cuda::ops::gemm::{gemm, GemmPtrs};

    fn h100() -> &'static GpuSpec {
        GpuSpec::by_name("h100").unwrap()
    }

    #[test]
    fn occupancy_follows_registers_and_shared_memory() {
        let g = h100();
        let big = gemm(&Gemm::linear(8192, 8192, 8192), 0, GemmPtrs::default(), Precision::F16, g.limits()).unwrap();
        assert_eq!(big.kernel, Kernel::IgemmLarge);
        // 124 registers -> 4096 a warp -> 8 warps = 32768: two CTAs fill the register file.
        assert_eq!(ctas_per_sm(&big, g), 2);
        let small = gemm(&Gemm::linear(64, 1280, 1280), 0, GemmPtrs::default(), Precision::F16, g.limits()).unwrap();
        // 80 registers -> 2560 a warp -> 4 warps = 10240: 6 by registers; 30 720 + 1 KiB smem: 7.
        assert_eq!(ctas_per_sm(&small, g), 6);
    }

    #[test]
    fn a_big_gemm_is_tensor_or_smem_bound_and_never_beats_the_peak() {
        let g = h100();
        let s = Gemm::linear(8192, 8192, 8192);
        let l = gemm(&s, 0, GemmPtrs::default(), Precision::F16, g.limits()).unwrap();
        let c = cost(&l, g);
        let lower = c.work.flops / (g.tensor_peak_tflops * 1e12) * 1e6;
        assert!(c.predicted_us >= lower, "{} < {lower}", c.predicted_us);
        assert!(matches!(c.bound, Bound::Tensor | Bound::Smem), "{:?}", c.bound);
        // The rate it predicts is within mma.sync's reach, and not absurdly below it.
        let tflops = c.work.flops / c.predicted_us / 1e6;
        assert!(tflops <= g.mma_flops() / 1e12 && tflops > 0.5 * g.mma_flops() / 1e12, "{tflops}");
    }

    #[test]
    fn a_grid_smaller_than_the_gpu_runs_at_the_share_of_sms_it_uses() {
        let g = h100();
        // 20 CTAs of 64x64 (SD1.5's 8x8-latent conv at batch 1): 20 of 132 SMs, 4 warps each.
        let s = Gemm {
            batch: 1,
            h: 8,
            w: 8,
            ci: 1280,
            ho: 8,
            wo: 8,
            co: 1280,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: [1; 4],
            geglu: false,
        };
        let c = cost(&gemm(&s, 0, GemmPtrs::default(), Precision::F16, g.limits()).unwrap(), g);
        assert_eq!((c.ctas, c.waves), (20, 1));
        let tflops = c.work.flops / c.predicted_us / 1e6;
        assert!(tflops < g.mma_flops() / 1e12 * 20.0 / 132.0, "{tflops}");
    }

    /// FlashAttention-2's forward pass on an H100 SXM5 at head dim 128, 16k tokens, no mask: 370 TFLOP/s
    /// (FlashAttention-3 paper, Shah et al. 2024, Fig. 5). Our kernel is FA2's design (Q in registers,
    /// K/V tiles through shared memory, online softmax) with 64 queries a CTA; the model must land near.
    #[test]
    fn attention_predicts_near_flashattention2_on_h100() {
        use crate::cuda::ops::attention::attention;
        use lcm_core::Attention;
        let g = h100();
        let s =
            Attention { batch: 1, heads: 16, n_q: 16384, n_kv: 16384, head_dim: 128, causal: false, key_limit: None };
        let c = cost(&attention(&s, 1, 2, 3, 4, Precision::F16, g.limits()).unwrap(), g);
        let tflops = c.work.flops / c.predicted_us / 1e6;
        println!("attention hd128 16k on h100: {tflops:.0} TFLOP/s predicted ({:?}), FA2 measured 370", c.bound);
        assert!((0.8..1.25).contains(&(tflops / 370.0)), "{tflops}");
    }

    #[test]
    fn registers_match_the_ptxas_report() {
        let report = crate::cuda::fatbin::resources();
        for r in report.iter().filter(|r| r.arch.starts_with("sm_90")) {
            let k = Kernel::ALL.iter().find(|k| k.name() == r.kernel).expect("every reported kernel is in the table");
            assert_eq!(registers(*k), r.registers, "{} on {}", r.kernel, r.arch);
        }
    }
}
