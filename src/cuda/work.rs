//! What one launch asks of the GPU, read from its parameter struct (the same struct the kernel gets):
//! useful FLOPs, the tensor-core FLOPs it actually issues (padding included), compulsory DRAM bytes
//! (every input read once, every output written once: re-reads are assumed to hit L2) and shared-memory
//! bytes (cp.async fills plus ldmatrix reads, from each kernel's tiling in docs/kernels.md).

use super::kernel_table::Kernel;
use super::launch::{cdiv, Launch, Params};
use super::ops::attention::{ATTN_TABLE, ATTN_WIDE_DIM};
use super::ops::gemm::gemm_tile;

/// One launch's work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    /// FLOPs of the math asked for (2 per multiply-add; 0 for memory-bound kernels).
    pub flops: f64,
    /// FLOPs the tensor cores execute: `flops` plus tile padding (attention's key tiles, the GEMM's
    /// channel padding).
    pub tensor_flops: f64,
    /// Whether the tensor work runs as tf32 (half the f16 rate).
    pub tf32: bool,
    /// Compulsory DRAM bytes.
    pub dram_bytes: f64,
    /// Shared-memory bytes moved (writes and reads), all CTAs together.
    pub smem_bytes: f64,
}

/// Bytes per element of a kernel's activations: the f32 instantiations (tf32 GEMM and attention, the
/// `_f32` element-wise forms) take 4.
fn act_bytes(k: Kernel) -> f64 {
    let name = k.name();
    if name.ends_with("_f32") || name.contains("tf32") {
        4.0
    } else {
        2.0
    }
}

/// The work of launch `l`.
pub fn work(l: &Launch) -> Work {
    let e = act_bytes(l.kernel);
    let ctas = (l.grid[0] as f64) * (l.grid[1] as f64) * (l.grid[2] as f64);
    match l.params {
        Params::Gemm(p) => {
            let (batch, h, w, ci) = (p.batch as f64, p.h as f64, p.w as f64, p.ci as f64);
            let m = batch * p.ho as f64 * p.wo as f64;
            let (n, taps, k2, ldc) = (p.co as f64, (p.kh * p.kw) as f64, p.k2 as f64, p.ldc as f64);
            let flops = 2.0 * m * n * (taps * ci + k2);
            // The kernel runs K = taps·cip (+ k2) in BK slices, every M and N tile full.
            let (bm, bn, threads) = gemm_tile(l.kernel);
            let kp = taps * p.cip as f64 + k2;
            let tensor_flops = 2.0 * ctas * (bm * bn) as f64 * kp;
            let mut dram = e * (batch * h * w * ci + n * taps * p.cip as f64 + m * ldc);
            if p.residual != 0 {
                dram += e * m * ldc;
            }
            if p.bias != 0 {
                dram += e * n;
            }
            dram += e * k2 * (m + n);
            // Per K element a CTA writes its A and B rows (BM + BN) and its warps read their warp
            // tiles: warps in a 2 x (warps/2) grid, each reading BM/2 rows of A and 2·BN/warps of B.
            let warps = (threads / 32) as f64;
            let per_k = (bm + bn) as f64 + warps * bm as f64 / 2.0 + 2.0 * bn as f64;
            let smem = ctas * kp * per_k * e;
            Work { flops, tensor_flops, tf32: e == 4.0, dram_bytes: dram, smem_bytes: smem }
        }
        Params::Attn(p) => {
            let (b, heads, n_q, n_kv, d) =
                (p.batch as f64, p.heads as f64, p.n_q as usize, p.n_kv as usize, p.head_dim);
            let flops = 4.0 * b * heads * n_q as f64 * n_kv as f64 * d as f64;
            let (dp, bkv, bq, causal) = attn_tiling(l.kernel);
            // Keys each query tile runs: all key tiles, or (causal) those up to its last query.
            let tiles_q = cdiv(n_q, bq);
            let keys: usize = (0..tiles_q)
                .map(|i| {
                    let upto = if causal { n_kv.min((i + 1) * bq) } else { n_kv };
                    cdiv(upto, bkv) * bkv
                })
                .sum();
            let per_head = keys as f64;
            let tensor_flops = 4.0 * b * heads * bq as f64 * per_head * dp as f64;
            let c = heads * d as f64;
            let dram = e * b * c * (2.0 * p.n_q as f64 + 2.0 * n_kv as f64);
            // K and V tiles are written once and read by every row group of warps (4 in the 64-query
            // kernels, 2 in the wide one); Q is written and read once per CTA.
            let readers = if dp == ATTN_WIDE_DIM { 2.0 } else { 4.0 };
            let smem =
                e * b * heads * (2.0 * (1.0 + readers) * per_head * dp as f64 + 2.0 * (tiles_q * bq * dp) as f64);
            Work { flops, tensor_flops, tf32: e == 4.0, dram_bytes: dram, smem_bytes: smem }
        }
        Params::GroupNorm(p) => {
            let x = e * (p.batch as f64) * (p.hw as f64) * (p.c as f64);
            let bytes = match l.kernel {
                Kernel::GroupNormFinalize => 8.0 * (p.batch * p.groups) as f64 * (p.chunks as f64 + 1.0),
                k if k.name().contains("stats") => x,
                _ => 2.0 * x,
            };
            memory(bytes)
        }
        Params::LayerNorm(p) => memory(2.0 * e * p.rows as f64 * p.c as f64),
        Params::Eltwise(p) => {
            let n = p.n as f64;
            memory(match l.kernel {
                Kernel::GegluV8 | Kernel::GegluV1 => 3.0 * e * n,
                Kernel::AddChannelV8 | Kernel::AddChannelV1 => 2.0 * e * n + e * p.c as f64,
                _ => e * n * if p.b != 0 { 3.0 } else { 2.0 },
            })
        }
        Params::AddScaled(p) => memory(3.0 * e * p.n as f64),
        Params::Concat(p) => memory(2.0 * e * p.rows as f64 * (p.ca + p.cb) as f64),
        Params::Cast(p) => {
            let (from, to) = match l.kernel {
                Kernel::CastF32F16 => (4.0, 2.0),
                Kernel::CastF16F32 => (2.0, 4.0),
                _ => (4.0, 4.0),
            };
            memory(from * p.n_in as f64 + to * p.n as f64)
        }
        Params::Upsample(p) => {
            let per_pixel = e * (p.batch as f64) * (p.c as f64);
            memory(per_pixel * ((p.h * p.w) as f64 + (p.ho * p.wo) as f64))
        }
        Params::Embed(p) => memory((2.0 * e * p.c as f64 + 4.0) * (p.batch * p.tokens) as f64),
        Params::Timestep(p) => memory(e * (p.batch * p.dim) as f64),
        Params::LoraMerge(p) => memory(2.0 * e * (p.co * p.kh * p.kw * p.cip) as f64),
        // Latents f32: sample, noise and out; the model output (f16) once, twice when guided.
        Params::Step(p) => memory(p.n as f64 * (12.0 + 2.0 * (1 + p.guided) as f64)),
        Params::Blend(p) => memory(p.n as f64 * 16.0 + 4.0 * p.n as f64 / p.c.max(1) as f64),
    }
}

