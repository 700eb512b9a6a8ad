//! NHWC convolution as GEMM without a full im2col buffer.
//!
//! The weight is stored once as the GEMM's B, `[kh·kw·Ci, Co]` (row k = (ky, kx, ci)), packed at load
//! for [`crate::packed`]. A 1x1 stride-1 convolution is a plain GEMM over the pixels. Anything else
//! gathers a small block of output pixels' patches (`rows × kh·kw·Ci`, about a megabyte) into a buffer
//! and multiplies it by the weight, so the extra memory is bounded, not proportional to the image.
//!
//! Why the packed GEMM and not the `gemm` crate (which packs B on every call): UNet's 1280-channel
//! convolutions at 8x8 and 4x4 multiply 16-64 pixels by 59-118 MB of weight, and packing that weight per
//! call made them run at 58-130 GFLOP/s; pre-packed, 0.54-0.62x the time (benches/gemm.rs). Only
//! convolutions with fewer than 16 output channels (the models' 3- or 4-channel outputs) stay on the
//! crate: the packed kernel computes 32 columns per panel, 3 of them useful.

use rayon::prelude::*;

use crate::gemm::{gemm, MatRef};
use crate::packed::{self, Epilogue, PackedB};

/// The geometry of one convolution (shared with every backend).
pub use lcm_core::Gemm as ConvShape;

/// Output channels below which a convolution's weight stays plain, for the `gemm` crate.
const NARROW: usize = 16;

/// A convolution's weight as its GEMM's B, `[kh·kw·Ci, Co]`.
pub enum GemmWeight {
    /// Packed for [`crate::packed`].
    Packed(PackedB),
    /// Row-major, for the `gemm` crate (fewer than [`NARROW`] output channels).
    Narrow {
        /// `[kh·kw·Ci, Co]`.
        b: Vec<f32>,
        /// Co.
        n: usize,
    },
}

impl GemmWeight {
    /// Columns `j0 .. j0 + width` of B's row `kk`; `j0` a multiple of the packed panel width (as
    /// [`PackedB::from_rows`] asks for) and the columns within one panel.
    pub fn row(&self, kk: usize, j0: usize, width: usize) -> &[f32] {
        match self {
            GemmWeight::Packed(p) => p.row(kk, j0, width),
            GemmWeight::Narrow { b, n } => &b[kk * n + j0..][..width],
        }
    }
}

