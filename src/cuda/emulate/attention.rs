//! kernels/attention.cu, transcribed: `flash_fwd` and `flash_fwd_wide` over whole blocks.
// Loops index like the kernel does, on purpose: the transcription must match.
#![allow(clippy::needless_range_loop)]

use super::{assert_close, ldmatrix_x4, mma, pick2, rand_vec, Regs};

type Frag = [[f32; 4]; 32];

/// attention.cu's online_softmax for one warp; the lane shuffles become a max/sum over the 4 lanes of
/// a row.
#[allow(clippy::too_many_arguments)]
fn online_softmax(
    s: &mut [Frag],
    o: &mut [Frag],
    mrow: &mut [[f32; 2]; 32],
    lrow: &mut [[f32; 2]; 32],
    kv0: usize,
    q_row0: usize,
    n_kv: usize,
    causal: bool,
    scale_log2: f32,
) {
    for lane in 0..32 {
        for (j, sj) in s.iter_mut().enumerate() {
            for e in 0..4 {
                let key = kv0 + j * 8 + 2 * (lane & 3) + (e & 1);
                let qi = q_row0 + (lane >> 2) + (e >> 1) * 8;
                let masked = key >= n_kv || (causal && key > qi);
                sj[lane][e] = if masked { f32::NEG_INFINITY } else { sj[lane][e] * scale_log2 };
            }
        }
    }
    for row_lane0 in (0..32).step_by(4) {
        for r in 0..2 {
            let lanes = row_lane0..row_lane0 + 4;
            let mx = lanes
                .clone()
                .flat_map(|l| s.iter().flat_map(move |sj| [sj[l][2 * r], sj[l][2 * r + 1]]))
                .fold(f32::NEG_INFINITY, f32::max);
            let m_new = mrow[row_lane0][r].max(mx);
            let m_use = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
            let alpha = (mrow[row_lane0][r] - m_use).exp2();
            let mut sum = 0.0;
            for l in lanes.clone() {
                for sj in s.iter_mut() {
                    for e in [2 * r, 2 * r + 1] {
                        sj[l][e] = (sj[l][e] - m_use).exp2();
                        sum += sj[l][e];
                    }
                }
            }
            for l in lanes {
                mrow[l][r] = m_new;
                lrow[l][r] = lrow[l][r] * alpha + sum;
                for oj in o.iter_mut() {
                    oj[l][2 * r] *= alpha;
                    oj[l][2 * r + 1] *= alpha;
                }
            }
        }
    }
}

/// P as the A operand of P·V for keys 16·kk .. 16·kk + 15, straight from the S accumulators.
fn p_frag(s: &[Frag], kk: usize) -> Regs<4> {
    let mut a = [[[0.0f32; 2]; 4]; 32];
    for (lane, al) in a.iter_mut().enumerate() {
        *al = [
            [s[2 * kk][lane][0], s[2 * kk][lane][1]],
            [s[2 * kk][lane][2], s[2 * kk][lane][3]],
            [s[2 * kk + 1][lane][0], s[2 * kk + 1][lane][1]],
            [s[2 * kk + 1][lane][2], s[2 * kk + 1][lane][3]],
        ];
    }
    a
}

/// store_rows: columns [c0, c0 + 8·o.len()) of a warp's 16 rows, those below d, into `out` `[n_q, d]`.
#[allow(clippy::too_many_arguments)]
fn store_rows(o: &[Frag], lrow: &[[f32; 2]; 32], out: &mut [f32], q_row0: usize, n_q: usize, c0: usize, d: usize) {
    for lane in 0..32 {
        for r in 0..2 {
            let qi = q_row0 + (lane >> 2) + r * 8;
            if qi >= n_q {
                continue;
            }
            let inv = if lrow[lane][r] > 0.0 { 1.0 / lrow[lane][r] } else { 0.0 };
            for (j, oj) in o.iter().enumerate() {
                let c = c0 + j * 8 + 2 * (lane & 3);
                for e in 0..2 {
                    if c + e < d {
                        out[qi * d + c + e] = oj[lane][2 * r + e] * inv;
                    }
                }
            }
        }
    }
}

