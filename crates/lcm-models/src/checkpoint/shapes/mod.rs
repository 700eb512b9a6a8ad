//! Component configs read from tensor shapes, for single-file checkpoints that come without a
//! `config.json` — what diffusers' `from_single_file` gets from the original LDM yaml and what
//! stable-diffusion.cpp reads from the tensors. Each function returns the config as diffusers would
//! write it (a JSON object), so the result goes through the same parser as a folder's config and a
//! test can compare it with one.
//!
//! Shapes give channel widths, resnets and transformer layers per level, the context width, the
//! projection kind, the guidance-embedding width, the VAE's widths and the text encoder's sizes.
//! They do not give head counts or GroupNorm groups: those are the families' (SD1.5's 8 UNet heads,
//! SD2's and SDXL's 64-wide UNet heads, 64-wide text-encoder heads as CLIP-L's 12 × 64, 32 groups), and
//! `--config` overrides them for anything else.

pub(crate) mod unet;

use std::path::Path;

use lcm_core::{Error, Result, SafeTensorsFile};
use serde_json::{json, Value};

/// SD1.5's UNet reads `attention_head_dim: 8` as 8 heads at every level.
const SD15_UNET_HEADS: usize = 8;
/// SD2's and SDXL's UNets (and SSD-1B's, Vega's) use 64-wide heads: `attention_head_dim` [5, 10, 20, 20]
/// and [5, 10, 20] at 320, 640 and 1280 channels.
const WIDE_UNET_HEAD_WIDTH: usize = 64;

/// How a family's UNet splits its attention into heads, which the shapes do not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnetHeads {
    /// SD1.5's [`SD15_UNET_HEADS`] at every level.
    Sd15,
    /// SD2's 64-wide heads (SDXL's UNets, told apart by their added embedding, always have them).
    Sd2,
}
/// CLIP ViT-L/14's text tower (and every OpenCLIP one) uses 64-wide heads.
const CLIP_HEAD_WIDTH: usize = 64;
/// GroupNorm groups in every SD UNet and VAE.
const SD_NORM_GROUPS: usize = 32;

/// Tensor shapes by file key: a weight file, or (in tests) a table of shapes alone.
pub(crate) trait Shapes {
    fn shape_of(&self, key: &str) -> Option<&[usize]>;
    fn path(&self) -> &Path;
}

impl Shapes for SafeTensorsFile {
    fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.shape(key)
    }

    fn path(&self) -> &Path {
        SafeTensorsFile::path(self)
    }
}

/// One component's tensors in a file: names as the component uses them, mapped to file keys.
pub(crate) struct View<'a> {
    pub file: &'a dyn Shapes,
    pub key: &'a dyn Fn(&str) -> Option<String>,
    /// "the UNet", "the VAE", "the text encoder" (for messages).
    pub what: &'a str,
}

impl View<'_> {
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        (self.key)(name).and_then(|k| self.file.shape_of(&k))
    }

    pub fn has(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    fn full(&self, name: &str) -> String {
        (self.key)(name).unwrap_or_else(|| name.to_string())
    }

    /// The shape of `name`, which must exist with `dims` dimensions.
    pub fn need(&self, name: &str, dims: usize) -> Result<&[usize]> {
        match self.shape(name) {
            Some(s) if s.len() == dims => Ok(s),
            Some(s) => Err(self.err(name, format!("has shape {s:?}, expected {dims} dimensions"))),
            None => Err(self.err(name, format!("missing; {} needs it to read its architecture", self.what))),
        }
    }

    pub fn err(&self, name: &str, msg: impl Into<String>) -> Error {
        Error::tensor(self.path(), self.full(name), msg)
    }
}

/// CLIPTextModel's config from HF names (`text_model.…`). The head count is the width over 64.
pub(crate) fn clip_config(v: &View) -> Result<Value> {
    let token = v.need("text_model.embeddings.token_embedding.weight", 2)?;
    let (vocab_size, hidden) = (token[0], token[1]);
    let positions = v.need("text_model.embeddings.position_embedding.weight", 2)?[0];
    let layers = (0..).take_while(|l| v.has(&format!("text_model.encoder.layers.{l}.mlp.fc1.weight"))).count();
    if layers == 0 {
        return Err(v.err("text_model.encoder.layers.0.mlp.fc1.weight", "missing: the text encoder has no layers"));
    }
    let intermediate = v.need("text_model.encoder.layers.0.mlp.fc1.weight", 2)?[0];
    if hidden % CLIP_HEAD_WIDTH != 0 {
        return Err(v.err(
            "text_model.embeddings.token_embedding.weight",
            format!(
                "the text encoder is {hidden} wide, not a multiple of CLIP's {CLIP_HEAD_WIDTH}-wide heads, so its head \
                 count cannot be read from the shapes; pass --config DIR with a text_encoder/config.json"
            ),
        ));
    }
    Ok(json!({
        "architectures": ["CLIPTextModel"],
        "hidden_act": "quick_gelu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": positions,
        "num_attention_heads": hidden / CLIP_HEAD_WIDTH,
        "num_hidden_layers": layers,
        "vocab_size": vocab_size,
    }))
}