/// Reorders a torch conv weight `[Co, Ci, kh, kw]` into B `[kh·kw·Ci, Co]`.
pub fn pack_weight(w: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> GemmWeight {
    let at = |kk: usize, o: usize| {
        let (tap, i) = (kk / ci, kk % ci);
        w[((o * ci + i) * kh + tap / kw) * kw + tap % kw]
    };
    let k = kh * kw * ci;
    if co < NARROW {
        return GemmWeight::Narrow { b: (0..k * co).map(|e| at(e / co, e % co)).collect(), n: co };
    }
    GemmWeight::Packed(PackedB::from_rows(k, co, |kk, j0, dst| {
        dst.iter_mut().enumerate().for_each(|(j, d)| *d = at(kk, j0 + j))
    }))
}

/// Bytes of one block of gathered patches. Large enough that the weight (packed by the GEMM for each
/// block) is packed a handful of times per convolution, small enough to stay far below a full im2col of
/// the big VAE convolutions (a 512² × 9·256 im2col would be 2.4 GB).
const PATCH_BYTES: usize = 24 << 20;

/// `out = conv(x, w) + bias + residual`.
pub fn conv2d(s: &ConvShape, x: &[f32], w: &GemmWeight, out: &mut [f32], epi: Epilogue) {
    let k = s.kh * s.kw * s.ci;
    let pixels = s.batch * s.ho * s.wo;
    // `C = A·B + epilogue` for the output pixels from p0 (C's rows).
    let run = |a: &[f32], p0: usize, c: &mut [f32]| {
        let rows = c.len() / s.co;
        let epi = Epilogue { bias: epi.bias, residual: epi.residual.map(|r| &r[p0 * s.co..]) };
        match w {
            GemmWeight::Packed(b) => packed::gemm(rows, a, k, b, c, epi),
            GemmWeight::Narrow { b, .. } => {
                let wm = MatRef { data: b, rs: s.co, cs: 1 };
                gemm(rows, s.co, k, MatRef { data: a, rs: k, cs: 1 }, wm, c);
                packed::add_epilogue(c, s.co, epi);
            }
        }
    };
    if s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == [0; 4] {
        return run(&x[..pixels * k], 0, &mut out[..pixels * s.co]);
    }
    let rows = (PATCH_BYTES / (4 * k)).max(64).min(pixels.max(1));
    PATCH.with(|patch| {
        let mut patch = patch.borrow_mut();
        crate::memory::grow(&mut patch, rows * k);
        for (chunk, ob) in out[..pixels * s.co].chunks_mut(rows * s.co).enumerate() {
            let p0 = chunk * rows;
            let n = ob.len() / s.co;
            patch[..n * k].par_chunks_mut(k).enumerate().for_each(|(r, dst)| gather_patch(s, x, p0 + r, dst));
            run(&patch[..n * k], p0, ob);
        }
    });
}

thread_local! {
    /// The calling thread's block of gathered patches, kept between calls (it only grows, to at most
    /// `PATCH_BYTES`): a fresh one per convolution was tens of megabytes of page faults per UNet step.
    static PATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the receptive field of output pixel `p` (flattened over batch, rows, cols) in (ky, kx, ci)
/// order, zeros where it falls in the padding.
fn gather_patch(s: &ConvShape, x: &[f32], p: usize, dst: &mut [f32]) {
    let b = p / (s.ho * s.wo);
    let oy = (p / s.wo) % s.ho;
    let ox = p % s.wo;
    for ky in 0..s.kh {
        let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
        for kx in 0..s.kw {
            let ix = (ox * s.stride + kx) as isize - s.pad[1] as isize;
            let d = &mut dst[(ky * s.kw + kx) * s.ci..(ky * s.kw + kx + 1) * s.ci];
            if iy < 0 || ix < 0 || iy as usize >= s.h || ix as usize >= s.w {
                d.fill(0.0);
            } else {
                let at = ((b * s.h + iy as usize) * s.w + ix as usize) * s.ci;
                d.copy_from_slice(&x[at..at + s.ci]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct NCHW-free reference straight from the definition.
    fn reference(s: &ConvShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; s.batch * s.ho * s.wo * s.co];
        for b in 0..s.batch {
            for oy in 0..s.ho {
                for ox in 0..s.wo {
                    for o in 0..s.co {
                        let mut acc = 0.0f64;
                        for i in 0..s.ci {
                            for ky in 0..s.kh {
                                for kx in 0..s.kw {
                                    let iy = (oy * s.stride + ky) as isize - s.pad[0] as isize;
                                    let ix = (ox * s.stride + kx) as isize - s.pad[1] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                                        let xv = x[((b * s.h + iy as usize) * s.w + ix as usize) * s.ci + i];
                                        acc += xv as f64 * w[((o * s.ci + i) * s.kh + ky) * s.kw + kx] as f64;
                                    }
                                }
                            }
                        }
                        out[((b * s.ho + oy) * s.wo + ox) * s.co + o] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_definition() {
        let cases = [
            (2, 5, 7, 3, 4, 3, 1, [1, 1, 1, 1]),
            (1, 8, 6, 5, 2, 3, 2, [1, 1, 1, 1]),
            (1, 8, 8, 4, 3, 3, 2, [0, 0, 1, 1]),
            (2, 3, 4, 6, 7, 1, 1, [0, 0, 0, 0]),
            // 16 output channels and up: the packed GEMM, bias and residual in its epilogue.
            (2, 9, 7, 5, 20, 3, 1, [1, 1, 1, 1]),
            (1, 8, 8, 6, 33, 3, 2, [0, 0, 1, 1]),
            (2, 5, 6, 9, 40, 1, 1, [0, 0, 0, 0]),
        ];
        for (batch, h, w, ci, co, k, stride, pad) in cases {
            let ho = (h + pad[0] + pad[2] - k) / stride + 1;
            let wo = (w + pad[1] + pad[3] - k) / stride + 1;
            let s = ConvShape { batch, h, w, ci, ho, wo, co, kh: k, kw: k, stride, pad, geglu: false };
            let x: Vec<f32> = (0..batch * h * w * ci).map(|i| ((i * 37 % 19) as f32 - 9.0) / 9.0).collect();
            let wt: Vec<f32> = (0..co * ci * k * k).map(|i| ((i * 11 % 23) as f32 - 11.0) / 11.0).collect();
            let bias: Vec<f32> = (0..co).map(|i| i as f32 / 5.0 - 2.0).collect();
            let res: Vec<f32> = (0..batch * ho * wo * co).map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0).collect();
            let mut out = vec![f32::NAN; batch * ho * wo * co];
            let epi = Epilogue { bias: Some(&bias), residual: Some(&res) };
            conv2d(&s, &x, &pack_weight(&wt, co, ci, k, k), &mut out, epi);
            let mut want = reference(&s, &x, &wt);
            for (i, w) in want.iter_mut().enumerate() {
                *w += bias[i % co] + res[i];
            }
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