/// flash_fwd<DP, BKV, CAUSAL> over q `[n_q, d]`, k/v `[n_kv, d]`.
fn flash(
    dp: usize,
    bkv: usize,
    causal: bool,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_q: usize,
    n_kv: usize,
) -> Vec<f32> {
    const BQ: usize = 64;
    let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let mut out = vec![f32::NAN; n_q * d];
    let tile = |src: &[f32], r0: usize, rows: usize, nvalid: usize| -> Vec<Vec<f32>> {
        (0..rows)
            .map(|r| (0..dp).map(|c| if r0 + r < nvalid && c < d { src[(r0 + r) * d + c] } else { 0.0 }).collect())
            .collect()
    };
    for q0 in (0..n_q).step_by(BQ) {
        let qs = tile(q, q0, BQ, n_q);
        let kv_end = if causal { n_kv.min(q0 + BQ) } else { n_kv };
        for warp in 0..4 {
            let q_row0 = q0 + warp * 16;
            let qat = |r: usize, c: usize| qs[r][c];
            let qf: Vec<Regs<4>> = (0..dp / 16)
                .map(|kk| ldmatrix_x4(&qat, &|lane| (warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), false))
                .collect();
            let mut o = vec![[[0.0f32; 4]; 32]; dp / 8];
            let (mut mrow, mut lrow) = ([[f32::NEG_INFINITY; 2]; 32], [[0.0f32; 2]; 32]);
            for t in 0..kv_end.div_ceil(bkv) {
                let (ks, vs) = (tile(k, t * bkv, bkv, n_kv), tile(v, t * bkv, bkv, n_kv));
                let (kat, vat) = (|r: usize, c: usize| ks[r][c], |r: usize, c: usize| vs[r][c]);
                let mut s = vec![[[0.0f32; 4]; 32]; bkv / 8];
                for (kk, qfk) in qf.iter().enumerate() {
                    for jn in 0..bkv / 16 {
                        let r = ldmatrix_x4(
                            &kat,
                            &|lane| (jn * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8),
                            false,
                        );
                        mma(&mut s[2 * jn], qfk, &pick2(&r, 0, 1));
                        mma(&mut s[2 * jn + 1], qfk, &pick2(&r, 2, 3));
                    }
                }
                online_softmax(&mut s, &mut o, &mut mrow, &mut lrow, t * bkv, q_row0, n_kv, causal, scale_log2);
                for kk in 0..bkv / 16 {
                    let a = p_frag(&s, kk);
                    for dn in 0..dp / 16 {
                        let r = ldmatrix_x4(
                            &vat,
                            &|lane| (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dn * 16 + (lane >> 4) * 8),
                            true,
                        );
                        mma(&mut o[2 * dn], &a, &pick2(&r, 0, 1));
                        mma(&mut o[2 * dn + 1], &a, &pick2(&r, 2, 3));
                    }
                }
            }
            store_rows(&o, &lrow, &mut out, q_row0, n_q, 0, d);
        }
    }
    out
}

fn attention_ref(d: usize, causal: bool, q: &[f32], k: &[f32], v: &[f32], n_q: usize, n_kv: usize) -> Vec<f32> {
    let mut out = vec![0.0; n_q * d];
    for i in 0..n_q {
        let keys = if causal { (i + 1).min(n_kv) } else { n_kv };
        let s: Vec<f32> =
            (0..keys).map(|j| (0..d).map(|c| q[i * d + c] * k[j * d + c]).sum::<f32>() / (d as f32).sqrt()).collect();
        let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
        let z: f32 = e.iter().sum();
        for c in 0..d {
            out[i * d + c] = (0..keys).map(|j| e[j] * v[j * d + c]).sum::<f32>() / z;
        }
    }
    out
}

#[test]
fn flash_tiles_compute_attention() {
    // (DP, BKV, causal, d, n_q, n_kv): the SD dims padded as the table pads them, keys not a multiple
    // of the tile (77), more keys than one tile, and causal with n_q = n_kv.
    for &(dp, bkv, causal, d, n_q, n_kv) in &[
        (48, 64, false, 40, 70, 77),
        (16, 64, false, 8, 20, 130),
        (80, 64, false, 80, 64, 64),
        (160, 32, false, 160, 17, 77),
        (64, 64, true, 64, 77, 77),
        (16, 64, true, 12, 130, 130),
    ] {
        let (q, k, v) = (rand_vec(n_q * d, 11), rand_vec(n_kv * d, 12), rand_vec(n_kv * d, 13));
        let got = flash(dp, bkv, causal, d, &q, &k, &v, n_q, n_kv);
        assert_close(
            &got,
            &attention_ref(d, causal, &q, &k, &v, n_q, n_kv),
            &format!("flash DP {dp} d {d} causal {causal}"),
        );
    }
}

