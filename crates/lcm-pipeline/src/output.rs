//! Writing results: 8-bit RGB PNGs with the generation settings in a `parameters` tEXt chunk, and the
//! final latents as safetensors. Every file is written to a temporary name beside its target and renamed
//! into place, so a failure never leaves a half-written file under the requested name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result, Tensor};

use crate::prompt::PromptSyntax;
use crate::scheduler::{SamplerKind, SamplerOptions};
use crate::spec::{LoraSpec, Request, SizeRule};

/// `out.png` for one image; `out-0.png` … `out-{n-1}.png` for several.
pub fn numbered_paths(path: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    (0..n).map(|i| path.with_file_name(format!("{stem}-{i}{ext}"))).collect()
}

/// The settings text stored in each PNG (prompt, negative prompt, then one line of settings and
/// LoRAs), in the spirit of other SD tools' `parameters` chunk.
pub fn parameters_text(req: &Request, model: &str, loras: &[LoraSpec]) -> String {
    let mut s = format!("prompt: {}\n", req.prompt);
    s += &format!("negative prompt: {}\n", req.negative_prompt.as_deref().unwrap_or(""));
    // A request without its own sampler ran the pipeline's; front ends fill it in to name it here.
    let sampler = req.sampler.unwrap_or(SamplerOptions::new(SamplerKind::Lcm));
    s += &format!(
        "steps: {}, guidance scale: {}, seed: {}, size: {}x{}, model: {}, sampler: {}",
        req.steps,
        req.guidance_scale,
        req.seed,
        req.width,
        req.height,
        model,
        sampler.kind.a1111_name()
    );
    if let Some(eta) = sampler.eta {
        s += &format!(", eta: {eta}");
    }
    if let Some(spacing) = sampler.timestep_spacing {
        s += &format!(", timestep spacing: {}", spacing.name());
    }
    if req.prompt_syntax != PromptSyntax::Plain {
        s += &format!(", prompt syntax: {}", req.prompt_syntax.name());
    }
    if let Some(init) = &req.init_image {
        let what = if init.mask.is_some() { "inpainting" } else { "img2img" };
        s += &format!(", {what} strength: {}", init.strength);
    }
    for l in loras {
        s += &format!(", lora: {}:{}", l.path.display(), l.scale);
    }
    for c in &req.controls {
        s += &format!(", controlnet: {}:{} [{}, {}]", c.model.display(), c.scale, c.start, c.end);
    }
    s
}

