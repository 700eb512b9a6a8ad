//! Pillow's `ImageFilter.GaussianBlur` on an 8-bit gray image, as A1111 applies `mask_blur` to an
//! inpainting mask: Pillow approximates the Gaussian by three box blurs of a fractional radius
//! (`libImaging/BoxBlur.c`: `_gaussian_blur_radius`, `ImagingHorizontalBoxBlur`), each pass rounded to
//! 8 bits, rows first then columns, edges extended. This follows that code step by step (the same f32
//! radius and 24-bit fixed-point weights), so the result is Pillow's (recorded cases:
//! tests/fixtures/records/mask_blur.safetensors, made by tests/fixtures/generate_mask_blur.py).

/// Pillow's box-blur passes for a Gaussian.
const PASSES: usize = 3;

/// Pillow's box radius for a Gaussian of `radius` in `passes` passes (Gwosdek et al. 2011).
fn box_radius(radius: f32, passes: usize) -> f32 {
    let sigma2: f32 = radius * radius / passes as f32;
    let big_l = ((12.0 * sigma2 as f64 + 1.0).sqrt()) as f32;
    let l = (((big_l as f64) - 1.0) / 2.0).floor() as f32;
    let mut a: f32 = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// One horizontal box blur of every row of `img` (`w` wide) with Pillow's fractional `radius`.
fn box_rows(img: &mut [u8], w: usize, radius: f32) {
    let r = radius as usize;
    let ww = (((1u32 << 24) as f32) / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    let last = w as isize - 1;
    let mut out = vec![0u8; w];
    for row in img.chunks_exact_mut(w) {
        let at = |i: isize| row[i.clamp(0, last) as usize] as u32;
        // The window [x-r, x+r] with edges extended, moved one pixel at a time.
        let mut acc: u32 = (-(r as isize)..=r as isize).map(|i| at(i - 1)).sum();
        for (x, o) in out.iter_mut().enumerate() {
            let x = x as isize;
            acc = acc + at(x + r as isize) - at(x - r as isize - 1);
            let bulk = acc * ww + (at(x - r as isize - 1) + at(x + r as isize + 1)) * fw;
            *o = ((bulk + (1 << 23)) >> 24) as u8;
        }
        row.copy_from_slice(&out);
    }
}

fn transpose(img: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut t = vec![0u8; img.len()];
    for y in 0..h {
        for x in 0..w {
            t[x * h + y] = img[y * w + x];
        }
    }
    t
}

/// `gray` (`[h, w]`, row-major) blurred as Pillow's `ImageFilter.GaussianBlur((rx, ry))`; a radius of 0
/// leaves that direction alone.
pub fn gaussian_blur(gray: &[u8], w: usize, h: usize, rx: f32, ry: f32) -> Vec<u8> {
    assert_eq!(gray.len(), w * h, "gray is w·h values");
    let mut img = gray.to_vec();
    if w == 0 || h == 0 {
        return img;
    }
    let (bx, by) = (box_radius(rx, PASSES), box_radius(ry, PASSES));
    if bx != 0.0 {
        for _ in 0..PASSES {
            box_rows(&mut img, w, bx);
        }
    }
    if by != 0.0 {
        let mut t = transpose(&img, w, h);
        for _ in 0..PASSES {
            box_rows(&mut t, h, by);
        }
        img = transpose(&t, h, w);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_stays_flat_and_zero_is_identity() {
        let flat = vec![200u8; 16 * 8];
        assert_eq!(gaussian_blur(&flat, 16, 8, 4.0, 4.0), flat);
        let g: Vec<u8> = (0..16 * 8).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(gaussian_blur(&g, 16, 8, 0.0, 0.0), g);
        // A step spreads, symmetric about its edge.
        let step: Vec<u8> = (0..32).map(|i| if i < 16 { 0 } else { 255 }).collect();
        let b = gaussian_blur(&step, 32, 1, 4.0, 0.0);
        assert!(b[15] > 0 && b[16] < 255 && b[0] == 0 && b[31] == 255, "{b:?}");
    }

    /// The U8 tensors of a safetensors file, by name (read by hand: lcm-serve has no safetensors crate).
    fn u8_tensors(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let head: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut out = Vec::new();
        for (name, t) in head.iter().filter(|(k, _)| *k != "__metadata__") {
            assert_eq!(t["dtype"], "U8", "{name}");
            let shape = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let o = t["data_offsets"].as_array().unwrap();
            let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
            out.push((name.clone(), shape, data[a..b].to_vec()));
        }
        out
    }

    #[test]
    fn matches_pillows_gaussian_blur() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/records/mask_blur.safetensors");
        let tensors = u8_tensors(&path);
        let (_, shape, input) = tensors.iter().find(|t| t.0 == "input").unwrap();
        let (h, w) = (shape[0], shape[1]);
        let mut cases = 0;
        for (name, _, want) in tensors.iter().filter(|t| t.0.starts_with("blur_")) {
            let mut radii = name["blur_".len()..].split('_').map(|r| r.parse::<f32>().unwrap());
            let (rx, ry) = (radii.next().unwrap(), radii.next().unwrap());
            let got = gaussian_blur(input, w, h, rx, ry);
            let max = got.iter().zip(want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(max, 0, "{name}: {n} pixels differ from Pillow's, by up to {max}");
            cases += 1;
        }
        assert_eq!(cases, 8);
    }
}
