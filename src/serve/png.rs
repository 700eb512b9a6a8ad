//! PNGs in memory: encoded exactly as `lcm generate` writes them (lcm_pipeline::output::write_png:
//! 8-bit RGB, default compression and filter, a `parameters` tEXt chunk), decoded with the size
//! checked from the header before any pixel is read.

/// 8-bit RGB `rgb` ([h, w, 3]) as PNG bytes with `parameters` in a tEXt chunk.
pub fn encode_rgb8(width: usize, height: usize, rgb: &[u8], parameters: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rgb.len() / 2 + 1024);
    let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.add_text_chunk("parameters".to_string(), parameters.to_string()).map_err(|e| e.to_string())?;
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Any 8- or 16-bit PNG as 8-bit RGB (grey replicated, alpha dropped, palettes expanded), as
/// lcm_pipeline::output::read_image_rgb8 reads files; sides must be multiples of 8 up to `max_side`.
pub fn decode_rgb8(bytes: &[u8], max_side: usize) -> Result<(usize, usize, Vec<u8>), String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // Bounds the decoder's own allocations too (a header can claim any size).
    dec.set_limits(png::Limits { bytes: 8 * max_side * max_side + (1 << 20) });
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| format!("not a PNG image: {e}"))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w > max_side || h > max_side || w % 8 != 0 || h % 8 != 0 || w < 64 || h < 64 {
        return Err(format!("{w}x{h}: img2img needs sides that are multiples of 8 in 64..={max_side}"));
    }
    let mut buf = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("bad PNG data: {e}"))?;
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(format!("unsupported PNG colour type {other:?}")),
    };
    if buf.len() != w * h * channels {
        return Err("bad PNG data: short image".into());
    }
    let rgb = buf
        .chunks_exact(channels)
        .flat_map(|px| if channels < 3 { [px[0], px[0], px[0]] } else { [px[0], px[1], px[2]] })
        .collect();
    Ok((w, h, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let png = encode_rgb8(64, 64, &rgb, "prompt: x").unwrap();
        assert_eq!(decode_rgb8(&png, 1024).unwrap(), (64, 64, rgb.clone()));
        assert!(decode_rgb8(&png, 32).unwrap_err().contains("64x64"));
        assert!(decode_rgb8(&png[..png.len() / 2], 1024).is_err());
        assert!(decode_rgb8(b"GIF89a", 1024).unwrap_err().contains("not a PNG"));
        let odd = encode_rgb8(9, 8, &[0; 9 * 8 * 3], "").unwrap();
        assert!(decode_rgb8(&odd, 1024).unwrap_err().contains("multiples of 8"));
    }
}
