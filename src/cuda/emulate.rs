//! CPU emulation of the tensor-core kernels' index math, so it is checked before any GPU runs them.
//!
//! The warp-level primitives are modelled from the PTX ISA's fragment tables (ldmatrix, ldmatrix.trans,
//! mma.m16n8k16 with f16 A/B and f32 C); the kernels' address expressions are transcribed from
//! kernels/gemm.cu and kernels/attention.cu line for line (same names), then whole blocks are run over
//! shared-memory tiles filled the way the loaders fill them and compared with direct reference loops.
//! Values stay f32 (the point is indexing, not rounding). If a kernel's indexing changes, change the
//! transcription here with it.
#![cfg(test)]
// Loops index like the kernels do (lane, warp, fragment), on purpose: the transcription must match.
#![allow(clippy::needless_range_loop)]

/// Registers of one warp: 32 lanes × N registers, each a pair of halves (kept as f32).
type Regs<const N: usize> = [[[f32; 2]; N]; 32];

/// ldmatrix.x4: lane l gives the (row, col) address of row l%8 of matrix l/8; every lane receives, per
/// matrix i, row g = lane/4, columns 2t, 2t+1 (t = lane%4) — with `trans`, rows 2t, 2t+1 of column g.
fn ldmatrix_x4(smem: &dyn Fn(usize, usize) -> f32, addr: &dyn Fn(usize) -> (usize, usize), trans: bool) -> Regs<4> {
    let mut r = [[[0.0; 2]; 4]; 32];
    for (lane, regs) in r.iter_mut().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (i, reg) in regs.iter_mut().enumerate() {
            for (e, v) in reg.iter_mut().enumerate() {
                *v = if trans {
                    let (row, col) = addr(8 * i + 2 * t + e);
                    smem(row, col + g)
                } else {
                    let (row, col) = addr(8 * i + g);
                    smem(row, col + 2 * t + e)
                };
            }
        }
    }
    r
}

/// d += a·b for one m16n8k16 (A row-major, B "col"), in the PTX fragment layouts.
fn mma(d: &mut [[f32; 4]; 32], a: &Regs<4>, b: &Regs<2>) {
    let mut am = [[0.0f32; 16]; 16];
    let mut bm = [[0.0f32; 8]; 16];
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        for e in 0..2 {
            am[g][2 * t + e] = a[lane][0][e];
            am[g + 8][2 * t + e] = a[lane][1][e];
            am[g][2 * t + 8 + e] = a[lane][2][e];
            am[g + 8][2 * t + 8 + e] = a[lane][3][e];
            bm[2 * t + e][g] = b[lane][0][e];
            bm[2 * t + 8 + e][g] = b[lane][1][e];
        }
    }
    for (lane, dl) in d.iter_mut().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (r, v) in dl.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (r / 2), 2 * t + r % 2);
            *v += (0..16).map(|k| am[row][k] * bm[k][col]).sum::<f32>();
        }
    }
}

fn pick2(r: &Regs<4>, i: usize, j: usize) -> Regs<2> {
    let mut o = [[[0.0; 2]; 2]; 32];
    for l in 0..32 {
        o[l] = [r[l][i], r[l][j]];
    }
    o
}

mod attention;
mod gemm;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{what}: element {i}: {a} vs {b}");
    }
}