/// Writes `write` to a sibling temporary file, then renames it to `path`.
fn atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::file(dir, "output folder does not exist"));
    }
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file name"))?;
    let tmp = dir.join(format!(".{}.part{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// Writes `rgb` (8-bit, row-major `[height, width, 3]`) as a PNG with `parameters` in a `parameters`
/// tEXt chunk. A buffer of the wrong length is an error naming `png`; I/O errors name `path`.
pub fn write_png(path: &Path, width: usize, height: usize, rgb: &[u8], parameters: &str) -> Result<()> {
    if rgb.len() != width * height * 3 {
        return Err(Error::invalid("png", format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
    }
    atomically(path, |w| encode_png(w, width, height, rgb, parameters))
}

/// Encodes 8-bit RGB `rgb` (`[height, width, 3]`, length checked by the caller) as a PNG into `w`, with
/// `parameters` in a text chunk: what [`write_png`] writes to files and `lcm serve` into responses.
pub fn encode_png(w: impl Write, width: usize, height: usize, rgb: &[u8], parameters: &str) -> std::io::Result<()> {
    let mut enc = png::Encoder::new(w, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // tEXt holds Latin-1 only: a prompt with other characters (CJK, emoji, control characters)
    // goes into an iTXt chunk (UTF-8) instead of failing after the image is made.
    let latin1 = parameters.chars().all(|c| matches!(c as u32, 0x0a | 0x20..=0x7e | 0xa1..=0xff));
    if latin1 {
        enc.add_text_chunk("parameters".to_string(), parameters.to_string()).map_err(std::io::Error::other)?;
    } else {
        enc.add_itxt_chunk("parameters".to_string(), parameters.to_string()).map_err(std::io::Error::other)?;
    }
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(rgb).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

/// One f32 tensor named `latents`.
pub fn write_latents(path: &Path, latents: &Tensor) -> Result<()> {
    let bytes: Vec<u8> = latents.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, latents.shape.clone(), &bytes)
        .map_err(|e| Error::invalid("latents", e.to_string()))?;
    let data =
        safetensors::serialize([("latents", view)], None).map_err(|e| Error::invalid("latents", e.to_string()))?;
    atomically(path, |w| w.write_all(&data))
}

/// Reads any 8- or 16-bit PNG as 8-bit RGB (grey is replicated, alpha dropped, palettes expanded), for
/// img2img inputs: (width, height, rgb).
pub fn read_image_rgb8(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open image: {e}")))?;
    decode_png_rgb8(std::io::BufReader::new(file), SizeRule::DEFAULT_MAX).map_err(|m| Error::file(path, m))
}

/// A PNG's (width, height) from its header alone, without decoding the pixels (checking a sequence of
/// frames before any work).
pub fn png_size(path: &Path) -> Result<(usize, usize)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open image: {e}")))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| Error::file(path, format!("not a PNG image: {e}")))?;
    Ok((reader.info().width as usize, reader.info().height as usize))
}

/// Decodes any 8- or 16-bit PNG as 8-bit RGB (grey replicated, alpha dropped, palettes expanded):
/// (width, height, rgb). Sides over `max_side` are refused from the header, before the pixel buffer is
/// allocated: a 69-byte file can claim 100000x100000 pixels (30 GB decoded). The error is a message
/// for the caller to place (a file, a request field).
pub fn decode_png_rgb8(
    r: impl std::io::BufRead + std::io::Seek,
    max_side: usize,
) -> std::result::Result<(usize, usize, Vec<u8>), String> {
    let (w, h, channels, buf) = decode_png_pixels(r, max_side)?;
    let rgb = buf
        .chunks_exact(channels)
        .flat_map(|px| if channels < 3 { [px[0], px[0], px[0]] } else { [px[0], px[1], px[2]] })
        .collect();
    Ok((w, h, rgb))
}

/// Decodes a PNG inpainting mask as 8-bit gray values (width, height, gray, whether they came from
/// an alpha channel): a PNG with alpha gives its alpha (opaque = repaint, as white does); otherwise
/// grey as it is, and colour converted as Pillow's `convert("L")` does (ITU-R 601-2 luma,
/// (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16), which diffusers' mask processor calls.
pub fn decode_png_mask(
    r: impl std::io::BufRead + std::io::Seek,
    max_side: usize,
) -> std::result::Result<(usize, usize, Vec<u8>, bool), String> {
    let (w, h, channels, buf) = decode_png_pixels(r, max_side)?;
    let alpha = channels == 2 || channels == 4;
    let gray = buf
        .chunks_exact(channels)
        .map(|px| match channels {
            2 | 4 => px[channels - 1],
            1 => px[0],
            _ => ((px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000) >> 16) as u8,
        })
        .collect();
    Ok((w, h, gray, alpha))
}

/// Reads an inpainting mask PNG ([`decode_png_mask`]): (width, height, gray, from alpha).
pub fn read_mask_gray8(path: &Path) -> Result<(usize, usize, Vec<u8>, bool)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open mask: {e}")))?;
    decode_png_mask(std::io::BufReader::new(file), SizeRule::DEFAULT_MAX).map_err(|m| Error::file(path, m))
}

/// A PNG's 8-bit pixels as stored (after palette expansion and 16-bit stripping): (width, height,
/// channels 1..=4, samples).
fn decode_png_pixels(
    r: impl std::io::BufRead + std::io::Seek,
    max_side: usize,
) -> std::result::Result<(usize, usize, usize, Vec<u8>), String> {
    let mut dec = png::Decoder::new(r);
    // Bounds the decoder's own allocations too (metadata chunks can claim any size).
    dec.set_limits(png::Limits { bytes: 8 * max_side * max_side + (1 << 20) });
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| format!("not a PNG image: {e}"))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if w > max_side || h > max_side {
        return Err(format!("image is {w}x{h}; img2img takes at most {max_side} pixels per side"));
    }
    // The png crate (0.18.1) accepts a PLTE whose length is not a whole number of RGB entries, then
    // indexes past its end while expanding it (a panic, found by fuzzing): refuse it here.
    if let Some(palette) = reader.info().palette.as_deref().filter(|p| p.len() % 3 != 0) {
        return Err(format!(
            "bad PNG data: the PLTE chunk is {} bytes, not a whole number of RGB entries",
            palette.len()
        ));
    }
    let mut buf = vec![0; reader.output_buffer_size().ok_or("bad PNG data: image too large")?];
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
    Ok((w, h, channels, buf))
}

/// Reads a PNG written by [`write_png`]: (width, height, rgb, parameters).
pub fn read_png(path: &Path) -> Result<(usize, usize, Vec<u8>, Option<String>)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| Error::file(path, format!("not a PNG: {e}")))?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf).map_err(|e| Error::file(path, format!("bad PNG data: {e}")))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(Error::file(path, format!("expected 8-bit RGB, got {:?} {:?}", info.color_type, info.bit_depth)));
    }
    buf.truncate(info.buffer_size());
    let info = reader.info();
    let params = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| info.utf8_text.iter().find(|t| t.keyword == "parameters").and_then(|t| t.get_text().ok()));
    Ok((info.width as usize, info.height as usize, buf, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering() {
        assert_eq!(numbered_paths(Path::new("out.png"), 1), [PathBuf::from("out.png")]);
        assert_eq!(
            numbered_paths(Path::new("d/out.png"), 2),
            [PathBuf::from("d/out-0.png"), PathBuf::from("d/out-1.png")]
        );
    }

    #[test]
    fn png_round_trip_keeps_pixels_and_parameters() {
        let dir = std::env::temp_dir().join(format!("lcm-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.png");
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        write_png(&p, 4, 3, &rgb, "prompt: a cat").unwrap();
        let (w, h, data, params) = read_png(&p).unwrap();
        assert_eq!((w, h, data), (4, 3, rgb));
        assert_eq!(params.as_deref(), Some("prompt: a cat"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_folder_is_an_error_and_writes_nothing() {
        let err = write_png(Path::new("/no/such/dir/x.png"), 1, 1, &[0, 0, 0], "").unwrap_err().to_string();
        assert!(err.contains("/no/such/dir") && err.contains("does not exist"), "{err}");
    }
}
