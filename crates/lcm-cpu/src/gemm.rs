//! f32 GEMM: `C = A·B (+ C)` with arbitrary strides, on the `gemm` crate's packed SIMD kernels (AVX-512
//! where the CPU has it), threaded on rayon.

/// A row-major or transposed view: element (i, j) is at `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

/// Single-threaded `C[m×n] (+)= A[m×k]·B[k×n]`; C row-major with leading dimension `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too small");
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    // SAFETY: extents checked above; C is exclusively borrowed.
    unsafe { raw(m, n, k, a, b, c.as_mut_ptr(), ldc, accumulate, gemm::Parallelism::None) }
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
unsafe fn raw(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    threads: gemm::Parallelism,
) {
    // gemm's convention: dst = alpha·dst (when read) + beta·lhs·rhs, strides given (column, row).
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        threads,
    );
}

/// Multi-threaded `C[m×n] = A[m×k]·B[k×n]` (C row-major, `ldc = n`), on all of rayon's threads.
pub fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: MatRef, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n, "gemm: C too small");
    check_extent("A", a, m, k);
    check_extent("B", b, k, n);
    let threads = if m * n * k < 1 << 16 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(0) };
    // SAFETY: extents checked above; C is exclusively borrowed.
    unsafe { raw(m, n, k, a, b, c.as_mut_ptr(), n, false, threads) }
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
