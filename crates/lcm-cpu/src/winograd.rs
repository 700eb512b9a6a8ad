//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2015): each 4x4 block of outputs comes from a 6x6 block of input
//! in 36 multiplies per (input, output) channel pair instead of 144, so the GEMM work is 4x smaller.
//!
//! Per block of tiles (blocks in turn, each phase split across rayon's threads, the buffers kept between
//! calls):
//! 1. input transform: each 6x6 input tile `d` (zeros in the padding) becomes `V = Bᵀ·d·B`, written as
//!    36 matrices `[tiles, Ci]`;
//! 2. 36 GEMMs `M_ξ = V_ξ · U_ξ` with `U = G·g·Gᵀ`, the weight transformed once, on first use, into 36
//!    packed `[Ci, Co]` matrices (4x the weight's size, which is why only convolutions big enough to
//!    gain are routed here: see [`applies`]);
//! 3. output transform: `Y = Aᵀ·M·A`, plus bias and residual, written once into the NHWC output.
//!
//! Rounding: the transforms mix values with weights up to 8 (and 1/24), so results differ from the
//! direct sum in the last bits: about 1e-6 relative on random data (the test below bounds it), far inside
//! the models' 1e-4 parity tolerance.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::conv::{ConvShape, GemmWeight};
use crate::packed::{self, Epilogue, PackedB};

/// Output tile side.
const M: usize = 4;
/// Input tile side: M + 3 - 1.
const T: usize = 6;
/// Channels per transform step: one AVX-512 register's worth, which LLVM vectorises at any width.
const L: usize = 16;

/// G (6x3): the weight transform.
const G: [[f64; 3]; T] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Tiles per image below which the direct convolution is kept: with few tiles, streaming the 4x larger
/// transformed weight costs more than the multiplies saved (measured: benches/conv.rs).
const MIN_TILES: usize = 64;

/// Whether [`conv2d`] can compute `s`: a 3x3, stride-1, pad-1 convolution.
pub fn fits(s: &ConvShape) -> bool {
    s.kh == 3 && s.kw == 3 && s.stride == 1 && s.pad == [1; 4] && s.ho == s.h && s.wo == s.w
}

/// Whether the backend runs `s` here: it [`fits`], with enough tiles per image and channels to gain.
pub fn applies(s: &ConvShape) -> bool {
    fits(s) && s.ci >= 8 && s.co >= 8 && s.ho.div_ceil(M) * s.wo.div_ceil(M) >= MIN_TILES
}

/// The transformed weight: 36 packed `[Ci, Co]` matrices, `U_ξ` for ξ = (row, column) of the 6x6 tile.
pub struct WinogradWeight {
    u: Vec<PackedB>,
}

impl WinogradWeight {
    /// Transforms a convolution's GEMM weight `[3·3·Ci, Co]` ([`crate::conv::pack_weight`]):
    /// `U_ξ = Σ_taps G[i][ky]·G[j][kx]·g[ky][kx]` for ξ = (i, j), the 9 coefficients of each ξ taken in
    /// f64 and rounded once, written straight into the packed layout.
    pub fn new(w: &GemmWeight, ci: usize, co: usize) -> WinogradWeight {
        let u = (0..T * T)
            .into_par_iter()
            .map(|xi| {
                let f: [f32; 9] = std::array::from_fn(|tap| (G[xi / T][tap / 3] * G[xi % T][tap % 3]) as f32);
                PackedB::from_rows(ci, co, |kk, j0, dst| {
                    dst.fill(0.0);
                    for (tap, &f) in f.iter().enumerate().filter(|(_, f)| **f != 0.0) {
                        let g = w.row(tap * ci + kk, j0, dst.len());
                        dst.iter_mut().zip(g).for_each(|(d, &g)| *d += f * g);
                    }
                })
            })
            .collect();
        WinogradWeight { u }
    }
}

