//! The norm family (kernels/norm.cu): GroupNorm's three launches and their plan, LayerNorm, and the
//! record arm for `GroupNorm` and `LayerNorm`.

use lcm_core::{Error, Op, Problem, Result};

use crate::cuda::abi::{LcmGroupNormParams, LcmLayerNormParams};
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{cdiv, check_smem, dim, Launch, Limits, Params, Precision, Step};
use crate::cuda::record::{mislowered, Recorder};

/// The GroupNorm launch shape: every block is `cols · rows` threads over chunks of `chunk_pixels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNormPlan {
    pub vec: usize,
    pub threads: usize,
    pub rows: usize,
    pub chunk_pixels: usize,
    pub chunks: usize,
    pub stats_smem: usize,
    /// f32 scratch: partials `[B, chunks, G, 2]` then stats `[B, G, 2]`.
    pub scratch_floats: usize,
}

/// The plan for activations of `prec` (its 16-byte vector when C allows it).
pub fn group_norm_plan(
    batch: usize,
    hw: usize,
    c: usize,
    groups: usize,
    prec: Precision,
    lim: Limits,
) -> Result<GroupNormPlan> {
    if groups == 0 || !c.is_multiple_of(groups) || hw == 0 || batch == 0 {
        return Err(Error::backend(format!("group norm of {c} channels in {groups} groups over {hw} pixels")));
    }
    let vec = if c.is_multiple_of(prec.vec()) { prec.vec() } else { 1 };
    let cols = c / vec;
    if cols > 1024 {
        return Err(Error::backend(format!("group norm over {c} channels: at most {} supported", 1024 * vec)));
    }
    let rows = (256 / cols).max(1);
    let threads = cols * rows;
    // About four blocks per SM in all, each chunk at least one pixel per thread row.
    let wanted = cdiv(4 * lim.sm_count as usize, batch).clamp(1, hw);
    let chunk_pixels = cdiv(hw, wanted).max(rows.min(hw));
    let chunks = cdiv(hw, chunk_pixels);
    let stats_smem = (2 * rows * c + 2 * c) * 4;
    Ok(GroupNormPlan {
        vec,
        threads,
        rows,
        chunk_pixels,
        chunks,
        stats_smem,
        scratch_floats: batch * chunks * groups * 2 + batch * groups * 2,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    batch: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    ptrs: [u64; 4],
    scratch: u64,
    prec: Precision,
    lim: Limits,
) -> Result<[Launch; 3]> {
    let plan = group_norm_plan(batch, hw, c, groups, prec, lim)?;
    let [x, gamma, beta, out] = ptrs;
    let partial_bytes = (batch * plan.chunks * groups * 2 * 4) as u64;
    let params = LcmGroupNormParams {
        x,
        gamma,
        beta,
        out,
        partial: scratch,
        stats: scratch + partial_bytes,
        batch: dim(batch, "batch")?,
        hw: dim(hw, "pixels")?,
        c: dim(c, "channels")?,
        groups: dim(groups, "groups")?,
        chunks: dim(plan.chunks, "chunks")?,
        chunk_pixels: dim(plan.chunk_pixels, "chunk")?,
        eps,
        silu: silu as i32,
    };
    dim(batch * hw * c, "group norm elements")?;
    let (stats_k, apply_k) = match (prec, plan.vec > 1) {
        (Precision::F16, true) => (Kernel::GroupNormStatsV8, Kernel::GroupNormApplyV8),
        (Precision::F16, false) => (Kernel::GroupNormStatsV1, Kernel::GroupNormApplyV1),
        (Precision::F32, true) => (Kernel::GroupNormStatsV4F32, Kernel::GroupNormApplyV4F32),
        (Precision::F32, false) => (Kernel::GroupNormStatsV1F32, Kernel::GroupNormApplyV1F32),
    };
    let grid = [plan.chunks as u32, batch as u32, 1];
    let block = [plan.threads as u32, 1, 1];
    Ok([
        Launch {
            kernel: stats_k,
            grid,
            block,
            smem: check_smem(stats_k, plan.stats_smem, lim)?,
            params: Params::GroupNorm(params),
        },
        Launch {
            kernel: Kernel::GroupNormFinalize,
            grid: [batch as u32, 1, 1],
            block: [(groups.min(32) * 32) as u32, 1, 1],
            smem: 0,
            params: Params::GroupNorm(params),
        },
        Launch { kernel: apply_k, grid, block, smem: 0, params: Params::GroupNorm(params) },
    ])
}

pub fn layer_norm(rows: usize, c: usize, eps: f32, ptrs: [u64; 4]) -> Result<Launch> {
    let [x, gamma, beta, out] = ptrs;
    dim(rows * c, "layer norm elements")?;
    Ok(Launch {
        kernel: if c.is_multiple_of(8) { Kernel::LayerNormV8 } else { Kernel::LayerNormV1 },
        grid: [cdiv(rows, 4) as u32, 1, 1],
        block: [128, 1, 1],
        smem: 0,
        params: Params::LayerNorm(LcmLayerNormParams {
            x,
            gamma,
            beta,
            out,
            rows: dim(rows, "rows")?,
            c: dim(c, "channels")?,
            eps,
            pad0: 0,
        }),
    })
}

/// Workspace bytes of a GroupNorm: its partial sums and statistics.
pub(crate) fn scratch_bytes(r: &Recorder, problem: &Problem) -> Result<usize> {
    match *problem {
        Problem::GroupNorm { batch, hw, c, groups } => {
            Ok(group_norm_plan(batch, hw, c, groups, r.act_precision(), r.limits())?.scratch_floats * 4)
        }
        _ => Ok(0),
    }
}

pub(crate) fn record(r: &Recorder, op: &Op, problem: &Problem, steps: &mut Vec<Step>) -> Result<()> {
    match (*op, *problem) {
        (Op::GroupNorm { x, gamma, beta, eps, silu, out, .. }, Problem::GroupNorm { batch, hw, c, groups }) => {
            let ptrs = [r.addr(x)?, r.addr(gamma)?, r.addr(beta)?, r.addr(out)?];
            let (prec, lim) = (r.act_precision(), r.limits());
            let launches = group_norm(batch, hw, c, groups, eps, silu, ptrs, r.work(), prec, lim)?;
            steps.extend(launches.map(Step::Kernel));
        }
        (Op::LayerNorm { x, gamma, beta, eps, out }, Problem::LayerNorm { rows, c }) => {
            r.f16_only("layer_norm")?;
            let ptrs = [r.addr(x)?, r.addr(gamma)?, r.addr(beta)?, r.addr(out)?];
            steps.push(Step::Kernel(layer_norm(rows, c, eps, ptrs)?));
        }
        _ => return Err(mislowered(op, problem)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::test_limits::{H100, RTX};

    #[test]
    fn group_norm_chunks_cover_the_pixels_exactly() {
        for (b, hw, c) in
            [(1, 4096, 320), (2, 64, 1280), (1, 512 * 512, 128), (1, 1, 2560), (2, 17, 96), (1, 9, 12), (1, 4096, 8192)]
        {
            // 8192 channels fit f16's 8-wide vectors only (asserted below).
            let precs: &[Precision] = if c > 4096 { &[Precision::F16] } else { &[Precision::F16, Precision::F32] };
            for &prec in precs {
                let p = group_norm_plan(b, hw, c, if c % 32 == 0 { 32 } else { 4 }, prec, H100).unwrap();
                assert!(p.threads <= 1024 && p.threads.is_multiple_of(c / p.vec));
                assert!((p.chunks - 1) * p.chunk_pixels < hw && p.chunks * p.chunk_pixels >= hw, "{b} {hw} {c}: {p:?}");
                assert_eq!(p.threads / (c / p.vec), p.rows);
            }
        }
        // f32 vectors are 4 wide: 8192 channels would need 2048 threads of a row.
        assert!(group_norm_plan(1, 64, 8192, 32, Precision::F32, H100).is_err());
        assert_eq!(group_norm_plan(1, 64, 12, 4, Precision::F32, H100).unwrap().vec, 4);
        assert!(group_norm_plan(1, 64, 2560, 32, Precision::F16, RTX).unwrap().stats_smem <= RTX.smem_optin as usize);
        assert!(group_norm_plan(1, 64, 320, 7, Precision::F16, H100).is_err());
    }
}
