//! The ControlNet flags `generate` and `frames` share, and the [`ControlUnit`]s they turn into: which
//! ControlNets, their control images (read, preprocessed, resized to the output), scales and windows.

use std::path::{Path, PathBuf};

use clap::Args;
use lcm_core::{Error, Result};
use lcm_pipeline::control_image::ControlPreprocess;
use lcm_pipeline::output::read_image_rgb8;
use lcm_pipeline::spec::{ControlUnit, SizeRule, MAX_CONTROLNETS};

/// ControlNet: structure-guided generation (diffusers' ControlNet pipelines, A1111's ControlNet).
#[derive(Args, Debug, Default, Clone)]
pub struct ControlArgs {
    /// A ControlNet: a diffusers folder (config.json + diffusion_pytorch_model[.fp16].safetensors) or a
    /// single .safetensors file in the original names (control_model.*, as A1111's ControlNet extension
    /// ships control_v11p_sd15_canny.safetensors), of the model's family, with an optional conditioning
    /// scale [default: 1, or 0.8 with --image, as diffusers]. Repeat for several (MultiControlNet:
    /// their residuals are summed); each pairs with the --control-image of the same position.
    #[arg(long = "controlnet", value_name = "PATH[:SCALE]", value_parser = parse_controlnet)]
    pub controlnets: Vec<(PathBuf, Option<f32>)>,
    /// The control image of each --controlnet, in the same order (an edge map, a depth map, a pose…, or a
    /// photo with --control-preprocess). An image of another size than the output is resized to it with
    /// Lanczos, as diffusers does; without --width/--height (and --image) the output takes the first
    /// control image's size, rounded down to multiples of 8.
    #[arg(long = "control-image", value_name = "FILE.png")]
    pub images: Vec<PathBuf>,
    /// control_guidance_start: the ControlNet starts at this fraction of the steps run, in [0, 1)
    /// [default: 0]. One value for every --controlnet, or one each.
    #[arg(long = "control-start", value_name = "F")]
    pub start: Vec<f64>,
    /// control_guidance_end: the ControlNet stops after this fraction of the steps run, in (start, 1]
    /// [default: 1]. One value for every --controlnet, or one each.
    #[arg(long = "control-end", value_name = "F")]
    pub end: Vec<f64>,
    /// Turn each control image into a control map first: none, or canny[:LOW:HIGH] (OpenCV's Canny edge
    /// detector on the RGB image, thresholds 100:200 by default as A1111's). One for every
    /// --controlnet, or one each.
    #[arg(long = "control-preprocess", value_name = "none|canny[:LOW:HIGH]", value_parser = parse_preprocess)]
    pub preprocess: Vec<ControlPreprocess>,
}

/// `--controlnet PATH[:SCALE]`: the scale follows the last ':' only when it parses as a number, so
/// paths with ':' still work.
fn parse_controlnet(s: &str) -> std::result::Result<(PathBuf, Option<f32>), String> {
    match s.rsplit_once(':') {
        Some((p, sc)) if !p.is_empty() => match sc.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok((PathBuf::from(p), Some(v))),
            Ok(_) => Err(format!("scale `{sc}` must be finite")),
            Err(_) => Ok((PathBuf::from(s), None)),
        },
        _ => Ok((PathBuf::from(s), None)),
    }
}

fn parse_preprocess(s: &str) -> std::result::Result<ControlPreprocess, String> {
    s.parse::<ControlPreprocess>().map_err(|e| e.to_string())
}

/// One value per ControlNet from a flag given once (for all) or once per ControlNet.
fn per_net<T: Copy>(flag: &str, given: &[T], n: usize, default: T) -> Result<Vec<T>> {
    match given.len() {
        0 => Ok(vec![default; n]),
        1 => Ok(vec![given[0]; n]),
        k if k == n => Ok(given.to_vec()),
        k => Err(Error::invalid(flag, format!("given {k} times for {n} --controlnet: give it once, or once each"))),
    }
}