thread_local! {
    /// The calling thread's transformed inputs and GEMM outputs for one block of tiles: reused across
    /// calls, so the steady state allocates nothing.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A buffer shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes only its own part (its tiles' pixels or rows, its ξ's matrix), and the
// caller holds the buffer exclusively for the call.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer, through a method so closures capture the `Send` wrapper, not its field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Bytes of V and M together per block of tiles: the block's GEMMs then read their A from a cache-sized
/// working set, and are still tall enough (up to 24 micro-kernel tiles) to run at speed.
const BLOCK_BYTES: usize = 16 << 20;

/// `out = conv(x, w) + bias + residual` for a shape that [`fits`].
///
/// Blocks of tiles one after another; within a block, all threads transform the tiles, then share the
/// 36 GEMMs (each over the whole block, so the packed weight is read once per block), then transform
/// back. Every output is summed in the same order whatever the thread count or the batch.
pub fn conv2d(s: &ConvShape, x: &[f32], w: &WinogradWeight, out: &mut [f32], epi: Epilogue) {
    assert!(fits(s), "winograd: {s:?} is not a 3x3 stride-1 pad-1 convolution");
    assert_eq!(w.u[0].k(), s.ci, "winograd: weight has {} input channels, not {}", w.u[0].k(), s.ci);
    assert_eq!(w.u[0].n(), s.co, "winograd: weight has {} output channels, not {}", w.u[0].n(), s.co);
    let pixels = s.batch * s.ho * s.wo;
    assert!(x.len() >= s.batch * s.h * s.w * s.ci && out.len() >= pixels * s.co);
    assert!(epi.bias.is_none_or(|b| b.len() >= s.co) && epi.residual.is_none_or(|r| r.len() >= pixels * s.co));
    let tiles = s.batch * s.ho.div_ceil(M) * s.wo.div_ceil(M);
    // A multiple of 14 rows, the AVX-512 micro-kernel's.
    let per_block = (BLOCK_BYTES / (4 * T * T * (s.ci + s.co)) / 14 * 14).clamp(14, 14 * 24).min(tiles);
    let out = Shared(out.as_mut_ptr());
    SCRATCH.with(|scratch| {
        let (v, m) = &mut *scratch.borrow_mut();
        crate::memory::grow(v, T * T * per_block * s.ci);
        crate::memory::grow(m, T * T * per_block * s.co);
        for first in (0..tiles).step_by(per_block) {
            let n = per_block.min(tiles - first);
            let (v, mm) = (Shared(v.as_mut_ptr()), Shared(m.as_mut_ptr()));
            (0..n).into_par_iter().for_each(|t| {
                // SAFETY: row t of every V_ξ is this task's alone; V holds 36·n·Ci values.
                crate::simd::simd(|| unsafe { input_tile(s, x, first + t, v, n, t) });
            });
            (0..T * T).into_par_iter().for_each(|xi| {
                // SAFETY: V is only read now; M_ξ (n × Co at ξ·n·Co) is this task's alone.
                let (vx, mx) = unsafe {
                    (
                        std::slice::from_raw_parts(v.at(xi * n * s.ci), n * s.ci),
                        std::slice::from_raw_parts_mut(mm.at(xi * n * s.co), n * s.co),
                    )
                };
                packed::gemm_serial(n, vx, s.ci, &w.u[xi], mx, Epilogue::default());
            });
            let m = &m[..T * T * n * s.co];
            (0..n).into_par_iter().for_each(|t| {
                // SAFETY: tile first + t's pixels are this task's alone.
                crate::simd::simd(|| unsafe { output_tile(s, m, n, t, first + t, out, epi) });
            });
        }
    });
}

/// (image, tile row, tile column) of tile `t`.
fn tile_at(s: &ConvShape, t: usize) -> (usize, usize, usize) {
    let (th, tw) = (s.ho.div_ceil(M), s.wo.div_ceil(M));
    (t / (th * tw), t / tw % th, t % tw)
}

type Lanes = [f32; L];

/// `Bᵀ·d` over one dimension of the 6x6 tile, for L channels at once.
#[inline(always)]
fn input_1d(d: [Lanes; T]) -> [Lanes; T] {
    let mut r = [[0.0; L]; T];
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `Aᵀ·m` over one dimension: 6 values to the 4 outputs.
#[inline(always)]
fn output_1d(m: [Lanes; T]) -> [Lanes; M] {
    let mut r = [[0.0; L]; M];
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (a, b, c, d) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        r[0][l] = m0 + a + c;
        r[1][l] = b + 2.0 * d;
        r[2][l] = a + 4.0 * c;
        r[3][l] = b + 8.0 * d + m5;
    }
    r
}

/// Writes tile `t`'s `V` into `v` (36 matrices `[n, Ci]`, this tile's row `row`).
///
/// # Safety
/// `v` holds 36·n·Ci values, and no other thread writes row `row` of them while this runs.
unsafe fn input_tile(s: &ConvShape, x: &[f32], t: usize, v: Shared, n: usize, row: usize) {
    let (img, ty, tx) = tile_at(s, t);
    for c0 in (0..s.ci).step_by(L) {
        let width = L.min(s.ci - c0);
        let mut d = [[0.0f32; L]; T * T];
        for y in 0..T {
            let iy = (ty * M + y) as isize - 1;
            if iy < 0 || iy as usize >= s.h {
                continue;
            }
            for xx in 0..T {
                let ix = (tx * M + xx) as isize - 1;
                if ix >= 0 && (ix as usize) < s.w {
                    let at = ((img * s.h + iy as usize) * s.w + ix as usize) * s.ci + c0;
                    d[y * T + xx][..width].copy_from_slice(&x[at..at + width]);
                }
            }
        }
        // Columns (down y), then rows (across x).
        let mut cols = [[0.0f32; L]; T * T];
        for xx in 0..T {
            let r = input_1d(std::array::from_fn(|y| d[y * T + xx]));
            (0..T).for_each(|i| cols[i * T + xx] = r[i]);
        }
        for i in 0..T {
            let r = input_1d(std::array::from_fn(|xx| cols[i * T + xx]));
            for (j, lanes) in r.iter().enumerate() {
                let at = ((i * T + j) * n + row) * s.ci + c0;
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), v.at(at), width);
            }
        }
    }
}

