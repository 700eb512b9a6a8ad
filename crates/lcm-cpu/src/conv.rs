//! NHWC convolution as GEMM without a full im2col buffer.
//!
//! The weight is stored once as `[kh·kw·Ci, Co]` (row k = (ky, kx, ci)). A 1x1 stride-1 convolution is a
//! plain GEMM over the pixels. Anything else gathers a small block of output pixels' patches
//! (`rows × kh·kw·Ci`, about a megabyte) into a per-task buffer and multiplies it by the weight, so the
//! extra memory is bounded by the thread count, not by the image.

use rayon::prelude::*;

use crate::gemm::{gemm, MatRef};

/// The geometry of one convolution (shared with every backend).
pub use lcm_core::Gemm as ConvShape;

/// Reorders a torch conv weight `[Co, Ci, kh, kw]` into `[kh, kw, Ci, Co]`.
pub fn pack_weight(w: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut out = crate::memory::zeroed(w.len());
    for o in 0..co {
        for i in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    out[((y * kw + x) * ci + i) * co + o] = w[((o * ci + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// Bytes of one block of gathered patches. Large enough that the weight (packed by the GEMM for each
/// block) is packed a handful of times per convolution, small enough to stay far below a full im2col of
/// the big VAE convolutions (a 512² × 9·256 im2col would be 2.4 GB).
const PATCH_BYTES: usize = 24 << 20;

/// `out = conv(x, w)`, then the epilogue (bias, residual) is applied by the caller.
pub fn conv2d(s: &ConvShape, x: &[f32], w_packed: &[f32], out: &mut [f32]) {
    let k = s.kh * s.kw * s.ci;
    let pixels = s.batch * s.ho * s.wo;
    let wm = MatRef { data: w_packed, rs: s.co, cs: 1 };
    if s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == [0; 4] {
        return gemm(pixels, s.co, k, MatRef { data: x, rs: s.ci, cs: 1 }, wm, out);
    }
    let rows = (PATCH_BYTES / (4 * k)).max(64).min(pixels.max(1));
    PATCH.with(|patch| {
        let mut patch = patch.borrow_mut();
        crate::memory::grow(&mut patch, rows * k);
        for (chunk, ob) in out[..pixels * s.co].chunks_mut(rows * s.co).enumerate() {
            let p0 = chunk * rows;
            let n = ob.len() / s.co;
            patch[..n * k].par_chunks_mut(k).enumerate().for_each(|(r, dst)| gather_patch(s, x, p0 + r, dst));
            gemm(n, s.co, k, MatRef { data: &patch[..n * k], rs: k, cs: 1 }, wm, ob);
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
        ];
        for (batch, h, w, ci, co, k, stride, pad) in cases {
            let ho = (h + pad[0] + pad[2] - k) / stride + 1;
            let wo = (w + pad[1] + pad[3] - k) / stride + 1;
            let s = ConvShape { batch, h, w, ci, ho, wo, co, kh: k, kw: k, stride, pad, geglu: false };
            let x: Vec<f32> = (0..batch * h * w * ci).map(|i| ((i * 37 % 19) as f32 - 9.0) / 9.0).collect();
            let wt: Vec<f32> = (0..co * ci * k * k).map(|i| ((i * 11 % 23) as f32 - 11.0) / 11.0).collect();
            let mut out = vec![f32::NAN; batch * ho * wo * co];
            conv2d(&s, &x, &pack_weight(&wt, co, ci, k, k), &mut out);
            let want = reference(&s, &x, &wt);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
