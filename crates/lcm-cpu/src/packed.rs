//! The CPU backend's GEMM: `C = A·B (+ bias) (+ residual)` with B the weight, packed once at load
//! ([`PackedB`]), and A (the activations) packed per block.
//!
//! BLIS's structure: for each K block of `KC`, a block of A rows is packed into MR-row micro-panels
//! (k-major) that stay in L2, and every NR-column panel of B (`KC × NR`, in L1) is multiplied against
//! each micro-panel by a register-tiled micro-kernel: 14×32 on AVX-512 (28 accumulators), 6×16 on AVX2 +
//! FMA, a portable 4×16 elsewhere (chosen once from the CPU's features). The bias and the residual are
//! added in registers after the last K block, so the output is written once.
//!
//! What runs on it: the linear layers, the convolutions (their patch blocks as A; see conv.rs for why
//! not the `gemm` crate) and the Winograd convolutions' 36 GEMMs. With B packed once at load there is
//! no B packing per call, which is what the small-M layers (the transformer layers at 16x16 and 8x8
//! latents, CLIP's 77 tokens, UNet's 1280-channel convolutions at 8x8 and 4x4) are bound by; the
//! crate's kernels still run the large-M GEMMs 1.1-1.25x faster (benches/gemm.rs), but after Winograd
//! few large-M convolutions are left.
//!
//! Every output element is summed in the same order whatever M, N or the thread split: k in order
//! within each KC block, the blocks in order. So a row's result does not depend on the batch it is in.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

/// K per block: a `KC × 32` panel of B is 32 KiB, within L1.
const KC: usize = 256;
/// Micro-panels of A per task block: 24 × 14 rows × KC in L2 (336 KiB).
const MC_TILES: usize = 24;

/// A register-tiled micro-kernel: `C[mr×nr] (+)= A·B` over `kc`, then `+ bias + residual` if given.
///
/// # Safety
/// `a` holds `kc × mr` values (k-major), `b` `kc × nr`, `c` an `mr × nr` tile with row stride `ldc`;
/// `bias` (if not null) `nr` values, `res` (if not null) an `mr × nr` tile with row stride `ldr`.
type KernelFn = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool, epi: Epi);

/// The epilogue's operands for one tile (null: absent).
#[derive(Clone, Copy)]
struct Epi {
    bias: *const f32,
    res: *const f32,
    ldr: usize,
}

const NO_EPI: Epi = Epi { bias: std::ptr::null(), res: std::ptr::null(), ldr: 0 };

/// The micro-kernel this CPU runs, with its tile.
#[derive(Clone, Copy)]
struct Kernel {
    mr: usize,
    nr: usize,
    run: KernelFn,
}

fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Kernel { mr: 14, nr: 32, run: x86::kernel_14x32 };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Kernel { mr: 6, nr: 16, run: x86::kernel_6x16 };
            }
        }
        Kernel { mr: 4, nr: 16, run: portable_4x16 }
    })
}

/// B `[k, n]` packed for the micro-kernel: `ceil(n / nr)` panels, each `k × nr` row-major, columns past
/// `n` zero.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    nr: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs B, whose element (kk, j) is `b[kk·rs + j·cs]`: `rs = n, cs = 1` for a row-major `[k, n]`,
    /// `rs = 1, cs = k` for the transpose of a row-major `[n, k]` (a linear layer's weight).
    pub fn new(k: usize, n: usize, b: &[f32], rs: usize, cs: usize) -> PackedB {
        if k > 0 && n > 0 {
            assert!((k - 1) * rs + (n - 1) * cs < b.len(), "PackedB: {k}×{n} view exceeds its slice");
        }
        PackedB::from_rows(k, n, |kk, j0, dst| {
            dst.iter_mut().enumerate().for_each(|(j, d)| *d = b[kk * rs + (j0 + j) * cs]);
        })
    }

    /// Packs a B computed in place: `fill(kk, j0, dst)` writes elements (kk, j0 ..) of B into `dst` (up
    /// to one panel's width), each exactly once, panels in parallel.
    pub fn from_rows(k: usize, n: usize, fill: impl Fn(usize, usize, &mut [f32]) + Sync) -> PackedB {
        let nr = kernel().nr;
        let mut data = crate::memory::zeroed(n.div_ceil(nr) * k * nr);
        data.par_chunks_mut((k * nr).max(1)).enumerate().for_each(|(p, panel)| {
            let width = nr.min(n - p * nr);
            for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                fill(kk, p * nr, &mut row[..width]);
            }
        });
        PackedB { k, n, nr, data }
    }

    /// Rows (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns `j0 .. j0 + width` of row `kk`, within one panel (`j0` a multiple of its width).
    pub fn row(&self, kk: usize, j0: usize, width: usize) -> &[f32] {
        assert!(j0.is_multiple_of(self.nr) && width <= self.nr && kk < self.k, "PackedB::row: not within one panel");
        &self.panel(j0 / self.nr, kk, 1)[..width]
    }

    /// Rows `k0 .. k0 + kc` of panel `p`.
    fn panel(&self, p: usize, k0: usize, kc: usize) -> &[f32] {
        let at = (p * self.k + k0) * self.nr;
        &self.data[at..at + kc * self.nr]
    }
}