/// SDXL's second text encoder's config (a CLIPTextModelWithProjection, as transformers would write
/// it) from OpenCLIP's own names (`token_embedding.weight`, `transformer.resblocks.N.…`,
/// `text_projection` `[hidden, projection]`): gelu, 64-wide heads, and the legacy `eos_token_id` 2
/// of SDXL's `text_encoder_2/config.json` (the pooled token is the largest id, the end of text).
pub(crate) fn open_clip_config(v: &View) -> Result<Value> {
    let (mut cfg, hidden) = open_clip_tower(v, "text_encoder_2")?;
    let projection = v.need("text_projection", 2)?;
    if projection[0] != hidden {
        return Err(v.err("text_projection", format!("has shape {projection:?}, expected [{hidden}, projection]")));
    }
    cfg["architectures"] = json!(["CLIPTextModelWithProjection"]);
    cfg["projection_dim"] = json!(projection[1]);
    Ok(cfg)
}

/// SD2's text encoder's config (a CLIPTextModel, as stable-diffusion-2-1's `text_encoder/config.json`)
/// from OpenCLIP's own names: [`open_clip_config`]'s sizes with one layer fewer than the file holds —
/// LDM's FrozenOpenCLIPEmbedder conditions SD2 on the penultimate layer (then `ln_final`), and
/// diffusers' `convert_open_clip_checkpoint` drops the last layer — and no projection (the file's
/// `text_projection` serves OpenCLIP's image-text loss, not SD2).
pub(crate) fn sd2_text_config(v: &View) -> Result<Value> {
    let (mut cfg, _) = open_clip_tower(v, "text_encoder")?;
    let layers = cfg["num_hidden_layers"].as_u64().unwrap_or(0);
    if layers < 2 {
        return Err(v.err(
            "transformer.resblocks.1.mlp.c_fc.weight",
            "missing: an SD2 text encoder conditions on its penultimate layer, so the file holds at least two",
        ));
    }
    cfg["architectures"] = json!(["CLIPTextModel"]);
    cfg["num_hidden_layers"] = json!(layers - 1);
    Ok(cfg)
}

