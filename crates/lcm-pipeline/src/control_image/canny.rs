//! Canny edges of an RGB8 image, pixel-exact with OpenCV's `cv2.Canny(img, low, high)` on an HxWx3
//! uint8 array with the defaults `apertureSize=3`, `L2gradient=False` (modules/imgproc/src/canny.cpp:
//! `Canny`, `parallelCanny::operator()`, `finalPass`).
//!
//! The steps, as OpenCV takes them:
//! 1. 3x3 Sobel x and y derivatives of every channel into i16, borders replicated (`Sobel(...,
//!    BORDER_REPLICATE)`);
//! 2. per pixel, the L1 magnitude |dx| + |dy| of each channel; the channel with the largest one (the
//!    first on ties) gives the pixel's magnitude and direction;
//! 3. non-maximum suppression against the two neighbours across the gradient, with the direction
//!    binned by a fixed-point tan(22.5°) test; a pixel that survives and is above `low` is a weak
//!    candidate, above `high` a strong edge;
//! 4. hysteresis: every candidate 8-connected to a strong edge through candidates becomes an edge.
//!
//! OpenCV runs steps 1–4 in row slices on several threads and then finishes the hysteresis across
//! slice borders; the result is the same connected flood as one pass over the whole image, which is
//! what this does.

/// `TG22 = (int)(tan(22.5°)·2¹⁵ + 0.5)`: with `y = |dy|·2¹⁵` and `x = |dx|`, `y < x·TG22` means the
/// gradient is within 22.5° of horizontal.
const TG22: i64 = 13573;
/// The fixed-point shift of that test (`CANNY_SHIFT`).
const CANNY_SHIFT: u32 = 15;

/// What the suppression step leaves in each cell of the map (OpenCV's map values).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// 0: survived suppression, above `low`: an edge if a strong edge reaches it.
    Candidate,
    /// 1: cannot be an edge (suppressed, at or below `low`, or the map's border).
    NotEdge,
    /// 2: an edge.
    Edge,
}

/// The 3x3 Sobel derivatives of one channel at (x, y), borders replicated. dx's kernel is
/// [-1 0 1] across times [1 2 1] down; dy's the transpose. |dx|, |dy| ≤ 4·255, so i16 holds them as
/// in OpenCV's CV_16S output.
fn sobel(rgb: &[u8], w: usize, h: usize, x: usize, y: usize, c: usize) -> (i32, i32) {
    let (xl, xr) = (x.saturating_sub(1), (x + 1).min(w - 1));
    let (yu, yd) = (y.saturating_sub(1), (y + 1).min(h - 1));
    let p = |xx: usize, yy: usize| i32::from(rgb[(yy * w + xx) * 3 + c]);
    let dx = (p(xr, yu) - p(xl, yu)) + 2 * (p(xr, y) - p(xl, y)) + (p(xr, yd) - p(xl, yd));
    let dy = (p(xl, yd) - p(xl, yu)) + 2 * (p(x, yd) - p(x, yu)) + (p(xr, yd) - p(xr, yu));
    (dx, dy)
}

/// `cvFloor` of a threshold, clamped to a range that holds every comparison's outcome (magnitudes are
/// 0..=2040) so that huge values cannot overflow.
fn floor_threshold(t: f64) -> i64 {
    t.floor().clamp(-1.0, 1e6) as i64
}

/// The edge map (0 or 255 per pixel) of an RGB8 image; arguments checked by the caller (sizes > 0,
/// `rgb.len() == w·h·3`, thresholds not NaN).
pub(super) fn canny_rgb8(rgb: &[u8], w: usize, h: usize, low: f64, high: f64) -> Vec<u8> {
    // `Canny`: swap the thresholds if low > high, then floor both (`cvFloor`); the tests below are
    // strict (m > low, m > high) on the integer magnitudes.
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (floor_threshold(low), floor_threshold(high));

    // Steps 1–2. Magnitudes live in a grid with a zero border one cell wide: OpenCV zeroes the
    // magnitude entries left and right of each row and the rows above the first and below the last,
    // so suppression at the image's edge compares against 0.
    let pw = w + 2;
    let mut mag = vec![0i32; pw * (h + 2)];
    let mut grad = vec![(0i32, 0i32); w * h];
    for y in 0..h {
        for x in 0..w {
            let mut best = (-1, 0, 0);
            for c in 0..3 {
                let (dx, dy) = sobel(rgb, w, h, x, y, c);
                let m = dx.abs() + dy.abs();
                // Strictly greater: the first channel wins ties, as in OpenCV's per-pixel max.
                if m > best.0 {
                    best = (m, dx, dy);
                }
            }
            mag[(y + 1) * pw + x + 1] = best.0;
            grad[y * w + x] = (best.1, best.2);
        }
    }

    // Step 3. The map has a border of NotEdge cells, so the hysteresis never leaves the image.
    let mut map = vec![Cell::NotEdge; pw * (h + 2)];
    let mut stack = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let i = (y + 1) * pw + x + 1;
            let m = i64::from(mag[i]);
            if m > low && is_local_max(&mag, pw, i, grad[y * w + x]) {
                if m > high {
                    map[i] = Cell::Edge;
                    stack.push(i);
                } else {
                    map[i] = Cell::Candidate;
                }
            }
        }
    }

    // Step 4 (`CANNY_PUSH` / the stack loops): flood from every strong edge over 8-connected
    // candidates. The order of the flood does not change which cells it reaches.
    let neighbours = [pw + 1, pw, pw - 1, 1];
    while let Some(i) = stack.pop() {
        for d in neighbours {
            for j in [i - d, i + d] {
                if map[j] == Cell::Candidate {
                    map[j] = Cell::Edge;
                    stack.push(j);
                }
            }
        }
    }

    // `finalPass`: 255 for edges, 0 elsewhere.
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        out.extend(map[(y + 1) * pw + 1..(y + 1) * pw + 1 + w].iter().map(|&c| if c == Cell::Edge { 255 } else { 0 }));
    }
    out
}

/// OpenCV's non-maximum suppression test for the magnitude at padded index `i` with gradient
/// `(dx, dy)`. The direction is binned without division: horizontal if |dy| < |dx|·tan 22.5°,
/// vertical if |dy| > |dx|·tan 67.5° (= tan 22.5° + 2), diagonal otherwise, in fixed point. Along
/// x and y the pixel must beat the neighbour before it and at least equal the one after it (so a
/// plateau of two keeps one pixel); on a diagonal it must beat both.
fn is_local_max(mag: &[i32], pw: usize, i: usize, (dx, dy): (i32, i32)) -> bool {
    let m = mag[i];
    let x = i64::from(dx.abs());
    let y = i64::from(dy.abs()) << CANNY_SHIFT;
    let tg22x = x * TG22;
    if y < tg22x {
        return m > mag[i - 1] && m >= mag[i + 1];
    }
    let tg67x = tg22x + (x << (CANNY_SHIFT + 1));
    if y > tg67x {
        return m > mag[i - pw] && m >= mag[i + pw];
    }
    // Diagonal: with dx and dy of the same sign the gradient runs top-left to bottom-right (y grows
    // downwards), so compare the row above at x-1 and the row below at x+1; else the other diagonal.
    if (dx ^ dy) < 0 {
        m > mag[i - pw + 1] && m > mag[i + pw - 1]
    } else {
        m > mag[i - pw - 1] && m > mag[i + pw + 1]
    }
}
