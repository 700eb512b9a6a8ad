//! Control-image preprocessing for ControlNet, exact against the Python libraries users compare with:
//! - [`resize_lanczos_rgb8`]: Pillow 13's `Image.resize(size, Image.Resampling.LANCZOS)` (diffusers'
//!   `VaeImageProcessor` resizes PIL control images this way), byte for byte;
//! - [`canny_rgb8`]: OpenCV's `cv2.Canny(img, low, high)` on an HxWx3 uint8 array (what the A1111
//!   ControlNet extension's `canny` module and diffusers' docs run), pixel for pixel;
//! - [`ControlPreprocess`]: the user's choice (`none`, `canny`, `canny:LOW:HIGH`), applied to RGB8.
//!
//! Images are RGB8, row-major, 3 bytes per pixel, no padding. Pure functions: no I/O, no model.

use std::fmt;
use std::str::FromStr;

use lcm_core::{Error, Result};

mod canny;
mod resize;

/// The largest width or height accepted (in pixels): far above any control image, small enough that a
/// mistyped size fails with an error instead of an allocation of many gigabytes.
pub const MAX_SIDE: usize = 16384;

/// What buffer-size and image-size errors name.
const IMAGE: &str = "control_image";
/// What preprocessor-choice and threshold errors name.
const PREPROCESS: &str = "control_preprocess";

/// What [`ControlPreprocess`]'s parser expects, for its errors.
const EXPECTED: &str = "expected `none`, `canny` (thresholds 100:200, as in A1111) or `canny:LOW:HIGH` with \
                        0 ≤ LOW, HIGH ≤ 255 (Canny's hysteresis thresholds on the L1 gradient magnitude; \
                        LOW > HIGH is swapped, as OpenCV does)";

/// Checks that `rgb` holds a `width`x`height` RGB8 image.
fn check_image(rgb: &[u8], width: usize, height: usize) -> Result<()> {
    check_size(width, height, "image")?;
    let need = width * height * 3; // no overflow: both sides ≤ MAX_SIDE
    if rgb.len() != need {
        return Err(Error::invalid(
            IMAGE,
            format!("a {width}x{height} RGB8 image needs {need} bytes (width·height·3), got {}", rgb.len()),
        ));
    }
    Ok(())
}

/// Checks a requested or given size: both sides in 1..=[`MAX_SIDE`].
fn check_size(width: usize, height: usize, which: &str) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::invalid(
            IMAGE,
            format!("{which} size {width}x{height}: each side must be 1..={MAX_SIDE} pixels"),
        ));
    }
    Ok(())
}

/// Resizes an RGB8 image to `new_width`x`new_height` with Lanczos-3, giving exactly what Pillow 13.0.0's
/// `Image.resize((new_width, new_height), Image.Resampling.LANCZOS)` gives on an RGB image (default
/// `box`, no `reducing_gap`). The same size returns a copy.
///
/// Errors ([`Error::Invalid`], what = `control_image`): `rgb.len() != width·height·3`, or a side of
/// either size 0 or above [`MAX_SIDE`].
pub fn resize_lanczos_rgb8(
    rgb: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
) -> Result<Vec<u8>> {
    check_image(rgb, width, height)?;
    check_size(new_width, new_height, "target")?;
    Ok(resize::lanczos_rgb8(rgb, width, height, new_width, new_height))
}

/// The Canny edge map of an RGB8 image: `width·height` bytes, 255 on edges and 0 elsewhere, exactly
/// what OpenCV's `cv2.Canny(img, low, high)` gives for the image as an HxWx3 uint8 array (aperture 3,
/// L1 gradient; `low > high` is swapped, fractions are floored, as OpenCV does).
///
/// Errors ([`Error::Invalid`]): a buffer or size as in [`resize_lanczos_rgb8`] (what =
/// `control_image`); a threshold that is NaN, infinite or negative (what = `control_preprocess`).
pub fn canny_rgb8(rgb: &[u8], width: usize, height: usize, low: f64, high: f64) -> Result<Vec<u8>> {
    check_image(rgb, width, height)?;
    for (name, t) in [("low", low), ("high", high)] {
        if !t.is_finite() || t < 0.0 {
            return Err(Error::invalid(
                PREPROCESS,
                format!("Canny {name} threshold {t}: expected a finite number ≥ 0 (an L1 gradient magnitude)"),
            ));
        }
    }
    Ok(canny::canny_rgb8(rgb, width, height, low, high))
}

/// How a ControlNet control image is preprocessed before it conditions the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlPreprocess {
    /// Used as given (the image already is a control map: edges, depth, pose…).
    None,
    /// Canny edges ([`canny_rgb8`]), as white-on-black RGB.
    Canny {
        /// Lower hysteresis threshold: weaker edges are dropped, stronger ones kept where they connect
        /// to a strong edge.
        low: f64,
        /// Upper hysteresis threshold: edges stronger than this are always kept.
        high: f64,
    },
}