/// What is added to the product: a bias per column, and a residual shaped as C (row stride `n`).
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[n]`.
    pub bias: Option<&'a [f32]>,
    /// `[m, n]`.
    pub residual: Option<&'a [f32]>,
}

/// C shared between tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: every task writes only its own rows × panels of C (disjoint), and the caller holds C
// exclusively for the call.
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

thread_local! {
    /// Each thread's packed block of A: reused across calls, so the steady state allocates nothing.
    static A_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C[m×n] = A[m×k]·B + epilogue`, A row-major with row stride `lda`, C row-major `[m, n]`, on rayon's
/// threads.
pub fn gemm(m: usize, a: &[f32], lda: usize, b: &PackedB, c: &mut [f32], epi: Epilogue) {
    gemm_on(m, a, lda, b, c, epi, true)
}

/// [`gemm`] on the calling thread only, for callers that split their work across rayon's threads
/// themselves (the Winograd convolutions' tile blocks). Same sums in the same order.
pub fn gemm_serial(m: usize, a: &[f32], lda: usize, b: &PackedB, c: &mut [f32], epi: Epilogue) {
    gemm_on(m, a, lda, b, c, epi, false)
}

fn gemm_on(m: usize, a: &[f32], lda: usize, b: &PackedB, c: &mut [f32], epi: Epilogue, parallel: bool) {
    let (n, k) = (b.n, b.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (m - 1) * lda + k <= a.len(), "gemm: A ({m}×{k}, stride {lda}) exceeds its slice");
    assert!(c.len() >= m * n, "gemm: C too small");
    assert!(epi.bias.is_none_or(|b| b.len() >= n) && epi.residual.is_none_or(|r| r.len() >= m * n));
    let kr = kernel();
    assert_eq!(b.nr, kr.nr, "gemm: B was packed for another kernel");
    if k == 0 {
        c[..m * n].fill(0.0);
        return add_epilogue(&mut c[..m * n], n, epi);
    }
    // Tasks: blocks of rows (A's packed block in L2), times column ranges when there are too few row
    // blocks to keep every thread busy (the 16x16-token transformer layers, CLIP's 77 tokens).
    let threads = rayon::current_num_threads();
    let mc = kr.mr * MC_TILES;
    let row_blocks = m.div_ceil(mc);
    let panels = n.div_ceil(kr.nr);
    let col_chunks =
        if !parallel || m * n * k < 1 << 18 { 1 } else { (4 * threads).div_ceil(row_blocks).clamp(1, panels) };
    let per_chunk = panels.div_ceil(col_chunks);
    // With several column tasks per row block, A is packed once, up front, and shared by them: each
    // task packing its rows again cost more than a third of the multiply at M = 256, K = 11520.
    let (mut pooled, mut own);
    let shared_a: &mut Vec<f32> = match SHARED_A.try_lock() {
        Ok(guard) if col_chunks > 1 => {
            pooled = guard;
            &mut pooled
        }
        // Not needed, or another GEMM holds the pool (concurrent pipelines): its own buffer, if any.
        _ => {
            own = Vec::new();
            &mut own
        }
    };
    if col_chunks > 1 {
        crate::memory::grow(shared_a, row_blocks * mc * k);
        shared_a[..row_blocks * mc * k].par_chunks_mut(mc * k).enumerate().for_each(|(rb, block_a)| {
            let rows = rb * mc..m.min((rb + 1) * mc);
            let tiles = rows.len().div_ceil(kr.mr);
            block_a[..tiles * kr.mr * k]
                .par_chunks_mut(tiles * kr.mr * KC)
                .enumerate()
                .for_each(|(kb, dst)| pack_a(a, lda, rows.clone(), kb * KC, dst.len() / (tiles * kr.mr), kr.mr, dst));
        });
    }
    let shared_a = &shared_a[..];
    let shared = SharedC(c.as_mut_ptr());
    let task = |t: usize| {
        let (rb, cb) = (t / col_chunks, t % col_chunks);
        let rows = rb * mc..(m.min((rb + 1) * mc));
        let cols = cb * per_chunk..panels.min((cb + 1) * per_chunk);
        let packed = (col_chunks > 1).then(|| &shared_a[rb * mc * k..]);
        A_BLOCK.with(|buf| {
            let mut buf = buf.borrow_mut();
            // SAFETY: the tasks' (rows, panels) rectangles are disjoint.
            unsafe { block(kr, a, lda, b, shared, rows, cols, epi, packed, &mut buf) }
        });
    };
    let tasks = row_blocks * col_chunks;
    if !parallel || tasks == 1 || m * n * k < 1 << 16 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// A packed once per call and shared by the column tasks (see [`gemm_on`]), kept between calls.
static SHARED_A: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// Rows `rows` × panels `cols` of C, all K blocks.
///
/// # Safety
/// No other thread writes that rectangle of C while this runs.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    kr: Kernel,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: SharedC,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    epi: Epilogue,
    packed: Option<&[f32]>,
    buf: &mut Vec<f32>,
) {
    let (mr, nr, n, k) = (kr.mr, kr.nr, b.n, b.k);
    let tiles = rows.len().div_ceil(mr);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        // This K block of the rows' A: from the shared packing ([k block][tile][kc][mr]), or packed here.
        let a_block = match packed {
            Some(p) => &p[k0 * tiles * mr..][..tiles * kc * mr],
            None => {
                crate::memory::grow(buf, tiles * kc * mr);
                pack_a(a, lda, rows.clone(), k0, kc, mr, &mut buf[..tiles * kc * mr]);
                &buf[..tiles * kc * mr]
            }
        };
        let (first, last) = (k0 == 0, k0 + kc == k);
        for t in 0..tiles {
            let i0 = rows.start + t * mr;
            let height = mr.min(rows.end - i0);
            let ap = a_block[t * kc * mr..].as_ptr();
            for p in cols.clone() {
                let bp = b.panel(p, k0, kc).as_ptr();
                let (j0, width) = (p * nr, nr.min(n - p * nr));
                let epi = if last {
                    Epi {
                        bias: epi.bias.map_or(std::ptr::null(), |b| b[j0..].as_ptr()),
                        res: epi.residual.map_or(std::ptr::null(), |r| r[i0 * n + j0..].as_ptr()),
                        ldr: n,
                    }
                } else {
                    NO_EPI
                };
                let ct = c.0.add(i0 * n + j0);
                if height == mr && width == nr {
                    (kr.run)(kc, ap, bp, ct, n, !first, epi);
                } else {
                    edge_tile(kr, kc, ap, bp, ct, n, !first, epi, height, width);
                }
            }
        }
    }
}

