//! A CPU random generator that draws what `torch.Generator("cpu").manual_seed(seed)` draws, so that
//! a seed gives the same latents (and the same LCM step noise) as diffusers.
//!
//! What torch does (ATen `CPUGeneratorImpl`, `core/DistributionsHelper.h`,
//! `native/cpu/DistributionTemplates.h`, torch 2.11):
//! - the engine is a 32-bit MT19937 whose state is initialised from the seed's low 32 bits
//!   (`manual_seed(2**32 + 5)` draws exactly what `manual_seed(5)` draws);
//! - `randn` of a contiguous f32 tensor with n >= 16 elements first turns one 32-bit draw per
//!   element into a uniform `(r & 0xFFFFFF) * 2^-24`, then applies Box–Muller in place to each
//!   block of 16 (pairs j, j+8); if n % 16 != 0 the last 16 outputs are recomputed from 16 fresh
//!   uniforms;
//! - on x86 torch is built with an AVX2 kernel for that Box–Muller (also taken on AVX-512
//!   machines), which uses the Cephes-style polynomial `log256_ps` / `sincos256_ps` of
//!   `avx_mathfun.h`, compiled with FMA contraction. [`TorchRng`] evaluates the same polynomials in
//!   the same f32 operation order, one lane at a time, so it reproduces those bits;
//! - n < 16 takes the element-wise `normal_distribution<double>` path: two 53-bit uniforms per
//!   pair, Box–Muller in f64, and the sine half cached in the generator for the next element.

/// A seed when the user gives none (`lcm generate` without `--seed`, a Triton request without `seed`):
/// distinct per call (time, process id and a counter through splitmix64), and short enough to type
/// back or to pass through any JSON reader (< 2^53).
pub fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut z = t ^ ((std::process::id() as u64) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(17);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 11
}

/// MT19937 state size (words) and twist offset.
const MT_N: usize = 624;
const MT_M: usize = 397;

