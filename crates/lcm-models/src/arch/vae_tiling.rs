//! Tiled VAE decoding and encoding, as diffusers' `AutoencoderKL.enable_tiling()` computes it (and
//! [`Vae::encode`], which tiles when asked to): the input is cut into overlapping square tiles, each
//! tile runs through the decoder (or encoder) alone, and each result is blended linearly into its
//! upper and left neighbours over a quarter of a tile.
//! Memory is then bounded by one tile's arena (plus the smaller edge tiles' arenas: one executor per
//! tile shape), whatever the image size; the result differs from an untiled run (GroupNorm sees one
//! tile's statistics), exactly as diffusers' does.
//!
//! diffusers' geometry, for a tile of `tile` pixels and `tile / s` latents (s = the VAE's downscale):
//! tiles start every ¾ tile; a result tile of size `n` is blended over `n / 4` rows and columns and
//! cropped to `n - n / 4`. Blending is done in place, so a tile blends with neighbours that were
//! themselves already blended; only the previous row of tiles is kept.

use lcm_core::{Backend, Error, Result, Tensor};

use crate::arch::vae::{Encoded, Vae, VaeArch, VaeConfig};

/// Tiled VAE calls with square tiles of `tile` pixels (diffusers' `tile_sample_min_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    /// The tile's side in pixels: a multiple of 4·downscale.
    pub tile: usize,
}

impl VaeTiling {
    /// The setting's name in errors about tiling itself (a front end maps it onto its own: the CLI's
    /// `--vae-tiling`; lcm-pipeline's `Field::VaeTiling`).
    pub const FIELD: &'static str = "vae_tiling";
    /// The setting's name in errors about an explicit tile size (the CLI's `--vae-tile-size`).
    pub const TILE_SIZE_FIELD: &'static str = "vae_tile_size";

    /// Tiles of `tile` pixels, or of the config's [`VaeConfig::tile_size`] (diffusers' default). The
    /// size must be a multiple of 4·downscale (32 for SD): then a latent tile has a whole quarter, tile
    /// starts fall on latent pixels, and the cropped results add up to the image exactly.
    pub fn new(config: &VaeConfig, tile: Option<usize>) -> Result<VaeTiling> {
        if !matches!(config.arch, VaeArch::Kl) {
            return Err(Error::invalid(
                Self::FIELD,
                "tiling is AutoencoderKL's (diffusers' enable_vae_tiling); this VAE is TAESD (AutoencoderTiny), \
                 whose activations are small enough to decode whole",
            ));
        }
        let (tile, what) = match tile {
            Some(t) => (t, Self::TILE_SIZE_FIELD),
            None => (config.tile_size(), "the VAE config's sample_size (the default tile size)"),
        };
        let unit = 4 * config.downscale();
        if tile == 0 || tile % unit != 0 {
            return Err(Error::invalid(
                what,
                format!("{tile} pixels; tiling needs a positive multiple of {unit} (4 x the VAE's downscale)"),
            ));
        }
        Ok(VaeTiling { tile })
    }

    fn latent_tile(&self, config: &VaeConfig) -> usize {
        self.tile / config.downscale()
    }
}

impl<B: Backend> Vae<B> {
    /// The encoder's output for an image: [`Encoded::Moments`] or, for TAESD, [`Encoded::Latents`]
    /// (see [`Self::encode_moments`]).
    pub fn encode(&mut self, backend: &B, image: &Tensor, tiling: Option<VaeTiling>) -> Result<Encoded> {
        let out = match tiling {
            Some(t) => self.encode_moments_tiled(backend, image, t)?,
            None => self.encode_moments(backend, image)?,
        };
        Ok(match self.config.arch {
            VaeArch::Kl => Encoded::Moments(out),
            VaeArch::Tiny(_) => Encoded::Latents(out),
        })
    }