fn memory(bytes: f64) -> Work {
    Work { dram_bytes: bytes, ..Work::default() }
}

/// (padded head dim, key tile, queries per CTA, causal) of an attention kernel; the tables are
/// `ops::attention`'s.
fn attn_tiling(k: Kernel) -> (usize, usize, usize, bool) {
    match k {
        Kernel::AttnHd512 => (ATTN_WIDE_DIM, 16, 32, false),
        Kernel::AttnHd512F32 => (ATTN_WIDE_DIM, 8, 32, false),
        // Every other attention kernel is in the table (64 queries per CTA).
        _ => ATTN_TABLE.iter().find(|e| e.3 == k).map_or((ATTN_WIDE_DIM, 64, 64, false), |e| (e.0, e.1, 64, e.2)),
    }
}

#[cfg(test)]
mod tests {
    use lcm_core::{Attention, Gemm};

    use super::*;
    use crate::cuda::launch::test_limits::H100;
    use crate::cuda::launch::Precision;
    use crate::cuda::ops::attention::attention;
    use crate::cuda::ops::gemm::{gemm, GemmPtrs};

    #[test]
    fn a_conv_counts_two_flops_per_mac_and_its_compulsory_bytes() {
        // SD1.5's 8x8-latent 3x3 conv: M = 64, N = 1280, K = 9·1280.
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
        let ptrs = GemmPtrs { x: 1, weight: 2, bias: 3, out: 4, ..GemmPtrs::default() };
        let l = gemm(&s, 0, ptrs, Precision::F16, H100).unwrap();
        let w = work(&l);
        assert_eq!(w.flops, 2.0 * 64.0 * 1280.0 * 11520.0);
        assert_eq!(w.flops, 2.0 * s.macs() as f64);
        // Input, weights, output, bias: all f16.
        assert_eq!(w.dram_bytes, 2.0 * (64.0 * 1280.0 + 1280.0 * 11520.0 + 64.0 * 1280.0 + 1280.0));
        // 64x64 tiles cover it exactly: no padding.
        assert_eq!(w.tensor_flops, w.flops);
        assert!(!w.tf32);
    }

    #[test]
    fn cross_attention_pays_for_its_padded_key_tile() {
        let s = Attention { batch: 1, heads: 8, n_q: 4096, n_kv: 77, head_dim: 40, causal: false, key_limit: None };
        let l = attention(&s, 1, 2, 3, 4, Precision::F16, H100).unwrap();
        let w = work(&l);
        assert_eq!(w.flops, 4.0 * 8.0 * 4096.0 * 77.0 * 40.0);
        // 77 keys run as two 64-key tiles, 40 channels as 48.
        assert_eq!(w.tensor_flops, 4.0 * 8.0 * 4096.0 * 128.0 * 48.0);
    }
}