/// 32-bit Mersenne Twister, seeded the way ATen's `at::mt19937` is.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, index: MT_N }
    }

    fn twist(&mut self) {
        for k in 0..MT_N {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % MT_N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// torch's CPU generator: the engine plus the cached second half of the last f64 Box–Muller pair.
#[derive(Clone)]
pub struct TorchRng {
    engine: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchRng {
    /// The state of `torch.Generator("cpu").manual_seed(seed)`. Only the low 32 bits of the seed
    /// reach the engine, as in torch.
    pub fn new(seed: u64) -> Self {
        TorchRng { engine: Mt19937::new(seed as u32), next_double_normal: None }
    }

    /// One raw 32-bit draw (ATen's `random()`).
    pub fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Two draws as one 64-bit value, the first in the high half (ATen's `random64()`).
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits, exact in f32.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()`.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `torch.randn(n, generator=g, dtype=torch.float32)` (any shape with n elements), continuing
    /// the stream.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n];
        self.fill_randn(&mut out);
        out
    }

    /// [`TorchRng::randn`] into a caller-owned buffer (the generation loop allocates nothing).
    pub fn fill_randn(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for x in out.iter_mut() {
                *x = self.normal_f64() as f32;
            }
            return;
        }
        for x in out.iter_mut() {
            *x = self.uniform_f32();
        }
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block.try_into().expect("chunks of 16"));
        }
        if !n.is_multiple_of(16) {
            let tail: &mut [f32; 16] = (&mut out[n - 16..]).try_into().expect("16 elements");
            for x in tail.iter_mut() {
                *x = self.uniform_f32();
            }
            box_muller_16(tail);
        }
    }

    /// ATen `normal_distribution<double>` (mean 0, std 1), with the generator's one-sample cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// torch's `normal_fill_16_AVX2`: uniforms `u` in [0, 1) become normals in place,
/// out[j] = r·cos θ, out[j+8] = r·sin θ with r = sqrt(−2·ln(1 − u[j])), θ = 2π·u[j+8], all in f32.
fn box_muller_16(data: &mut [f32; 16]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2π rounded once to f32.
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let radius = (-2.0 * cephes_log(1.0 - data[j])).sqrt();
        let (sin, cos) = cephes_sincos(two_pi * data[j + 8]);
        // The kernel ends with fmadd(n, std = 1, mean = 0), which leaves n unchanged.
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

/// Natural log as `log256_ps` computes it for x in (0, 1] (one lane; torch never feeds it anything
/// else). `mul_add` marks the multiply–adds that GCC contracts into FMAs in torch's build.
fn cephes_log(x: f32) -> f32 {
    // avx_mathfun.h's constants are double literals stored as float: round them the same way.
    const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const P: [f32; 9] = [
        7.0376836292e-2_f64 as f32,
        -1.1514610310e-1_f64 as f32,
        1.1676998740e-1_f64 as f32,
        -1.2420140846e-1_f64 as f32,
        1.4249322787e-1_f64 as f32,
        -1.6668057665e-1_f64 as f32,
        2.0000714765e-1_f64 as f32,
        -2.4999993993e-1_f64 as f32,
        3.3333331174e-1_f64 as f32,
    ];
    const Q1: f32 = -2.1219444e-4_f64 as f32;
    const Q2: f32 = 355.0 / 512.0; // ln 2 = Q2 + Q1, split so e·Q2 is exact

    // Split x = m · 2^e with m in [0.5, 1).
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    // m < sqrt(1/2): use 2m − 1 and e − 1, keeping the polynomial argument in [−0.29, 0.41].
    let x = if m < SQRTHF {
        e -= 1.0;
        (m - 1.0) + m
    } else {
        m - 1.0
    };
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    let y = y.mul_add(z, e * Q1);
    let y = (-z).mul_add(0.5, y);
    e.mul_add(Q2, x + y)
}

/// (sin x, cos x) as `sincos256_ps` computes them (one lane), for x >= 0 as Box–Muller uses it.
fn cephes_sincos(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516_f64 as f32; // 4/π
    const DP: [f32; 3] = [-0.78515625, -2.418_756_484_985_351_6e-4_f64 as f32, -3.774_894_977_445_941e-8_f64 as f32];
    const SIN_P: [f32; 3] = [-1.9515295891e-4_f64 as f32, 8.3321608736e-3_f64 as f32, -1.6666654611e-1_f64 as f32];
    const COS_P: [f32; 3] =
        [2.443315711809948e-5_f64 as f32, -1.388731625493765e-3_f64 as f32, 4.166664568298827e-2_f64 as f32];

    let sign_in = x.to_bits() & 0x8000_0000;
    let x = x.abs();
    // Octant j, rounded up to even, and the argument reduced to [−π/4, π/4] in extended precision.
    let j = (((x * FOPI) as i32).wrapping_add(1)) & !1;
    let jf = j as f32;
    let x = jf.mul_add(DP[2], jf.mul_add(DP[1], jf.mul_add(DP[0], x)));
    let sign_sin = sign_in ^ (((j & 4) as u32) << 29);
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;

    let z = x * x;
    let mut yc = COS_P[0].mul_add(z, COS_P[1]).mul_add(z, COS_P[2]);
    yc *= z;
    let yc = yc.mul_add(z, -(z * 0.5)) + 1.0;
    let mut ys = SIN_P[0].mul_add(z, SIN_P[1]).mul_add(z, SIN_P[2]);
    ys *= z;
    let ys = ys.mul_add(x, x);

    let (sin, cos) = if j & 2 == 0 { (ys, yc) } else { (yc, ys) };
    (f32::from_bits(sin.to_bits() ^ sign_sin), f32::from_bits(cos.to_bits() ^ sign_cos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_output() {
        // The C++ standard pins std::mt19937 (default seed 5489): its 10000th output is 4123659995.
        let mut mt = Mt19937::new(5489);
        let last = (0..10_000).map(|_| mt.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seed_uses_low_32_bits() {
        let a = TorchRng::new(5).randn(64);
        let b = TorchRng::new((1u64 << 32) + 5).randn(64);
        assert_eq!(a, b);
    }

    #[test]
    fn torch_randn_seed0_first_values() {
        // torch.randn(16, generator=torch.Generator().manual_seed(0))[:4]
        let x = TorchRng::new(0).randn(16);
        let want = [-1.1258398294448853, -1.152360200881958, -0.2505785822868347, -0.4338788092136383];
        let want = want.map(|v: f64| v as f32);
        assert_eq!(x[..4], want);
    }

    #[test]
    fn tail_is_recomputed_from_fresh_draws() {
        // n = 17: one block from draws 0..16 (its first element survives), the last 16 from draws
        // 17..33.
        let mut rng = TorchRng::new(7);
        let x = rng.randn(17);
        let head = TorchRng::new(7).randn(16);
        assert_eq!(x[0], head[0]);
        assert_ne!(x[1], head[1]);
        // 17 + 16 draws consumed: the next draw is the 34th.
        let mut probe = TorchRng::new(7);
        for _ in 0..33 {
            probe.next_u32();
        }
        assert_eq!(rng.next_u32(), probe.next_u32());
    }

    #[test]
    fn small_draws_use_the_cached_pair_half() {
        // n < 16: one f64 Box–Muller pair serves two consecutive single-element draws.
        let mut rng = TorchRng::new(3);
        let pair = [rng.randn(1)[0], rng.randn(1)[0]];
        assert_eq!(TorchRng::new(3).randn(2), pair);
        // torch.randn(3, generator=torch.Generator().manual_seed(0))
        let want = [1.5409961_f64 as f32, -0.2934289_f64 as f32, -2.1787894_f64 as f32];
        let got = TorchRng::new(0).randn(3);
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn cephes_kernels_track_libm() {
        for i in 1..=1000 {
            let u = i as f32 / 1000.0;
            assert!((cephes_log(u) as f64 - (u as f64).ln()).abs() < 1e-6 * (1.0 + (u as f64).ln().abs()));
            let t = u * std::f32::consts::TAU;
            let (s, c) = cephes_sincos(t);
            assert!((s as f64 - (t as f64).sin()).abs() < 1e-6);
            assert!((c as f64 - (t as f64).cos()).abs() < 1e-6);
        }
    }
}