/// The sizes of an OpenCLIP text tower read from its names, as a CLIPTextConfig (gelu, 64-wide heads,
/// the legacy bos/eos/pad ids 0/2/1 of SD2's and SDXL's configs), every layer of the file counted;
/// and its width. `component`: the config folder's component that would say what the shapes cannot.
fn open_clip_tower(v: &View, component: &str) -> Result<(Value, usize)> {
    let token = v.need("token_embedding.weight", 2)?;
    let (vocab_size, hidden) = (token[0], token[1]);
    let positions = v.need("positional_embedding", 2)?[0];
    let layers = (0..).take_while(|l| v.has(&format!("transformer.resblocks.{l}.mlp.c_fc.weight"))).count();
    if layers == 0 {
        return Err(v.err("transformer.resblocks.0.mlp.c_fc.weight", "missing: the text encoder has no layers"));
    }
    let intermediate = v.need("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
    if hidden % CLIP_HEAD_WIDTH != 0 {
        return Err(v.err(
            "token_embedding.weight",
            format!(
                "the text encoder is {hidden} wide, not a multiple of OpenCLIP's {CLIP_HEAD_WIDTH}-wide heads; pass \
                 --config DIR with a {component}/config.json"
            ),
        ));
    }
    let cfg = json!({
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": positions,
        "num_attention_heads": hidden / CLIP_HEAD_WIDTH,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "vocab_size": vocab_size,
    });
    Ok((cfg, hidden))
}

/// AutoencoderKL's config from diffusers names (the view maps them to the file's layout), with
/// `levels` blocks (counted by the caller in the file's own layout). The scaling factor is not in
/// the weights: it is the latent space's, given by the caller.
pub(crate) fn vae_config(v: &View, levels: usize, scaling_factor: f32, shift_factor: Option<f32>) -> Result<Value> {
    if levels == 0 {
        return Err(v.err("decoder.up_blocks.0.resnets.0.conv1.weight", "missing: the VAE decoder has no blocks"));
    }
    let conv_in = v.need("decoder.conv_in.weight", 4)?;
    let latent_channels = conv_in[1];
    let widths = (0..levels)
        .map(|i| v.need(&format!("decoder.up_blocks.{}.resnets.0.conv2.weight", levels - 1 - i), 4).map(|s| s[0]))
        .collect::<Result<Vec<_>>>()?;
    let resnets = (0..).take_while(|j| v.has(&format!("decoder.up_blocks.0.resnets.{j}.conv1.weight"))).count();
    if resnets < 2 {
        return Err(
            v.err("decoder.up_blocks.0.resnets.1.conv1.weight", "missing: a VAE up block has at least two resnets")
        );
    }
    let out_channels = v.need("decoder.conv_out.weight", 4)?[0];
    let in_channels = v.shape("encoder.conv_in.weight").map_or(3, |s| s[1]);
    let mut cfg = json!({
        "_class_name": "AutoencoderKL",
        "in_channels": in_channels,
        "out_channels": out_channels,
        "latent_channels": latent_channels,
        "block_out_channels": widths,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "layers_per_block": resnets - 1,
        "norm_num_groups": SD_NORM_GROUPS,
        "scaling_factor": scaling_factor,
        "use_quant_conv": v.has("quant_conv.weight"),
        "use_post_quant_conv": v.has("post_quant_conv.weight"),
        "mid_block_add_attention": v.has("decoder.mid_block.attentions.0.to_q.weight"),
    });
    if let Some(s) = shift_factor {
        cfg["shift_factor"] = json!(s);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    //! SD1.5 at full size, as shapes alone (a file would be 2 GB): its own configs must come back.

    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;
    use crate::arch::clip::{ClipConfig, ClipOutput};
    use crate::arch::unet::UnetConfig;
    use crate::arch::vae::VaeConfig;
    use crate::arch::{sd15, sd2, sdxl};
    use crate::checkpoint::ldm::{vae_ldm_is_conv, vae_to_ldm, UnetLayout};
    use crate::checkpoint::open_clip::open_clip_key;

    struct Table(HashMap<String, Vec<usize>>, PathBuf);

    impl Shapes for Table {
        fn shape_of(&self, key: &str) -> Option<&[usize]> {
            self.0.get(key).map(Vec::as_slice)
        }
        fn path(&self) -> &Path {
            &self.1
        }
    }

    fn same<T: std::fmt::Debug>(a: T, b: T) {
        assert_eq!(format!("{a:#?}"), format!("{b:#?}"));
    }

    #[test]
    fn sd15_unet_from_its_ldm_shapes() {
        let cfg = UnetConfig::from_json(Path::new("sd15"), sd15::UNET_CONFIG).unwrap();
        let layout = UnetLayout::from_config(&cfg);
        let shapes = cfg.weights().unwrap().into_iter().map(|w| {
            let ldm = layout.to_ldm(&w.name).unwrap();
            (ldm, w.shape)
        });
        let table = Table(shapes.collect(), PathBuf::from("sd15.safetensors"));
        let key = |n: &str| Some(n.to_string());
        let json =
            unet::unet_config(&View { file: &table, key: &key, what: "the UNet" }, None, UnetHeads::Sd15).unwrap();
        // sample_size (a default image size) is no shape: the file cannot say it.
        same(UnetConfig::parse_value(Path::new("x"), json).unwrap(), UnetConfig { sample_size: None, ..cfg });
    }

    /// SDXL's and an SSD-1B-shaped UNet (per-layer depths, its own up path, a resnet-only mid block)
    /// come back from their LDM shapes, with the pooled width text_encoder_2 gives.
    #[test]
    fn sdxl_and_ssd_unets_from_their_ldm_shapes() {
        for (name, json) in [("sdxl", sdxl::UNET_CONFIG), ("ssd-1b", sdxl::SSD_1B_UNET_CONFIG)] {
            let cfg = UnetConfig::from_json(Path::new(name), json).unwrap();
            let layout = UnetLayout::from_config(&cfg);
            let shapes = cfg.weights().unwrap().into_iter().map(|w| (layout.to_ldm(&w.name).unwrap(), w.shape));
            let table = Table(shapes.collect(), PathBuf::from(format!("{name}.safetensors")));
            let key = |n: &str| Some(n.to_string());
            let view = View { file: &table, key: &key, what: "the UNet" };
            // SDXL's 64-wide heads whatever family rule the caller gives: its added embedding says SDXL.
            let json = unet::unet_config(&view, Some(1280), UnetHeads::Sd15).unwrap();
            same(UnetConfig::parse_value(Path::new("x"), json).unwrap(), UnetConfig { sample_size: None, ..cfg });
            let err = unet::unet_config(&view, None, UnetHeads::Sd15).unwrap_err().to_string();
            assert!(err.contains("label_emb.0.0.weight") && err.contains("second text encoder"), "{err}");
        }
        let te2 = ClipConfig::from_json(Path::new("sdxl"), sdxl::TEXT_ENCODER_2_CONFIG, 0).unwrap();
        let specs = te2.clone().with_output(ClipOutput::Penultimate).weights().unwrap();
        let p = "m.";
        let shapes = specs.into_iter().map(|w| {
            let k = open_clip_key(p, &w.name).unwrap();
            let shape = k.file_shape(&w.shape).into_owned();
            (k.key, shape)
        });
        let table = Table(shapes.collect(), PathBuf::from("sdxl.safetensors"));
        let key = |n: &str| Some(format!("{p}{n}"));
        let json = open_clip_config(&View { file: &table, key: &key, what: "the second text encoder" }).unwrap();
        same(ClipConfig::parse_value(Path::new("x"), json, 0).unwrap(), te2);
    }

    /// SD2.1's UNet (64-wide heads, the SD1.5 block structure) and its text encoder from OpenCLIP-H's
    /// 24 layers (23 kept), at full size.
    #[test]
    fn sd2_unet_and_text_encoder_from_their_ldm_shapes() {
        let cfg = UnetConfig::from_json(Path::new("sd2"), sd2::UNET_CONFIG).unwrap();
        let layout = UnetLayout::from_config(&cfg);
        let shapes = cfg.weights().unwrap().into_iter().map(|w| (layout.to_ldm(&w.name).unwrap(), w.shape));
        let table = Table(shapes.collect(), PathBuf::from("sd2.safetensors"));
        let key = |n: &str| Some(n.to_string());
        let view = View { file: &table, key: &key, what: "the UNet" };
        let json = unet::unet_config(&view, None, UnetHeads::Sd2).unwrap();
        same(UnetConfig::parse_value(Path::new("x"), json).unwrap(), UnetConfig { sample_size: None, ..cfg.clone() });
        // SD1.5's rule would give 8 heads: the family decides.
        let json = unet::unet_config(&view, None, UnetHeads::Sd15).unwrap();
        assert_eq!(UnetConfig::parse_value(Path::new("x"), json).unwrap().heads, [8; 4]);

        let te = ClipConfig::from_json(Path::new("sd2"), sd2::TEXT_ENCODER_CONFIG, 0).unwrap();
        let file_te = ClipConfig { layers: te.layers + 1, ..te.clone() }; // OpenCLIP-H's 24
        let p = "cond_stage_model.model.";
        let shapes = file_te.weights().unwrap().into_iter().map(|w| {
            let k = open_clip_key(p, &w.name).unwrap();
            let shape = k.file_shape(&w.shape).into_owned();
            (k.key, shape)
        });
        let table = Table(shapes.collect(), PathBuf::from("sd2.safetensors"));
        let key = |n: &str| Some(format!("{p}{n}"));
        let json = sd2_text_config(&View { file: &table, key: &key, what: "the text encoder" }).unwrap();
        same(ClipConfig::parse_value(Path::new("x"), json, 0).unwrap(), te);
    }

    #[test]
    fn sd15_vae_and_text_encoder_from_their_shapes() {
        let cfg = VaeConfig::from_json(Path::new("sd15"), sd15::VAE_CONFIG).unwrap();
        let specs = cfg.decoder_weights().unwrap().into_iter().chain(cfg.encoder_weights().unwrap());
        let shapes = specs.map(|w| {
            let ldm = vae_to_ldm(&w.name, 4).unwrap();
            let conv = vae_ldm_is_conv(&ldm);
            (ldm, if conv { [w.shape, vec![1, 1]].concat() } else { w.shape })
        });
        let table = Table(shapes.collect(), PathBuf::from("vae.safetensors"));
        let key = |n: &str| vae_to_ldm(n, 4);
        let json = vae_config(&View { file: &table, key: &key, what: "the VAE" }, 4, 0.18215, None).unwrap();
        // sample_size (the tile size) is no shape: the file cannot say it.
        same(VaeConfig::parse_value(Path::new("x"), json).unwrap(), VaeConfig { sample_size: None, ..cfg });

        let clip = ClipConfig::from_json(Path::new("sd15"), sd15::TEXT_ENCODER_CONFIG, 0).unwrap();
        let shapes = clip.weights().unwrap().into_iter().map(|w| (w.name, w.shape));
        let table = Table(shapes.collect(), PathBuf::from("clip.safetensors"));
        let key = |n: &str| Some(n.to_string());
        let json = clip_config(&View { file: &table, key: &key, what: "the text encoder" }).unwrap();
        same(ClipConfig::parse_value(Path::new("x"), json, 0).unwrap(), clip);
    }
}