/// Transforms tile `t`'s products (row `row` of the 36 matrices `[n, Co]` in `m`) back to its 4x4 output
/// pixels, adds the epilogue, and writes the ones inside the image.
///
/// # Safety
/// No other thread writes tile `t`'s pixels of `out` while this runs; `out` holds the whole output.
unsafe fn output_tile(s: &ConvShape, m: &[f32], n: usize, row: usize, t: usize, out: Shared, epi: Epilogue) {
    let (img, ty, tx) = tile_at(s, t);
    for c0 in (0..s.co).step_by(L) {
        let width = L.min(s.co - c0);
        let load = |xi: usize| {
            let mut lanes = [0.0f32; L];
            lanes[..width].copy_from_slice(&m[(xi * n + row) * s.co + c0..][..width]);
            lanes
        };
        let mut rows = [[0.0f32; L]; M * T];
        for j in 0..T {
            let r = output_1d(std::array::from_fn(|i| load(i * T + j)));
            (0..M).for_each(|a| rows[a * T + j] = r[a]);
        }
        for a in 0..M {
            let oy = ty * M + a;
            if oy >= s.ho {
                break;
            }
            let r = output_1d(std::array::from_fn(|j| rows[a * T + j]));
            for (b, lanes) in r.iter().enumerate() {
                let ox = tx * M + b;
                if ox >= s.wo {
                    break;
                }
                let at = ((img * s.ho + oy) * s.wo + ox) * s.co + c0;
                let dst = std::slice::from_raw_parts_mut(out.at(at), width);
                dst.copy_from_slice(&lanes[..width]);
                if let Some(bias) = epi.bias {
                    dst.iter_mut().zip(&bias[c0..]).for_each(|(o, b)| *o += b);
                }
                if let Some(res) = epi.residual {
                    dst.iter_mut().zip(&res[at..]).for_each(|(o, r)| *o += r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv;

    fn shape(batch: usize, h: usize, w: usize, ci: usize, co: usize) -> ConvShape {
        ConvShape { batch, h, w, ci, ho: h, wo: w, co, kh: 3, kw: 3, stride: 1, pad: [1; 4], geglu: false }
    }

    /// Against the GEMM convolution (itself tested against the definition), bias and residual added
    /// the same way; image sides not a multiple of 4 and channel counts not a multiple of 16 included.
    #[test]
    fn matches_direct_convolution() {
        for (batch, h, w, ci, co) in [(1, 32, 32, 16, 16), (2, 30, 33, 20, 24), (1, 7, 150, 8, 40), (1, 64, 40, 35, 9)]
        {
            let s = shape(batch, h, w, ci, co);
            assert!(applies(&s), "{s:?}");
            let x: Vec<f32> = (0..batch * h * w * ci).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let wt: Vec<f32> = (0..co * ci * 9).map(|i| ((i * 11 % 23) as f32 - 11.0) / 30.0).collect();
            let bias: Vec<f32> = (0..co).map(|i| i as f32 / 7.0 - 1.0).collect();
            let res: Vec<f32> = (0..batch * h * w * co).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
            let packed = conv::pack_weight(&wt, co, ci, 3, 3);
            let mut want = vec![0.0; batch * h * w * co];
            let epi = Epilogue { bias: Some(&bias), residual: Some(&res) };
            conv::conv2d(&s, &x, &packed, &mut want, epi);
            let mut got = vec![f32::NAN; want.len()];
            conv2d(&s, &x, &WinogradWeight::new(&packed, ci, co), &mut got, epi);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (g, w) in got.iter().zip(&want) {
                assert!(g.is_finite(), "{s:?}: unwritten output");
                num += ((g - w) as f64).powi(2);
                den += (*w as f64).powi(2);
            }
            let rel = (num / den).sqrt();
            assert!(rel < 2e-6, "{s:?}: relative L2 {rel:e}");
        }
    }

    #[test]
    fn small_or_strided_convolutions_stay_direct() {
        assert!(!applies(&shape(1, 16, 16, 64, 64)), "16x16: 16 tiles, too few");
        assert!(!applies(&ConvShape { stride: 2, ho: 32, wo: 32, ..shape(1, 64, 64, 64, 64) }));
        assert!(!applies(&shape(1, 64, 64, 4, 320)), "4 input channels");
    }
}
