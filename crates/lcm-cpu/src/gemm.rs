//! f32 GEMM: `C = A·B (+ C)` with arbitrary strides, on matrixmultiply's packed SIMD kernel, split across
//! rayon's threads by rows of C (or by columns when C has few rows, as in CLIP or the time embedding).

use rayon::prelude::*;

/// A row-major or transposed view: element (i, j) is at `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Raw pointer that may cross threads: each task writes a disjoint block of C.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Single-threaded `C[m×n] (+)= A[m×k]·B[k×n]`; C row-major with leading dimension `ldc`.
pub fn gemm_serial(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too small");
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    // SAFETY: extents checked above; C is exclusively borrowed.
    unsafe { raw(m, n, k, a, b, c.as_mut_ptr(), ldc, accumulate) }
}

fn check_extent(which: &str, x: MatRef, rows: usize, cols: usize) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * x.rs + (cols - 1) * x.cs;
        assert!(last < x.data.len(), "gemm: {which} view ({rows}×{cols}, strides {}/{}) exceeds its slice", x.rs, x.cs);
    }
}

/// # Safety
/// `c` must be valid for writes of the `m×n` block with leading dimension `ldc`, and A/B views in bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn raw(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: *mut f32, ldc: usize, accumulate: bool) {
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.data.as_ptr(),
        a.rs as isize,
        a.cs as isize,
        b.data.as_ptr(),
        b.rs as isize,
        b.cs as isize,
        if accumulate { 1.0 } else { 0.0 },
        c,
        ldc as isize,
        1,
    );
}

/// Single-threaded `C = A·B` into a strided block of a larger matrix that other threads write too.
///
/// # Safety
/// `c` must be valid for writes of the `m×n` block with leading dimension `ldc`, no other thread may
/// touch that block meanwhile, and the A/B views must be in bounds.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_into_block(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: *mut f32, ldc: usize) {
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    raw(m, n, k, a, b, c, ldc, false)
}

/// Multi-threaded `C[m×n] = A[m×k]·B[k×n]` (C row-major, `ldc = n`).
pub fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "gemm: C too small");
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    let threads = rayon::current_num_threads().max(1);
    let work = m * n * k;
    if threads == 1 || work < 1 << 16 {
        return gemm_serial(m, n, k, a, b, c, n, false);
    }
    // Each task packs its own copy of the operand it does not split (matrixmultiply packs per call):
    // split the larger of A and B's free dimension so the shared operand is the smaller one, and use
    // one task per thread so it is packed as few times as possible.
    if m >= n && m >= 8 * threads {
        // Row blocks: each task owns whole rows of C.
        let rows = m.div_ceil(threads).max(8);
        c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(i, cb)| {
            let r0 = i * rows;
            let mr = cb.len() / n;
            let ab = MatRef { data: &a.data[r0 * a.rs..], ..a };
            gemm_serial(mr, n, k, ab, b, cb, n, false);
        });
    } else {
        // Column blocks: C's columns [j0, j0+w) are disjoint between tasks.
        let cols = n.div_ceil(threads).max(16);
        let ptr = SendPtr(c.as_mut_ptr());
        (0..n.div_ceil(cols)).into_par_iter().for_each(|bi| {
            let j0 = bi * cols;
            let w = cols.min(n - j0);
            let bb = MatRef { data: &b.data[j0 * b.cs..], ..b };
            let p = ptr;
            // SAFETY: the block [0,m)×[j0,j0+w) of C is written by this task alone; C was checked to
            // hold m×n elements.
            unsafe { raw(m, w, k, a, bb, p.0.add(j0), n, false) };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_in_both_splits() {
        for &(m, n, k) in &[(3, 5, 7), (300, 40, 33), (2, 700, 65), (77, 96, 32)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0).collect();
            let mut c = vec![f32::NAN; m * n];
            gemm(m, n, k, MatRef { data: &a, rs: k, cs: 1 }, MatRef { data: &b, rs: n, cs: 1 }, &mut c);
            let want = naive(m, n, k, &a, &b);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{m}x{n}x{k}: {x} vs {y}");
            }
        }
    }
}