    /// [`Vae::decode`] with tiling: latents larger than one latent tile on either side are decoded
    /// tile by tile and blended (diffusers' `tiled_decode`); smaller ones in one call.
    pub fn decode_tiled(&mut self, backend: &B, z: &Tensor, tiling: VaeTiling) -> Result<Tensor> {
        let tile = tiling.latent_tile(&self.config);
        let [_, _, h, w] = dims(z, "vae latents")?;
        if h <= tile && w <= tile {
            return self.decode(backend, z);
        }
        let s = self.config.downscale();
        tiled(z, tile, |n| n * s, |t| self.decode(backend, t))
    }

    /// [`Vae::encode_moments`] with tiling: an image larger than one tile on either side is encoded
    /// tile by tile and the moments blended (diffusers' `_tiled_encode`); a smaller one in one call.
    pub fn encode_moments_tiled(&mut self, backend: &B, image: &Tensor, tiling: VaeTiling) -> Result<Tensor> {
        let [_, _, h, w] = dims(image, "vae image")?;
        if h <= tiling.tile && w <= tiling.tile {
            return self.encode_moments(backend, image);
        }
        let s = self.config.downscale();
        if h % s != 0 || w % s != 0 {
            // encode_moments names the shape rule; a tile would hide which side broke it.
            return self.encode_moments(backend, image);
        }
        tiled(image, tiling.tile, |n| n / s, |t| self.encode_moments(backend, t))
    }
}

fn dims(t: &Tensor, what: &str) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape.as_slice())
        .map_err(|_| Error::invalid(what, format!("shape {:?}, expected [B, C, H, W]", t.shape)))
}

/// Runs `f` on the overlapping `tile`-sized tiles of NCHW `x` (row by row, left to right) and blends
/// the results into one NCHW tensor. `out_len` maps an input length to its result length.
fn tiled(
    x: &Tensor,
    tile: usize,
    out_len: impl Fn(usize) -> usize,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let [b, _, h, w] = dims(x, "tiled input")?;
    let step = 3 * tile / 4; // int(tile · (1 - 0.25)), exact for integers
    let tile_out = out_len(tile);
    let blend = tile_out / 4;
    let keep = tile_out - blend;
    let starts = |n: usize| (0..n).step_by(step).collect::<Vec<_>>();
    let (ys, xs) = (starts(h), starts(w));
    let kept = |n: usize, at: usize| out_len((n - at).min(tile)).min(keep);
    let out_h: usize = ys.iter().map(|&i| kept(h, i)).sum();
    let out_w: usize = xs.iter().map(|&j| kept(w, j)).sum();

    let mut out: Option<Tensor> = None;
    let mut above: Vec<Tensor> = Vec::new();
    let mut oy = 0;
    for &i in &ys {
        let mut row: Vec<Tensor> = Vec::with_capacity(xs.len());
        let mut ox = 0;
        for (col, &j) in xs.iter().enumerate() {
            let mut t = f(&crop(x, i, tile, j, tile))?;
            if let Some(a) = above.get(col) {
                blend_rows(a, &mut t, blend);
            }
            if let Some(l) = row.last() {
                blend_cols(l, &mut t, blend);
            }
            let o = out.get_or_insert_with(|| Tensor::zeros(vec![b, t.shape[1], out_h, out_w]));
            paste(o, &t, oy, ox, keep);
            ox += t.shape[3].min(keep);
            row.push(t);
        }
        oy += row[0].shape[2].min(keep);
        above = row;
    }
    Ok(out.expect("an image has at least one tile"))
}

/// `x[:, :, y..y+th, x..x+tw]`, clipped at the edges.
fn crop(t: &Tensor, y0: usize, th: usize, x0: usize, tw: usize) -> Tensor {
    let [b, c, h, w] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
    let (th, tw) = (th.min(h - y0), tw.min(w - x0));
    let mut data = Vec::with_capacity(b * c * th * tw);
    for plane in t.data.chunks_exact(h * w) {
        for y in y0..y0 + th {
            data.extend_from_slice(&plane[y * w + x0..y * w + x0 + tw]);
        }
    }
    Tensor::new(vec![b, c, th, tw], data)
}

