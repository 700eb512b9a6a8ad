//! PNGs in memory, through lcm-pipeline's own encoder and decoder (the bytes `lcm generate` would write;
//! the size checked from the header before any pixel is read).

use lcm_pipeline::output::{decode_png_rgb8, encode_png};
use lcm_pipeline::spec::SizeRule;

/// 8-bit RGB `rgb` ([h, w, 3]) as PNG bytes with `parameters` in a text chunk.
pub fn encode_rgb8(width: usize, height: usize, rgb: &[u8], parameters: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rgb.len() / 2 + 1024);
    encode_png(&mut out, width, height, rgb, parameters).map_err(|e| e.to_string())?;
    Ok(out)
}

/// An img2img input: any 8- or 16-bit PNG as 8-bit RGB, each side accepted by `size` (the header is
/// checked against its maximum before any pixel is read).
pub fn decode_rgb8(bytes: &[u8], size: SizeRule) -> Result<(usize, usize, Vec<u8>), String> {
    let (w, h, rgb) = decode_png_rgb8(std::io::Cursor::new(bytes), size.max())?;
    if !size.accepts(w) || !size.accepts(h) {
        return Err(format!("{w}x{h}: img2img needs each side to be {size}"));
    }
    Ok((w, h, rgb))
}

/// A ControlNet's control image: any 8- or 16-bit PNG as 8-bit RGB, each side at most `size`'s maximum
/// (any size: it is resized to the output's), checked from the header before any pixel is read.
pub fn decode_control_rgb8(bytes: &[u8], size: SizeRule) -> Result<(usize, usize, Vec<u8>), String> {
    // IHDR's width and height, right after the signature and the chunk's length and type.
    if bytes.len() >= 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR" {
        let side = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let (w, h) = (side(&bytes[16..20]), side(&bytes[20..24]));
        if w > size.max() || h > size.max() {
            return Err(format!("{w}x{h}: a control image may have at most {} pixels per side", size.max()));
        }
    }
    decode_png_rgb8(std::io::Cursor::new(bytes), size.max())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode_rgb8(64, 64, &rgb, "prompt: x").unwrap();
        let (up_to_1024, up_to_64) = (SizeRule::up_to("max", 1024).unwrap(), SizeRule::up_to("max", 64).unwrap());
        assert_eq!(decode_rgb8(&png, up_to_1024).unwrap(), (64, 64, rgb.clone()));
        let big = encode_rgb8(72, 64, &[0; 72 * 64 * 3], "").unwrap();
        assert!(decode_rgb8(&big, up_to_64).unwrap_err().contains("72x64"));
        assert!(decode_rgb8(&png[..png.len() / 2], up_to_1024).is_err());
        assert!(decode_rgb8(b"GIF89a", up_to_1024).unwrap_err().contains("not a PNG"));
        let odd = encode_rgb8(9, 8, &[0; 9 * 8 * 3], "").unwrap();
        assert!(decode_rgb8(&odd, up_to_1024).unwrap_err().contains("a multiple of 8"));
        // Control images: any size up to the maximum.
        assert_eq!(decode_control_rgb8(&odd, up_to_1024).unwrap().0, 9);
        let e = decode_control_rgb8(&big, up_to_64).unwrap_err();
        assert!(e.contains("72x64") && e.contains("control image"), "{e}");
        assert!(decode_control_rgb8(b"GIF89a", up_to_1024).unwrap_err().contains("not a PNG"));
    }
}
