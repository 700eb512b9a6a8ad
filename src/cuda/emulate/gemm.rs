//! kernels/gemm.cu, transcribed: one launch of `igemm<BM, BN, WM, WN>` over whole tiles.
// Loops index like the kernel does, on purpose: the transcription must match.
#![allow(clippy::needless_range_loop)]

use super::{assert_close, ldmatrix_x4, mma, pick2, rand_vec};

#[derive(Clone, Copy, Default)]
struct Gemm {
    batch: usize,
    h: usize,
    w: usize,
    ci: usize,
    ho: usize,
    wo: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    k2: usize,
    geglu: bool,
}

const BK: usize = 32;

/// One launch of `igemm<BM, BN, WM, WN>`: x NHWC, w `[co, kh, kw, cip]`, a2 `[M, k2]`, w2 `[co, k2]`.
#[allow(clippy::too_many_arguments)]
fn igemm(
    bm: usize,
    bn: usize,
    wm_n: usize,
    wn_n: usize,
    p: &Gemm,
    x: &[f32],
    wt: &[f32],
    a2: &[f32],
    w2: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let threads = wm_n * wn_n * 32;
    let (tm, tn) = (bm / wm_n, bn / wn_n);
    let (mi_n, ni_n) = (tm / 16, tn / 8);
    let m_total = p.batch * p.ho * p.wo;
    let n_total = p.co;
    let cip = p.ci.div_ceil(8) * 8;
    let k1 = p.kh * p.kw * cip;
    let (kt1, kt2) = (k1.div_ceil(BK), p.k2.div_ceil(BK));
    let ldc = if p.geglu { n_total / 2 } else { n_total };
    let mut out = vec![f32::NAN; m_total * ldc];
    for m0 in (0..m_total).step_by(bm) {
        for n0 in (0..n_total).step_by(bn) {
            let mut acc = vec![[[[0.0f32; 4]; 32]; 8]; 8 * (threads / 32)]; // [warp*8 + mi][ni][lane][r]
            for kt in 0..kt1 + kt2 {
                let mut a_s = vec![vec![0.0f32; BK]; bm];
                let mut b_s = vec![vec![0.0f32; BK]; bn];
                // load_tile, one thread at a time
                for tid in 0..threads {
                    let kc = (tid & 3) * 8;
                    for i in 0..bm * 4 / threads {
                        let row_a = (tid >> 2) + i * (threads / 4);
                        let m = m0 + row_a;
                        for j in 0..8 {
                            a_s[row_a][kc + j] = if kt < kt1 {
                                let k = kt * BK + kc;
                                let (tap, c) = (k / cip, k % cip);
                                let (ky, kx) = (tap / p.kw, tap % p.kw);
                                if m >= m_total || k >= k1 {
                                    0.0
                                } else {
                                    let hw = p.ho * p.wo;
                                    let (b, r) = (m / hw, m % hw);
                                    let (oy, ox) = (r / p.wo, r % p.wo);
                                    let iy = (oy * p.stride + ky) as i64 - p.pad_top as i64;
                                    let ix = (ox * p.stride + kx) as i64 - p.pad_left as i64;
                                    let inside = iy >= 0 && iy < p.h as i64 && ix >= 0 && ix < p.w as i64;
                                    if inside && c + j < p.ci {
                                        x[((b * p.h + iy as usize) * p.w + ix as usize) * p.ci + c + j]
                                    } else {
                                        0.0
                                    }
                                }
                            } else {
                                let k = (kt - kt1) * BK + kc;
                                if k < p.k2 && m < m_total {
                                    a2[m * p.k2 + k + j]
                                } else {
                                    0.0
                                }
                            };
                        }
                    }
                    for i in 0..bn * 4 / threads {
                        let n = n0 + (tid >> 2) + i * (threads / 4);
                        let brow = if p.geglu {
                            if n & 1 == 1 {
                                n_total / 2 + (n >> 1)
                            } else {
                                n >> 1
                            }
                        } else {
                            n
                        };
                        for j in 0..8 {
                            b_s[(tid >> 2) + i * (threads / 4)][kc + j] = if n >= n_total {
                                0.0
                            } else if kt < kt1 {
                                let k = kt * BK + kc;
                                if k < k1 {
                                    wt[brow * k1 + k + j]
                                } else {
                                    0.0
                                }
                            } else {
                                let k = (kt - kt1) * BK + kc;
                                if k < p.k2 {
                                    w2[brow * p.k2 + k + j]
                                } else {
                                    0.0
                                }
                            };
                        }
                    }
                }
                let a_at = |r: usize, c: usize| a_s[r][c];
                let b_at = |r: usize, c: usize| b_s[r][c];
                for warp in 0..threads / 32 {
                    let (wm, wn) = (warp % wm_n, warp / wm_n);
                    for kk in 0..BK / 16 {
                        for mi in 0..mi_n {
                            let af = ldmatrix_x4(
                                &a_at,
                                &|lane| (wm * tm + mi * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8),
                                false,
                            );
                            for nj in 0..ni_n / 2 {
                                let r = ldmatrix_x4(
                                    &b_at,
                                    &|lane| {
                                        (
                                            wn * tn + nj * 16 + (lane & 7) + (lane >> 4) * 8,
                                            kk * 16 + ((lane >> 3) & 1) * 8,
                                        )
                                    },
                                    false,
                                );
                                mma(&mut acc[warp * 8 + mi][2 * nj], &af, &pick2(&r, 0, 1));
                                mma(&mut acc[warp * 8 + mi][2 * nj + 1], &af, &pick2(&r, 2, 3));
                            }
                        }
                    }
                }
            }
            // epilogue
            for warp in 0..threads / 32 {
                let (wm, wn) = (warp % wm_n, warp / wm_n);
                for lane in 0..32 {
                    let (g, t4) = (lane >> 2, lane & 3);
                    for mi in 0..mi_n {
                        for hr in 0..2 {
                            let m = m0 + wm * tm + mi * 16 + g + hr * 8;
                            if m >= m_total {
                                continue;
                            }
                            for ni in 0..ni_n {
                                let n = n0 + wn * tn + ni * 8 + 2 * t4;
                                if n >= n_total {
                                    continue;
                                }
                                let (mut v0, mut v1) =
                                    (acc[warp * 8 + mi][ni][lane][2 * hr], acc[warp * 8 + mi][ni][lane][2 * hr + 1]);
                                if p.geglu {
                                    let j = n >> 1;
                                    v0 += bias[j];
                                    v1 += bias[n_total / 2 + j];
                                    out[m * ldc + j] = v0 * v1; // gelu left out: indexing is the point
                                    continue;
                                }
                                out[m * ldc + n] = v0 + bias[n];
                                if n + 1 < n_total {
                                    out[m * ldc + n + 1] = v1 + bias[n + 1];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Direct NHWC conv with torch-layout weights `[co, ci, kh, kw]`, plus bias.
fn conv_ref(p: &Gemm, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; p.batch * p.ho * p.wo * p.co];
    for b in 0..p.batch {
        for oy in 0..p.ho {
            for ox in 0..p.wo {
                for o in 0..p.co {
                    let mut s = bias[o];
                    for ky in 0..p.kh {
                        for kx in 0..p.kw {
                            let iy = (oy * p.stride + ky) as i64 - p.pad_top as i64;
                            let ix = (ox * p.stride + kx) as i64 - p.pad_left as i64;
                            if iy < 0 || ix < 0 || iy >= p.h as i64 || ix >= p.w as i64 {
                                continue;
                            }
                            for c in 0..p.ci {
                                s += x[((b * p.h + iy as usize) * p.w + ix as usize) * p.ci + c]
                                    * w[((o * p.ci + c) * p.kh + ky) * p.kw + kx];
                            }
                        }
                    }
                    out[((b * p.ho + oy) * p.wo + ox) * p.co + o] = s;
                }
            }
        }
    }
    out
}

fn stored(w: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> Vec<f32> {
    crate::cuda::launch::gemm_weight_layout(w, co, ci, kh, kw).iter().map(|v| v.to_f32()).collect()
}

#[test]
fn igemm_tiles_compute_the_conv() {
    // (batch, h, w, ci, co, k, stride, pad [t, l, b, r]): awkward sizes on purpose.
    let cases = [
        (2, 9, 7, 16, 24, 3, 1, [1, 1, 1, 1]),
        (1, 9, 9, 8, 40, 3, 2, [0, 0, 1, 1]), // the VAE encoder's downsampler
        (1, 6, 5, 3, 8, 3, 1, [1, 1, 1, 1]),  // RGB in: the scalar-A path
        (2, 5, 3, 24, 72, 1, 1, [0, 0, 0, 0]),
    ];
    for (ci_case, &(batch, h, w, ci, co, k, stride, pad)) in cases.iter().enumerate() {
        let ho = (h + pad[0] + pad[2] - k) / stride + 1;
        let wo = (w + pad[1] + pad[3] - k) / stride + 1;
        let p = Gemm {
            batch,
            h,
            w,
            ci,
            ho,
            wo,
            co,
            kh: k,
            kw: k,
            stride,
            pad_top: pad[0],
            pad_left: pad[1],
            ..Default::default()
        };
        let x = rand_vec(batch * h * w * ci, 1 + ci_case as u64);
        // f16-exact weights: the stored layout is f16, and rounding is not what this test is about.
        let wt: Vec<f32> = rand_vec(co * ci * k * k, 7).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let bias = rand_vec(co, 3);
        let want = conv_ref(&p, &x, &wt, &bias);
        for (bm, bn, wmn, wnn) in [(64, 64, 2, 2), (128, 128, 2, 4)] {
            let got = igemm(bm, bn, wmn, wnn, &p, &x, &stored(&wt, co, ci, k, k), &[], &[], &bias);
            assert_close(&got, &want, &format!("case {ci_case}, tile {bm}x{bn}"));
        }
    }
}

#[test]
fn igemm_second_segment_and_geglu_index_the_right_rows() {
    // Linear [M=37, K=24] -> N=16 with a LoRA segment of k2 = 8: y = x·Wᵀ + u·W2ᵀ.
    let (m, k, n, k2) = (37, 24, 16, 8);
    let p = Gemm { k2, ..lin(m, k, n) };
    let (x, w, u, w2, bias) =
        (rand_vec(m * k, 1), rand_vec(n * k, 2), rand_vec(m * k2, 3), rand_vec(n * k2, 4), rand_vec(n, 5));
    let got = igemm(64, 64, 2, 2, &p, &x, &w, &u, &w2, &bias);
    for r in 0..m {
        for c in 0..n {
            let want = bias[c]
                + (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum::<f32>()
                + (0..k2).map(|i| u[r * k2 + i] * w2[c * k2 + i]).sum::<f32>();
            assert!((got[r * n + c] - want).abs() < 1e-3, "lora ({r}, {c})");
        }
    }
    // GEGLU: rows [hidden | gate]; out[r, j] = (h_j)·(g_j) in this emulation.
    let p = Gemm { geglu: true, ..lin(m, k, n) };
    let got = igemm(64, 64, 2, 2, &p, &x, &w, &[], &[], &bias);
    for r in 0..m {
        for j in 0..n / 2 {
            let dot = |row: usize| bias[row] + (0..k).map(|i| x[r * k + i] * w[row * k + i]).sum::<f32>();
            assert!((got[r * n / 2 + j] - dot(j) * dot(n / 2 + j)).abs() < 1e-3, "geglu ({r}, {j})");
        }
    }
}

fn lin(m: usize, k: usize, n: usize) -> Gemm {
    Gemm { batch: 1, h: 1, w: m, ci: k, ho: 1, wo: m, co: n, kh: 1, kw: 1, stride: 1, ..Default::default() }
}