/// A tile at the edge of C (fewer rows or columns than the kernel's): run on a full-size copy.
///
/// # Safety
/// As the kernel's, for the `height × width` part.
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile(
    kr: Kernel,
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    ct: *mut f32,
    ldc: usize,
    load: bool,
    epi: Epi,
    height: usize,
    width: usize,
) {
    let (mr, nr) = (kr.mr, kr.nr);
    let mut tile = [0.0f32; 14 * 32];
    let mut bias = [0.0f32; 32];
    let mut res = [0.0f32; 14 * 32];
    for i in 0..height {
        for j in 0..width {
            if load {
                tile[i * nr + j] = *ct.add(i * ldc + j);
            }
            if !epi.res.is_null() {
                res[i * nr + j] = *epi.res.add(i * epi.ldr + j);
            }
        }
    }
    if !epi.bias.is_null() {
        for (j, b) in bias.iter_mut().enumerate().take(width) {
            *b = *epi.bias.add(j);
        }
    }
    let local = Epi {
        bias: if epi.bias.is_null() { std::ptr::null() } else { bias.as_ptr() },
        res: if epi.res.is_null() { std::ptr::null() } else { res.as_ptr() },
        ldr: nr,
    };
    (kr.run)(kc, ap, bp, tile.as_mut_ptr(), nr, load, local);
    for i in 0..height.min(mr) {
        for j in 0..width {
            *ct.add(i * ldc + j) = tile[i * nr + j];
        }
    }
}

