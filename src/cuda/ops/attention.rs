//! The attention family (kernels/attention.cu): the head-dim instantiation table, launch planning,
//! and the record arm for `Attention`.

use lcm_core::{Attention, Error, KeyLimit, Op, Problem, Result};

use crate::cuda::abi::LcmAttnParams;
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{cdiv, check_smem, dim, no_f32, Launch, Limits, Params, Precision, Step};
use crate::cuda::record::{mislowered, Recorder};

/// (padded head dim, key tile, causal, kernel): kernels/attention.cu's instantiations. The smallest
/// padded dim ≥ head_dim with the right causality serves; non-causal heads up to 512 fall to the wide
/// kernel.
pub const ATTN_TABLE: &[(usize, usize, bool, Kernel)] = &[
    (16, 64, false, Kernel::AttnHd16),
    (32, 64, false, Kernel::AttnHd32),
    (48, 64, false, Kernel::AttnHd40),
    (64, 64, false, Kernel::AttnHd64),
    (80, 64, false, Kernel::AttnHd80),
    (128, 64, false, Kernel::AttnHd128),
    (160, 32, false, Kernel::AttnHd160),
    (16, 64, true, Kernel::AttnHd16Causal),
    (32, 64, true, Kernel::AttnHd32Causal),
    (64, 64, true, Kernel::AttnHd64Causal),
    (128, 64, true, Kernel::AttnHd128Causal),
];
pub const ATTN_WIDE_DIM: usize = 512;

/// Attention on activations of `prec`. f32 has the wide kernel only (tf32, key tiles of 8: any
/// non-causal head up to 512, e.g. a VAE's mid block).
pub fn attention(s: &Attention, q: u64, k: u64, v: u64, out: u64, prec: Precision, lim: Limits) -> Result<Launch> {
    if s.n_kv == 0 || s.n_q == 0 || s.head_dim == 0 {
        return Err(Error::backend("attention over an empty sequence"));
    }
    let c = s.heads * s.head_dim;
    let narrow = ATTN_TABLE.iter().filter(|e| e.2 == s.causal && e.0 >= s.head_dim).min_by_key(|e| e.0);
    let wide = !s.causal && s.head_dim <= ATTN_WIDE_DIM;
    let (kernel, grid_x, threads, smem) = match (prec, narrow) {
        (Precision::F16, Some(&(dp, bkv, _, kernel))) => (kernel, cdiv(s.n_q, 64), 128, (64 + 4 * bkv) * (dp + 8) * 2),
        (Precision::F16, None) if wide => {
            (Kernel::AttnHd512, cdiv(s.n_q, 32), 256, 2 * (2 * 16 * (ATTN_WIDE_DIM + 8) * 2) + 2 * 4 * 32 * 8 * 4)
        }
        (Precision::F32, _) if wide => {
            (Kernel::AttnHd512F32, cdiv(s.n_q, 32), 256, 2 * (2 * 8 * (ATTN_WIDE_DIM + 4) * 4) + 2 * 4 * 32 * 4 * 4)
        }
        (Precision::F32, _) => return Err(no_f32("causal or wider-than-512 attention")),
        (Precision::F16, None) => {
            return Err(Error::backend(format!(
            "attention with head dim {} ({}) has no kernel: causal heads go up to 128, others up to {ATTN_WIDE_DIM}",
            s.head_dim,
            if s.causal { "causal" } else { "non-causal" }
        )))
        }
    };
    let smem = check_smem(kernel, smem, lim)?;
    let c32 = dim(c, "attention channels")?;
    let limit = s.key_limit.unwrap_or(KeyLimit { rows_begin: 0, rows_end: 0, keys: s.n_kv });
    dim(s.batch * s.n_q.max(s.n_kv) * c, "attention elements")?;
    let params = LcmAttnParams {
        q,
        k,
        v,
        out,
        batch: dim(s.batch, "batch")?,
        heads: dim(s.heads, "heads")?,
        n_q: dim(s.n_q, "query tokens")?,
        n_kv: dim(s.n_kv, "key tokens")?,
        head_dim: dim(s.head_dim, "head dim")?,
        ldq: c32,
        ldk: c32,
        ldv: c32,
        ldo: c32,
        scale_log2: std::f32::consts::LOG2_E / (s.head_dim as f32).sqrt(),
        // The lowering checked the limit against the batch and n_kv; no limit is an empty row range.
        kv_limit_rows_begin: dim(limit.rows_begin, "key limit rows")?,
        kv_limit_rows_end: dim(limit.rows_end, "key limit rows")?,
        kv_limit_keys: dim(limit.keys, "key limit keys")?,
        pad0: 0,
    };
    if s.heads > 65535 || s.batch > 65535 {
        return Err(Error::backend("attention grid: heads and batch must be below 65536"));
    }
    Ok(Launch {
        kernel,
        grid: [grid_x as u32, s.heads as u32, s.batch as u32],
        block: [threads, 1, 1],
        smem,
        params: Params::Attn(params),
    })
}

pub(crate) fn record(r: &Recorder, op: &Op, problem: &Problem, steps: &mut Vec<Step>) -> Result<()> {
    let (Op::Attention { q, k, v, out, .. }, Problem::Attention(s)) = (*op, *problem) else {
        return Err(mislowered(op, problem));
    };
    let (q, k, v, out) = (r.addr(q)?, r.addr(k)?, r.addr(v)?, r.addr(out)?);
    steps.push(Step::Kernel(attention(&s, q, k, v, out, r.act_precision(), r.limits())?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::test_limits::RTX;

    #[test]
    fn attention_table_covers_every_sd15_head_and_the_general_path() {
        let plan = |d: usize, causal: bool| {
            let s = Attention { batch: 1, heads: 1, n_q: 77, n_kv: 77, head_dim: d, causal, key_limit: None };
            attention(&s, 0, 0, 0, 0, Precision::F16, RTX)
        };
        let pick = |d: usize, causal: bool| plan(d, causal).map(|l| l.kernel);
        assert_eq!(pick(40, false).unwrap(), Kernel::AttnHd40);
        assert_eq!(pick(80, false).unwrap(), Kernel::AttnHd80);
        assert_eq!(pick(160, false).unwrap(), Kernel::AttnHd160);
        assert_eq!(pick(64, true).unwrap(), Kernel::AttnHd64Causal);
        assert_eq!(pick(512, false).unwrap(), Kernel::AttnHd512);
        assert_eq!(pick(8, false).unwrap(), Kernel::AttnHd16);
        assert_eq!(pick(8, true).unwrap(), Kernel::AttnHd16Causal);
        assert_eq!(pick(12, true).unwrap(), Kernel::AttnHd16Causal);
        assert_eq!(pick(100, false).unwrap(), Kernel::AttnHd128);
        assert_eq!(pick(200, false).unwrap(), Kernel::AttnHd512);
        assert!(pick(200, true).is_err());
        assert!(pick(513, false).is_err());
        // Every instantiation fits the smallest opt-in shared memory of the four archs.
        for d in [8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 256, 512] {
            for causal in [false, true] {
                if let Ok(l) = plan(d, causal) {
                    assert!(l.smem <= RTX.smem_optin, "{} {}", l.kernel.name(), l.smem);
                }
            }
        }
    }
}