/// flash_fwd_wide<512>: 2 row groups × 4 slices of 128 channels; partial scores summed in fragment order.
fn flash_wide(d: usize, q: &[f32], k: &[f32], v: &[f32], n_q: usize, n_kv: usize) -> Vec<f32> {
    const DP: usize = 512;
    const SL: usize = DP / 4;
    const BQW: usize = 32;
    const BKW: usize = 16;
    let scale_log2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let mut out = vec![f32::NAN; n_q * d];
    let tile = |src: &[f32], r0: usize, rows: usize, nvalid: usize| -> Vec<Vec<f32>> {
        (0..rows)
            .map(|r| (0..DP).map(|c| if r0 + r < nvalid && c < d { src[(r0 + r) * d + c] } else { 0.0 }).collect())
            .collect()
    };
    for q0 in (0..n_q).step_by(BQW) {
        let qs = tile(q, q0, BQW, n_q);
        let qat = |r: usize, c: usize| qs[r][c];
        // warp = 4·rg + sl
        let qf: Vec<Vec<Regs<4>>> = (0..8)
            .map(|warp| {
                let (rg, sl) = (warp >> 2, warp & 3);
                (0..SL / 16)
                    .map(|kk| {
                        ldmatrix_x4(&qat, &|lane| (rg * 16 + (lane & 15), sl * SL + kk * 16 + (lane >> 4) * 8), false)
                    })
                    .collect()
            })
            .collect();
        let mut o = vec![vec![[[0.0f32; 4]; 32]; SL / 8]; 8];
        let mut mrow = [[[f32::NEG_INFINITY; 2]; 32]; 8];
        let mut lrow = [[[0.0f32; 2]; 32]; 8];
        for t in 0..n_kv.div_ceil(BKW) {
            let (ks, vs) = (tile(k, t * BKW, BKW, n_kv), tile(v, t * BKW, BKW, n_kv));
            let (kat, vat) = (|r: usize, c: usize| ks[r][c], |r: usize, c: usize| vs[r][c]);
            let mut sp = [[[[0.0f32; 8]; 32]; 4]; 2];
            for warp in 0..8 {
                let (rg, sl) = (warp >> 2, warp & 3);
                let mut s = vec![[[0.0f32; 4]; 32]; 2];
                for kk in 0..SL / 16 {
                    let r = ldmatrix_x4(
                        &kat,
                        &|lane| ((lane & 7) + (lane >> 4) * 8, sl * SL + kk * 16 + ((lane >> 3) & 1) * 8),
                        false,
                    );
                    mma(&mut s[0], &qf[warp][kk], &pick2(&r, 0, 1));
                    mma(&mut s[1], &qf[warp][kk], &pick2(&r, 2, 3));
                }
                for lane in 0..32 {
                    for i in 0..8 {
                        sp[rg][sl][lane][i] = s[i / 4][lane][i % 4];
                    }
                }
            }
            for warp in 0..8 {
                let (rg, sl) = (warp >> 2, warp & 3);
                let mut s = vec![[[0.0f32; 4]; 32]; 2];
                for lane in 0..32 {
                    for j in 0..2 {
                        for e in 0..4 {
                            s[j][lane][e] = sp[rg][0][lane][j * 4 + e]
                                + sp[rg][1][lane][j * 4 + e]
                                + sp[rg][2][lane][j * 4 + e]
                                + sp[rg][3][lane][j * 4 + e];
                        }
                    }
                }
                online_softmax(
                    &mut s,
                    &mut o[warp],
                    &mut mrow[warp],
                    &mut lrow[warp],
                    t * BKW,
                    q0 + rg * 16,
                    n_kv,
                    false,
                    scale_log2,
                );
                let a = p_frag(&s, 0);
                for dn in 0..SL / 16 {
                    let r = ldmatrix_x4(
                        &vat,
                        &|lane| ((lane & 7) + ((lane >> 3) & 1) * 8, sl * SL + dn * 16 + (lane >> 4) * 8),
                        true,
                    );
                    mma(&mut o[warp][2 * dn], &a, &pick2(&r, 0, 1));
                    mma(&mut o[warp][2 * dn + 1], &a, &pick2(&r, 2, 3));
                }
            }
        }
        for warp in 0..8 {
            let (rg, sl) = (warp >> 2, warp & 3);
            store_rows(&o[warp], &lrow[warp], &mut out, q0 + rg * 16, n_q, sl * SL, d);
        }
    }
    out
}

#[test]
fn wide_flash_tiles_compute_attention() {
    // The VAE's one 512-wide head (tokens cut down), and a general-path width that pads.
    for &(d, n_q, n_kv) in &[(512, 40, 37), (200, 33, 16)] {
        let (q, k, v) = (rand_vec(n_q * d, 21), rand_vec(n_kv * d, 22), rand_vec(n_kv * d, 23));
        let got = flash_wide(d, &q, &k, &v, n_q, n_kv);
        assert_close(&got, &attention_ref(d, false, &q, &k, &v, n_q, n_kv), &format!("wide flash d {d}"));
    }
}