/// Packs rows `rows`, columns `k0 .. k0 + kc` of A into `mr`-row micro-panels, k-major (`[kc][mr]`
/// each), rows past the end zero. Written in order (the stores stream), read from `mr` rows at once.
fn pack_a(a: &[f32], lda: usize, rows: std::ops::Range<usize>, k0: usize, kc: usize, mr: usize, buf: &mut [f32]) {
    for (t, panel) in buf.chunks_exact_mut(kc * mr).enumerate() {
        let r0 = rows.start + t * mr;
        let height = mr.min(rows.end - r0);
        let src: [&[f32]; 14] = std::array::from_fn(|i| if i < height { &a[(r0 + i) * lda + k0..][..kc] } else { &[] });
        for (kk, dst) in panel.chunks_exact_mut(mr).enumerate() {
            for (d, row) in dst[..height].iter_mut().zip(&src[..height]) {
                // SAFETY: every row slice holds kc values and kk < kc.
                *d = unsafe { *row.get_unchecked(kk) };
            }
            dst[height..].fill(0.0);
        }
    }
}

/// `c += bias + residual` as a pass of its own over C `[m, n]`: the convolutions' epilogue (their GEMM
/// is the `gemm` crate's), and this GEMM's for k = 0.
pub fn add_epilogue(c: &mut [f32], n: usize, epi: Epilogue) {
    if epi.bias.is_none() && epi.residual.is_none() {
        return;
    }
    c.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        if let Some(b) = epi.bias {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
        if let Some(res) = epi.residual {
            row.iter_mut().zip(&res[r * n..(r + 1) * n]).for_each(|(o, r)| *o += r);
        }
    });
}

