//! Lanczos resizing of RGB8 images, bit-exact with Pillow 13's `Image.resize(size, LANCZOS)` on an RGB
//! image (libImaging/Resample.c: `precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc` / `ImagingResampleVertical_8bpc`, `ImagingResampleInner`).
//!
//! What has to match for equal bytes:
//! - the kernel window and weights are computed in f64 exactly as Pillow writes the expressions
//!   (same operation order, the same libm `sin`), then normalised to sum 1;
//! - the weights are turned into 22-bit fixed point with Pillow's rounding (half away from zero);
//! - each pass accumulates `u8 × i32` from a bias of one half and clips `>> 22` to 0..=255, and the
//!   intermediate image between the passes is stored as u8 (that rounding is part of the result);
//! - the pass order: horizontal first unless the height shrinks by more than twice what the width does.

/// Lanczos-3 support (Pillow's `LANCZOS.support`), in source pixels at scale 1.
const SUPPORT: f64 = 3.0;
/// Fractional bits of the fixed-point weights: Pillow's `PRECISION_BITS = 32 - 8 - 2`, two bits of
/// headroom for the kernel's negative lobes pushing a sum below 0 or above 255.
const PRECISION_BITS: u32 = 22;

/// Lanczos-3 (Pillow's `lanczos_filter`): sinc(x)·sinc(x/3) on [-3, 3), 0 outside.
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `sinc_filter`: sin(πx)/(πx), with x·π computed once and reused, as there.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let xpi = x * std::f64::consts::PI;
    xpi.sin() / xpi
}

/// One output line's taps along one axis: source index of the first tap and the fixed-point weights.
struct Taps {
    /// Per output pixel: (first source index, number of taps).
    bounds: Vec<(usize, usize)>,
    /// Weights, `ksize` slots per output pixel (only the first `count` are used).
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    fn of(&self, out: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[out];
        (start, &self.weights[out * self.ksize..out * self.ksize + count])
    }
}

/// Pillow's `precompute_coeffs` for the box (0, in_size) followed by `normalize_coeffs_8bpc`.
///
/// When shrinking, the kernel is stretched by the scale (`filterscale`) so that it averages over every
/// source pixel; when enlarging it stays 3 pixels wide. The window is centred on the output pixel's
/// centre mapped into the source, its ends rounded by truncating `+ 0.5` (C's `(int)`), clipped to the
/// image, and the weights renormalised to sum 1 over what is left (so edges do not darken).
fn precompute(in_size: usize, out_size: usize) -> Taps {
    // Pillow takes the box as C floats: (in1 - in0) is a float subtraction, exact for our sizes.
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv_filterscale = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // `(int)` truncates toward zero; a negative start is then clipped to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;

        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(count) {
            // Pillow: filter((x + xmin - center + 0.5) * inv_filterscale), x + xmin an int sum.
            *wx = lanczos((((x + xmin) as f64) - center + 0.5) * inv_filterscale);
            ww += *wx;
        }
        let out = &mut weights[xx * ksize..xx * ksize + count];
        for (o, &wx) in out.iter_mut().zip(&w[..count]) {
            let k = if ww != 0.0 { wx / ww } else { wx };
            *o = to_fixed(k);
        }
        bounds.push((xmin, count));
    }
    Taps { bounds, weights, ksize }
}

/// `normalize_coeffs_8bpc`: round half away from zero to 22 fractional bits (C's `(int)` truncation of
/// `k·2²² ± 0.5`).
fn to_fixed(k: f64) -> i32 {
    let scaled = k * f64::from(1u32 << PRECISION_BITS);
    if k < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// `clip8`: drop the fraction bits (arithmetic shift, i.e. floor) and clip to a byte. The sums start at
/// one half, so this rounds to nearest.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding bias every sum starts from: one half in fixed point.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// `ImagingResampleHorizontal_8bpc` on RGB rows: each output pixel of each row from its taps along x.
fn horizontal(src: &[u8], in_w: usize, rows: usize, out_w: usize, taps: &Taps) -> Vec<u8> {
    let mut out = vec![0u8; out_w * rows * 3];
    for y in 0..rows {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for xx in 0..out_w {
            let (start, k) = taps.of(xx);
            let mut acc = [HALF; 3];
            for (i, &kx) in k.iter().enumerate() {
                let p = &line[(start + i) * 3..(start + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += i64::from(p[c]) * i64::from(kx);
                }
            }
            let o = (y * out_w + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc` on RGB: each output row from its taps along y, column by column.
fn vertical(src: &[u8], width: usize, out_h: usize, taps: &Taps) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_h];
    for yy in 0..out_h {
        let (start, k) = taps.of(yy);
        let line = &mut out[yy * stride..(yy + 1) * stride];
        for (x, o) in line.iter_mut().enumerate() {
            let mut acc = HALF;
            for (i, &ky) in k.iter().enumerate() {
                acc += i64::from(src[(start + i) * stride + x]) * i64::from(ky);
            }
            *o = clip8(acc);
        }
    }
    out
}

/// `ImagingResampleInner` with LANCZOS and the whole image as the box (what `Image.resize` passes when
/// `box` and `reducing_gap` are left at their defaults). Arguments are checked by the caller.
pub(super) fn lanczos_rgb8(rgb: &[u8], w: usize, h: usize, new_w: usize, new_h: usize) -> Vec<u8> {
    // Pillow: "If height is being scaled down more than twice the amount the width is, run the vertical
    // pass first". The order changes the result, since the image between the passes is rounded to u8.
    let (dh, dw) = (h as i64 - new_h as i64, w as i64 - new_w as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    match (new_w != w, new_h != h) {
        // `Image.resize` returns a copy when the size does not change.
        (false, false) => rgb.to_vec(),
        (true, false) => horizontal(rgb, w, h, new_w, &precompute(w, new_w)),
        (false, true) => vertical(rgb, w, new_h, &precompute(h, new_h)),
        // Pillow's horizontal pass skips the source rows that no output row reads; computing them too
        // gives the same bytes for the rows that are read.
        (true, true) if horizontal_first => {
            let tmp = horizontal(rgb, w, h, new_w, &precompute(w, new_w));
            vertical(&tmp, new_w, new_h, &precompute(h, new_h))
        }
        (true, true) => {
            let tmp = vertical(rgb, w, new_h, &precompute(h, new_h));
            horizontal(&tmp, w, new_h, new_w, &precompute(w, new_w))
        }
    }
}