/// A control image as read (and preprocessed): its size and RGB8 pixels.
pub struct ControlImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl ControlArgs {
    /// The checks that need no model: counts pair up, the ControlNets exist, the windows are valid.
    /// `images` is how many control images (or per-ControlNet folders) were given.
    pub fn check(&self, images_flag: &str, images: usize) -> Result<()> {
        let n = self.controlnets.len();
        if n == 0 {
            let stray = [("--control-start", self.start.len()), ("--control-end", self.end.len())]
                .into_iter()
                .chain([("--control-preprocess", self.preprocess.len()), (images_flag, images)])
                .find(|(_, k)| *k > 0);
            return match stray {
                Some((flag, _)) => Err(Error::invalid(flag, "given without --controlnet")),
                None => Ok(()),
            };
        }
        if n > MAX_CONTROLNETS {
            return Err(Error::invalid("--controlnet", format!("{n} given: at most {MAX_CONTROLNETS}")));
        }
        if images != n {
            return Err(Error::invalid(
                images_flag,
                format!("{images} given for {n} --controlnet: one each, paired by order"),
            ));
        }
        for (path, _) in &self.controlnets {
            if !path.exists() {
                return Err(Error::file(
                    path,
                    "--controlnet: not found (expected a ControlNet folder or .safetensors file)",
                ));
            }
        }
        per_net("--control-start", &self.start, n, 0.0)?;
        per_net("--control-end", &self.end, n, 1.0)?;
        per_net("--control-preprocess", &self.preprocess, n, ControlPreprocess::None)?;
        Ok(())
    }

    /// Reads control image `k` (of ControlNet k) from `path` and applies its preprocessing.
    pub fn read_image(&self, k: usize, path: &Path) -> Result<ControlImage> {
        let (width, height, rgb) = read_image_rgb8(path)?;
        let pre = per_net("--control-preprocess", &self.preprocess, self.controlnets.len(), ControlPreprocess::None)?;
        let rgb =
            pre[k].apply(&rgb, width, height).map_err(|e| Error::file(path, format!("--control-preprocess: {e}")))?;
        Ok(ControlImage { width, height, rgb })
    }

    /// The output size without --width/--height: the first control image's, rounded down to
    /// multiples of 8 (diffusers' `get_default_height_width`).
    pub fn default_size(first: &ControlImage, path: &Path) -> Result<(usize, usize)> {
        let m = SizeRule::MULTIPLE;
        let (w, h) = (first.width / m * m, first.height / m * m);
        if !SizeRule::default().accepts(w) || !SizeRule::default().accepts(h) {
            return Err(Error::file(
                path,
                format!(
                    "is {}x{}: too small or large to give the output size; pass --width and --height",
                    first.width, first.height
                ),
            ));
        }
        Ok((w, h))
    }

    /// The units for an output of `width`x`height`, with `images` in --controlnet order.
    pub fn units(
        &self,
        images: &[ControlImage],
        (width, height): (usize, usize),
        img2img: bool,
    ) -> Result<Vec<ControlUnit>> {
        let n = self.controlnets.len();
        let (start, end) =
            (per_net("--control-start", &self.start, n, 0.0)?, per_net("--control-end", &self.end, n, 1.0)?);
        self.controlnets
            .iter()
            .zip(images)
            .enumerate()
            .map(|(k, ((model, scale), img))| {
                Ok(ControlUnit {
                    model: model.clone(),
                    image: ControlUnit::image_at(img.width, img.height, &img.rgb, width, height)?,
                    scale: scale.unwrap_or(ControlUnit::default_scale(img2img)),
                    start: start[k],
                    end: end[k],
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controlnet_flag_takes_an_optional_scale() {
        assert_eq!(parse_controlnet("cn").unwrap(), (PathBuf::from("cn"), None));
        assert_eq!(parse_controlnet("c:n:0.5").unwrap(), (PathBuf::from("c:n"), Some(0.5)));
        assert_eq!(parse_controlnet("c:n").unwrap(), (PathBuf::from("c:n"), None));
        assert!(parse_controlnet("cn:nan").is_err());
    }

    #[test]
    fn per_controlnet_values_are_one_or_one_each() {
        assert_eq!(per_net("--x", &[], 2, 1.0).unwrap(), [1.0, 1.0]);
        assert_eq!(per_net("--x", &[0.5], 2, 1.0).unwrap(), [0.5, 0.5]);
        assert_eq!(per_net("--x", &[0.1, 0.2], 2, 1.0).unwrap(), [0.1, 0.2]);
        let e = per_net("--x", &[0.1, 0.2], 3, 1.0).unwrap_err().to_string();
        assert!(e.starts_with("--x: given 2 times for 3 --controlnet"), "{e}");
    }
}