/// The portable micro-kernel (no FMA: `acc + a·b`), 4×16.
///
/// # Safety
/// See [`KernelFn`].
unsafe fn portable_4x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool, epi: Epi) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0.0f32; NR]; MR];
    if load {
        for (i, row) in acc.iter_mut().enumerate() {
            row.copy_from_slice(std::slice::from_raw_parts(c.add(i * ldc), NR));
        }
    }
    for kk in 0..kc {
        let bk = std::slice::from_raw_parts(b.add(kk * NR), NR);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = *a.add(kk * MR + i);
            for (o, &bv) in row.iter_mut().zip(bk) {
                *o += ai * bv;
            }
        }
    }
    for (i, row) in acc.iter_mut().enumerate() {
        if !epi.bias.is_null() {
            row.iter_mut().enumerate().for_each(|(j, o)| *o += *epi.bias.add(j));
        }
        if !epi.res.is_null() {
            row.iter_mut().enumerate().for_each(|(j, o)| *o += *epi.res.add(i * epi.ldr + j));
        }
        std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(i * ldc), NR);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Epi;

    /// 14 rows × 32 columns in 28 zmm accumulators; per k: two loads of B, 14 broadcasts of A.
    ///
    /// # Safety
    /// See [`super::KernelFn`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_14x32(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        load: bool,
        epi: Epi,
    ) {
        const MR: usize = 14;
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if load {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm512_loadu_ps(c.add(i * ldc));
                r[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
            }
        }
        for kk in 0..kc {
            _mm_prefetch::<_MM_HINT_T0>(b.add(kk * 32 + 256) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b.add(kk * 32 + 272) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(a.add(kk * MR + 112) as *const i8);
            let b0 = _mm512_loadu_ps(b.add(kk * 32));
            let b1 = _mm512_loadu_ps(b.add(kk * 32 + 16));
            let ak = a.add(kk * MR);
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ak.add(i));
                r[0] = _mm512_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm512_fmadd_ps(ai, b1, r[1]);
            }
        }
        if !epi.bias.is_null() {
            let (b0, b1) = (_mm512_loadu_ps(epi.bias), _mm512_loadu_ps(epi.bias.add(16)));
            for r in acc.iter_mut() {
                r[0] = _mm512_add_ps(r[0], b0);
                r[1] = _mm512_add_ps(r[1], b1);
            }
        }
        for (i, r) in acc.iter_mut().enumerate() {
            if !epi.res.is_null() {
                let res = epi.res.add(i * epi.ldr);
                r[0] = _mm512_add_ps(r[0], _mm512_loadu_ps(res));
                r[1] = _mm512_add_ps(r[1], _mm512_loadu_ps(res.add(16)));
            }
            _mm512_storeu_ps(c.add(i * ldc), r[0]);
            _mm512_storeu_ps(c.add(i * ldc + 16), r[1]);
        }
    }

    /// 6 rows × 16 columns in 12 ymm accumulators (AVX2 + FMA).
    ///
    /// # Safety
    /// See [`super::KernelFn`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        load: bool,
        epi: Epi,
    ) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if load {
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm256_loadu_ps(c.add(i * ldc));
                r[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(kk * 16));
            let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
            let ak = a.add(kk * MR);
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ak.add(i));
                r[0] = _mm256_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm256_fmadd_ps(ai, b1, r[1]);
            }
        }
        if !epi.bias.is_null() {
            let (b0, b1) = (_mm256_loadu_ps(epi.bias), _mm256_loadu_ps(epi.bias.add(8)));
            for r in acc.iter_mut() {
                r[0] = _mm256_add_ps(r[0], b0);
                r[1] = _mm256_add_ps(r[1], b1);
            }
        }
        for (i, r) in acc.iter_mut().enumerate() {
            if !epi.res.is_null() {
                let res = epi.res.add(i * epi.ldr);
                r[0] = _mm256_add_ps(r[0], _mm256_loadu_ps(res));
                r[1] = _mm256_add_ps(r[1], _mm256_loadu_ps(res.add(8)));
            }
            _mm256_storeu_ps(c.add(i * ldc), r[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), r[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], epi: Epilogue) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s: f64 = (0..k).map(|p| a[i * lda + p] as f64 * b[p * n + j] as f64).sum();
                s += epi.bias.map_or(0.0, |b| b[j] as f64) + epi.residual.map_or(0.0, |r| r[i * n + j] as f64);
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7 + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    /// Every edge: rows and columns off the tile, K off the block, A with a row stride past K, tiny and
    /// large problems (one task and many), with and without bias and residual, B transposed or not.
    #[test]
    fn matches_naive_at_every_edge() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (14, 32, 256),
            (15, 33, 257),
            (300, 40, 33),
            (77, 320, 768),
            (700, 3, 600),
            (700, 100, 300),
        ] {
            let lda = k + 3;
            let a = data(m * lda, 1);
            let bm = data(k * n, 2);
            let bias = data(n, 3);
            let res = data(m * n, 4);
            let bt: Vec<f32> = (0..n * k).map(|i| bm[(i % k) * n + i / k]).collect(); // [n, k]
            for (with_bias, with_res) in [(false, false), (true, true), (true, false)] {
                let epi = Epilogue { bias: with_bias.then_some(&bias[..]), residual: with_res.then_some(&res[..]) };
                let want = naive(m, n, k, &a, lda, &bm, epi);
                for packed in [PackedB::new(k, n, &bm, n, 1), PackedB::new(k, n, &bt, 1, k)] {
                    let mut c = vec![f32::NAN; m * n];
                    gemm(m, &a, lda, &packed, &mut c, epi);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f32).sqrt(), "{m}x{n}x{k}: {x} vs {y}");
                    }
                }
            }
        }
    }

    /// A row's result does not depend on how many rows are multiplied with it (the batch).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (96, 700);
        let a = data(500 * k, 5);
        let b = PackedB::new(k, n, &data(k * n, 6), n, 1);
        let mut all = vec![0.0; 500 * n];
        gemm(500, &a, k, &b, &mut all, Epilogue::default());
        let mut one = vec![0.0; 3 * n];
        gemm(3, &a[123 * k..], k, &b, &mut one, Epilogue::default());
        assert!(one.iter().zip(&all[123 * n..126 * n]).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