impl ControlPreprocess {
    /// A1111's Canny defaults (`canny` alone): low 100, high 200.
    pub const CANNY_DEFAULT: ControlPreprocess = ControlPreprocess::Canny { low: 100.0, high: 200.0 };

    /// Preprocesses a `width`x`height` RGB8 image into an RGB8 image of the same size: a copy for
    /// [`None`](Self::None); for [`Canny`](Self::Canny) the edge map in all three channels (as A1111's
    /// `HWC3` turns the one-channel map into the RGB image the ControlNet gets).
    ///
    /// Errors: as [`canny_rgb8`].
    pub fn apply(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
        match *self {
            ControlPreprocess::None => {
                check_image(rgb, width, height)?;
                Ok(rgb.to_vec())
            }
            ControlPreprocess::Canny { low, high } => {
                let edges = canny_rgb8(rgb, width, height, low, high)?;
                Ok(edges.iter().flat_map(|&e| [e; 3]).collect())
            }
        }
    }
}

impl FromStr for ControlPreprocess {
    type Err = Error;

    /// `none`, `canny` (100:200) or `canny:LOW:HIGH` (names in any case; thresholds decimal numbers in
    /// 0..=255).
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid(PREPROCESS, format!("{s:?}: {why}; {EXPECTED}"));
        let mut parts = s.trim().split(':');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let rest: Vec<&str> = parts.collect();
        match (name.as_str(), rest.as_slice()) {
            ("none", []) => Ok(ControlPreprocess::None),
            ("canny", []) => Ok(ControlPreprocess::CANNY_DEFAULT),
            ("canny", [low, high]) => {
                let threshold = |t: &str| -> Result<f64> {
                    let v: f64 = t.trim().parse().map_err(|_| bad(&format!("threshold {t:?} is not a number")))?;
                    if !(0.0..=255.0).contains(&v) {
                        return Err(bad(&format!("threshold {t:?} is outside 0..=255")));
                    }
                    Ok(v)
                };
                Ok(ControlPreprocess::Canny { low: threshold(low)?, high: threshold(high)? })
            }
            ("canny", _) => Err(bad("`canny` takes no thresholds or exactly two")),
            ("none", _) => Err(bad("`none` takes no parameters")),
            _ => Err(bad("unknown preprocessor")),
        }
    }
}

impl fmt::Display for ControlPreprocess {
    /// The form [`FromStr`] reads back: `none` or `canny:LOW:HIGH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlPreprocess::None => write!(f, "none"),
            ControlPreprocess::Canny { low, high } => write!(f, "canny:{low}:{high}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_thresholds() {
        assert_eq!("none".parse::<ControlPreprocess>().unwrap(), ControlPreprocess::None);
        assert_eq!(" Canny ".parse::<ControlPreprocess>().unwrap(), ControlPreprocess::CANNY_DEFAULT);
        assert_eq!(
            "canny:50:100.5".parse::<ControlPreprocess>().unwrap(),
            ControlPreprocess::Canny { low: 50.0, high: 100.5 }
        );
        for p in [ControlPreprocess::None, ControlPreprocess::Canny { low: 0.25, high: 255.0 }] {
            assert_eq!(p.to_string().parse::<ControlPreprocess>().unwrap(), p);
        }
    }

    #[test]
    fn constant_image_has_no_edges_and_none_copies() {
        let rgb = vec![77u8; 5 * 4 * 3];
        assert_eq!(canny_rgb8(&rgb, 5, 4, 0.0, 0.0).unwrap(), vec![0u8; 20]);
        assert_eq!(ControlPreprocess::None.apply(&rgb, 5, 4).unwrap(), rgb);
        // A constant image resizes to the same constant: the weights sum to one.
        assert_eq!(resize_lanczos_rgb8(&rgb, 5, 4, 13, 3).unwrap(), vec![77u8; 13 * 3 * 3]);
    }

    #[test]
    fn a_step_gives_one_edge_column_in_all_channels() {
        // 6x3, left half 0, right half 200 in green only: the edge is at the first bright column,
        // where the magnitude first peaks (m > left, m >= right).
        let (w, h) = (6, 3);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 3..w {
                rgb[(y * w + x) * 3 + 1] = 200;
            }
        }
        let out = ControlPreprocess::CANNY_DEFAULT.apply(&rgb, w, h).unwrap();
        for y in 0..h {
            for x in 0..w {
                let e = if x == 2 { 255 } else { 0 };
                assert_eq!(&out[(y * w + x) * 3..][..3], &[e; 3], "pixel ({x}, {y})");
            }
        }
    }
}