/// Writes `t[:, :, :keep, :keep]` into `out` at (`y0`, `x0`).
fn paste(out: &mut Tensor, t: &Tensor, y0: usize, x0: usize, keep: usize) {
    let (oh, ow) = (out.shape[2], out.shape[3]);
    let (th, tw) = (t.shape[2], t.shape[3]);
    let (kh, kw) = (th.min(keep), tw.min(keep));
    for (dst, src) in out.data.chunks_exact_mut(oh * ow).zip(t.data.chunks_exact(th * tw)) {
        for y in 0..kh {
            dst[(y0 + y) * ow + x0..(y0 + y) * ow + x0 + kw].copy_from_slice(&src[y * tw..y * tw + kw]);
        }
    }
}

/// diffusers' `blend_v`: the first rows of `b` fade in from the last rows of `a` (the tile above).
fn blend_rows(a: &Tensor, b: &mut Tensor, extent: usize) {
    let (ah, bh, w) = (a.shape[2], b.shape[2], b.shape[3]);
    let e = extent.min(ah).min(bh);
    for (pa, pb) in a.data.chunks_exact(ah * w).zip(b.data.chunks_exact_mut(bh * w)) {
        for y in 0..e {
            let (ka, kb) = weights(y, e);
            let src = &pa[(ah - e + y) * w..(ah - e + y + 1) * w];
            for (v, &u) in pb[y * w..(y + 1) * w].iter_mut().zip(src) {
                *v = u * ka + *v * kb;
            }
        }
    }
}

/// diffusers' `blend_h`: the first columns of `b` fade in from the last columns of `a` (the tile to
/// the left).
fn blend_cols(a: &Tensor, b: &mut Tensor, extent: usize) {
    let (aw, bw, h) = (a.shape[3], b.shape[3], b.shape[2]);
    let e = extent.min(aw).min(bw);
    for (pa, pb) in a.data.chunks_exact(h * aw).zip(b.data.chunks_exact_mut(h * bw)) {
        for y in 0..h {
            for x in 0..e {
                let (ka, kb) = weights(x, e);
                let v = &mut pb[y * bw + x];
                *v = pa[y * aw + aw - e + x] * ka + *v * kb;
            }
        }
    }
}

/// The weights of the neighbour and of the tile at offset `i` of a blend over `e`: torch computes
/// `1 - i/e` and `i/e` as Python floats and multiplies f32 tensors by them as f32.
fn weights(i: usize, e: usize) -> (f32, f32) {
    let t = i as f64 / e as f64;
    ((1.0 - t) as f32, t as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the identity as the "model", tiling must give back the input wherever tiles do not
    /// overlap and a convex blend of equal values where they do: the input itself.
    #[test]
    fn identity_tiles_reassemble_the_input() {
        let (h, w) = (23, 37);
        let x = Tensor::new(vec![2, 3, h, w], (0..2 * 3 * h * w).map(|i| (i % 97) as f32).collect());
        let y = tiled(&x, 8, |n| n, |t| Ok(t.clone())).unwrap();
        assert_eq!(y.shape, x.shape);
        for (a, b) in x.data.iter().zip(&y.data) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// A "model" that doubles the size: the output is exactly twice the input's size.
    #[test]
    fn upscaling_tiles_cover_the_output() {
        let x = Tensor::new(vec![1, 1, 10, 13], vec![1.0; 130]);
        let up = |t: &Tensor| {
            let [b, c, h, w] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
            Ok(Tensor::new(vec![b, c, 2 * h, 2 * w], vec![1.0; b * c * 4 * h * w]))
        };
        let y = tiled(&x, 4, |n| 2 * n, up).unwrap();
        assert_eq!(y.shape, vec![1, 1, 20, 26]);
        assert!(y.data.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }
}
