//! `lcm frames`' input sequence: which files are frames, in what order, and whether a frame barely
//! differs from the last one that ran (the similarity skip).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};

/// The frames in `dir`: every `*.png` file (any case) whose name does not start with '.', in
/// [`natural_cmp`] order of their names. Other files and folders are not frames and are returned
/// apart (the caller says it skipped them): a sequence folder often holds an audio track or notes,
/// and refusing them would force a copy. No PNG at all is an error naming `--input`.
pub fn list_frames(dir: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "--input: not a folder (expected a folder of PNG frames)"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("--input: cannot list: {e}")))?;
    let (mut frames, mut others) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(dir, format!("--input: cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_png = Path::new(&name).extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && !name.starts_with('.') && entry.path().is_file() {
            frames.push(entry.path());
        } else {
            others.push(name);
        }
    }
    if frames.is_empty() {
        return Err(Error::file(dir, "--input: no .png frames in this folder"));
    }
    frames.sort_by(|a, b| natural_cmp(&file_name(a), &file_name(b)));
    others.sort();
    Ok((frames, others))
}

/// The file name of `path` as text (frames are listed from a folder, so there always is one).
pub fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Natural order: runs of ASCII digits compare as numbers (`frame_2` < `frame_10`, `f007` = `f7` by
/// value), everything else by character; names equal that way fall back to plain byte order, so the
/// order is total and stable (`f07` < `f7`).
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (n, rest_x) = digit_run(x);
                let (m, rest_y) = digit_run(y);
                // Without leading zeros, a longer run is a larger number; equal lengths compare as text.
                let (n, m) = (trim_zeros(n), trim_zeros(m));
                let by_value = n.len().cmp(&m.len()).then_with(|| n.cmp(m));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) if c != d => return c.cmp(d),
            _ => (x, y) = (&x[1..], &y[1..]),
        }
    }
}

fn digit_run(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|c| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
    &s[start..]
}

/// The similarity skip's metric: the mean absolute difference of two frames' 8-bit RGB values, over
/// 255 (0: identical, 1: black against white). `lcm frames --skip-similar T` reuses the previous
/// output for a frame whose difference from the last frame that ran is below T.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    debug_assert_eq!(a.len(), b.len(), "frames of one size (checked before)");
    let sum: u64 = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    sum as f64 / (255.0 * a.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_by_value() {
        let mut names = ["frame_10.png", "frame_2.png", "frame_1.png", "b.png", "a10b.png", "a9c.png", "f07.png"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a9c.png", "a10b.png", "b.png", "f07.png", "frame_1.png", "frame_2.png", "frame_10.png"]);
        assert_eq!(natural_cmp("f07", "f7"), Ordering::Less, "ties fall back to byte order");
        assert_eq!(natural_cmp("f7", "f07"), Ordering::Greater);
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
        assert_eq!(natural_cmp("99999999999999999999999", "100000000000000000000000"), Ordering::Less);
    }

    #[test]
    fn difference_is_a_mean_over_255() {
        assert_eq!(mean_abs_diff(&[0, 0, 0, 0], &[0, 0, 0, 0]), 0.0);
        assert_eq!(mean_abs_diff(&[0, 255], &[255, 0]), 1.0);
        assert!((mean_abs_diff(&[10, 10], &[12, 10]) - 1.0 / 255.0).abs() < 1e-12);
    }
}
