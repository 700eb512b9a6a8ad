//! Component configs read from tensor shapes, for single-file checkpoints that come without a
//! `config.json` — what diffusers' `from_single_file` gets from the original LDM yaml and what
//! stable-diffusion.cpp reads from the tensors. Each function returns the config as diffusers would
//! write it (a JSON object), so the result goes through the same parser as a folder's config and a
//! test can compare it with one.
//!
//! Shapes give channel widths, resnets and transformer layers per level, the context width, the
//! projection kind, the guidance-embedding width, the VAE's widths and the text encoder's sizes.
//! They do not give head counts or GroupNorm groups: those are the SD1.5 family's (8 UNet heads,
//! 64-wide text-encoder heads as CLIP-L's 12 × 64, 32 groups), and `--config` overrides them for
//! anything else.

use std::path::Path;

use lcm_core::{Error, Result, SafeTensorsFile};
use serde_json::{json, Value};

/// SD1.5's UNet reads `attention_head_dim: 8` as 8 heads at every level.
pub const SD15_UNET_HEADS: usize = 8;
/// SDXL's UNets (and SSD-1B's, Vega's) use 64-wide heads: `attention_head_dim` [5, 10, 20] at 320, 640
/// and 1280 channels.
pub const SDXL_UNET_HEAD_WIDTH: usize = 64;
/// CLIP ViT-L/14's text tower (and every OpenCLIP one) uses 64-wide heads.
pub const CLIP_HEAD_WIDTH: usize = 64;
/// GroupNorm groups in every SD UNet and VAE.
pub const SD_NORM_GROUPS: usize = 32;

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

struct Level {
    channels: usize,
    /// Transformer layers after each resnet; empty entries' `None`: a level without attention.
    depths: Vec<Option<usize>>,
}

/// The transformer depth in LDM slot `slot` (`input_blocks.N`, `output_blocks.N`, `middle_block`):
/// `None` without a transformer there.
fn slot_depth(v: &View, slot: &str) -> Option<usize> {
    v.has(&format!("{slot}.1.proj_in.weight"))
        .then(|| (0..).take_while(|t| v.has(&format!("{slot}.1.transformer_blocks.{t}.attn1.to_q.weight"))).count())
}

/// One block's depths as a config entry: an int when every layer has the same, else the list.
fn depth_entry(depths: &[usize]) -> Value {
    if depths.iter().all(|&d| d == depths[0]) {
        json!(depths[0])
    } else {
        json!(depths)
    }
}

/// UNet2DConditionModel's config from LDM names (`input_blocks.…`, relative to
/// `model.diffusion_model.`). The down path is walked slot by slot as LDM numbers it (see
/// [`crate::ldm::UnetLayout`]): a slot holds a resnet (`.0.in_layers.2`, its width) and maybe a
/// transformer (`.1`, its depth), or a downsampler (`.0.op`) that closes a level. The up path's and
/// the mid block's transformers are read too (SSD-1B and Segmind-Vega differ there). SDXL's added
/// embedding (`label_emb.0`) needs the pooled text width, `pooled_dim` (text_encoder_2's
/// projection): the rest of its input is six sinusoids of `addition_time_embed_dim`.
pub(crate) fn unet_config(v: &View, pooled_dim: Option<usize>) -> Result<Value> {
    let conv_in = v.need("input_blocks.0.0.weight", 4)?.to_vec();
    let in_channels = conv_in[1];
    match in_channels {
        4 => {}
        9 => {
            return Err(v.err(
                "input_blocks.0.0.weight",
                "has 9 input channels: an inpainting UNet (latents + mask + masked image); lcm runs \
                 text-to-image and image-to-image UNets with 4 input channels only",
            ))
        }
        8 => {
            return Err(v.err(
                "input_blocks.0.0.weight",
                "has 8 input channels: an InstructPix2Pix-style UNet (latents + image latents); lcm runs \
                 UNets with 4 input channels only",
            ))
        }
        n => return Err(v.err("input_blocks.0.0.weight", format!("has {n} input channels, expected 4"))),
    }
    let text_time = match (v.shape("label_emb.0.0.weight"), pooled_dim) {
        (None, _) => None,
        (Some(&[_, input]), Some(pooled)) if input > pooled && (input - pooled) % 6 == 0 => {
            Some((input, (input - pooled) / 6))
        }
        (Some(s), Some(pooled)) => {
            return Err(v.err(
                "label_emb.0.0.weight",
                format!("has shape {s:?}: its input is not {pooled} pooled text widths plus six time-id sinusoids"),
            ))
        }
        (Some(_), None) => return Err(v.err(
            "label_emb.0.0.weight",
            "is an added-condition embedding (SDXL's text_time, an SD2 upscaler's class embedding) in a checkpoint \
                 without SDXL's second text encoder",
        )),
    };
    let sdxl = text_time.is_some();

    let mut levels: Vec<Level> = Vec::new();
    let mut current: Option<Level> = None;
    let mut slot = 1;
    loop {
        if v.has(&format!("input_blocks.{slot}.0.op.weight")) {
            let level = current.take().ok_or_else(|| {
                v.err(&format!("input_blocks.{slot}.0.op.weight"), "is a downsampler with no resnet before it")
            })?;
            levels.push(level);
            slot += 1;
            continue;
        }
        let resnet = format!("input_blocks.{slot}.0.in_layers.2.weight");
        let Some(shape) = v.shape(&resnet) else { break };
        let channels = shape[0];
        let depth = slot_depth(v, &format!("input_blocks.{slot}"));
        match current.as_mut() {
            None => current = Some(Level { channels, depths: vec![depth] }),
            Some(l) if l.channels == channels && l.depths[0].is_some() == depth.is_some() => l.depths.push(depth),
            Some(l) => {
                return Err(v.err(
                    &resnet,
                    format!(
                        "({channels} channels, transformer layers {depth:?}) differs from the resnet before it in \
                         the same level ({} channels, {:?})",
                        l.channels, l.depths[0]
                    ),
                ))
            }
        }
        slot += 1;
    }
    levels.extend(current);
    if levels.is_empty() {
        return Err(v.err("input_blocks.1.0.in_layers.2.weight", "missing: the UNet has no down-path resnet"));
    }

    // The up path mirrors the down path with one resnet more per level (and may differ in depths).
    let up_slots: usize = levels.iter().map(|l| l.depths.len() + 1).sum();
    v.need(&format!("output_blocks.{}.0.in_layers.2.weight", up_slots - 1), 4)?;
    let extra = format!("output_blocks.{up_slots}.0.in_layers.2.weight");
    if v.has(&extra) {
        return Err(v.err(&extra, format!("is an up-path slot beyond the {up_slots} the down path implies")));
    }
    let mut up_slot = 0;
    let mut up_depths: Vec<Vec<usize>> = Vec::new();
    for l in levels.iter().rev() {
        let mut d = Vec::new();
        for _ in 0..=l.depths.len() {
            let depth = slot_depth(v, &format!("output_blocks.{up_slot}"));
            if depth.is_some() != l.depths[0].is_some() {
                let has = if depth.is_some() { "has" } else { "lacks" };
                return Err(v.err(
                    &format!("output_blocks.{up_slot}.1.proj_in.weight"),
                    format!("the up-path slot {has} a transformer where its mirrored down level does not"),
                ));
            }
            d.push(depth.unwrap_or(1));
            up_slot += 1;
        }
        up_depths.push(d);
    }
    // UNetMidBlock2DCrossAttn (resnet, transformer, resnet), UNetMidBlock2D as UNet2DConditionModel
    // builds it (one resnet: Segmind-Vega), or none.
    let mid_depth = slot_depth(v, "middle_block");
    let mid_block_type = match (mid_depth, v.has("middle_block.0.in_layers.2.weight")) {
        (Some(_), _) => json!("UNetMidBlock2DCrossAttn"),
        (None, true) => json!("UNetMidBlock2D"),
        (None, false) => Value::Null,
    };
    if !sdxl && mid_depth.is_none() {
        return Err(v.err(
            "middle_block.1.proj_in.weight",
            "missing: SD1.5-family UNets have a mid block with cross-attention (UNetMidBlock2DCrossAttn)",
        ));
    }

    let first_attn = (1..slot)
        .find(|s| v.has(&format!("input_blocks.{s}.1.proj_in.weight")))
        .ok_or_else(|| v.err("input_blocks.1.1.proj_in.weight", "missing: the UNet has no cross-attention"))?;
    let to_k = v.need(&format!("input_blocks.{first_attn}.1.transformer_blocks.0.attn2.to_k.weight"), 2)?;
    let cross_attention_dim = to_k[1];
    let proj_in = v.shape(&format!("input_blocks.{first_attn}.1.proj_in.weight")).unwrap_or_default();
    let use_linear_projection = proj_in.len() == 2;

    let c0 = conv_in[0];
    let time_embed = v.need("time_embed.0.weight", 2)?;
    let time_cond_proj_dim = match v.shape("time_embedding.cond_proj.weight") {
        None => None,
        Some(&[out, d]) if out == c0 => Some(d),
        Some(s) => {
            return Err(v.err(
                "time_embedding.cond_proj.weight",
                format!("has shape {s:?}, expected [{c0}, guidance embedding width]"),
            ))
        }
    };
    let conv_out = v.need("out.2.weight", 4)?;

    let channels: Vec<usize> = levels.iter().map(|l| l.channels).collect();
    // SD1.5: 8 heads everywhere; SDXL: 64-wide heads (attention_head_dim [5, 10, 20] read as heads).
    let (heads, rule) = if sdxl {
        (json!(channels.iter().map(|c| c / SDXL_UNET_HEAD_WIDTH).collect::<Vec<_>>()), "SDXL family's 64-wide heads")
    } else {
        (json!(SD15_UNET_HEADS), "SD1.5 family's 8 heads")
    };
    let splits = |c: usize| {
        c.is_multiple_of(SD_NORM_GROUPS)
            && if sdxl { c.is_multiple_of(SDXL_UNET_HEAD_WIDTH) } else { c.is_multiple_of(SD15_UNET_HEADS) }
    };
    if let Some(&bad) = channels.iter().find(|&&c| !splits(c)) {
        return Err(v.err(
            "input_blocks.1.0.in_layers.2.weight",
            format!(
                "a level is {bad} channels wide, which does not split into the {rule} and {SD_NORM_GROUPS} groups; \
                 pass --config DIR with this model's unet/config.json"
            ),
        ));
    }
    let cross = |l: &Level, down: bool| match (l.depths[0].is_some(), down) {
        (true, true) => "CrossAttnDownBlock2D",
        (false, true) => "DownBlock2D",
        (true, false) => "CrossAttnUpBlock2D",
        (false, false) => "UpBlock2D",
    };
    let per_level = |f: &dyn Fn(&Level) -> usize| -> Value {
        let vals: Vec<usize> = levels.iter().map(f).collect();
        if vals.iter().all(|&x| x == vals[0]) {
            json!(vals[0])
        } else {
            json!(vals)
        }
    };
    // Depths: per level when every layer agrees (SD1.5, SDXL), per layer otherwise (SSD-1B, Vega); the
    // up path explicitly when it is not the down path's levels mirrored.
    let down_depths: Vec<Vec<usize>> =
        levels.iter().map(|l| l.depths.iter().map(|d| d.unwrap_or(1)).collect()).collect();
    let down_entries: Vec<Value> = down_depths.iter().map(|d| depth_entry(d)).collect();
    let per_layer = down_entries.iter().any(Value::is_array);
    let mirrored = down_depths.iter().rev().zip(&up_depths).all(|(d, u)| u.iter().all(|&x| x == d[0]));
    let depth = if !per_layer && down_entries.iter().all(|e| *e == down_entries[0]) {
        down_entries[0].clone()
    } else {
        json!(down_entries)
    };
    let mid_from_config = down_depths.last().map_or(1, |d| d[0]);
    if let Some(m) = mid_depth.filter(|&m| m != mid_from_config) {
        return Err(v.err(
            "middle_block.1.transformer_blocks.0.attn1.to_q.weight",
            format!(
                "the mid block has {m} transformer layers; diffusers' config gives it the last level's first, \
                 {mid_from_config}: pass --config DIR with this model's unet/config.json"
            ),
        ));
    }
    let layers_per_block = per_level(&|l| l.depths.len());
    let mut cfg = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "out_channels": conv_out[0],
        "conv_in_kernel": conv_in[2],
        "conv_out_kernel": conv_out[2],
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": levels.iter().map(|l| cross(l, true)).collect::<Vec<_>>(),
        "up_block_types": levels.iter().rev().map(|l| cross(l, false)).collect::<Vec<_>>(),
        "mid_block_type": mid_block_type,
        "transformer_layers_per_block": depth,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": heads,
        "use_linear_projection": use_linear_projection,
        "norm_num_groups": SD_NORM_GROUPS,
        "time_cond_proj_dim": time_cond_proj_dim,
    });
    if time_embed[0] != 4 * c0 {
        cfg["time_embedding_dim"] = json!(time_embed[0]);
    }
    if per_layer || !mirrored {
        cfg["reverse_transformer_layers_per_block"] =
            json!(up_depths.iter().map(|d| depth_entry(d)).collect::<Vec<_>>());
    }
    if let Some((input, time_dim)) = text_time {
        cfg["addition_embed_type"] = json!("text_time");
        cfg["addition_time_embed_dim"] = json!(time_dim);
        cfg["projection_class_embeddings_input_dim"] = json!(input);
    }
    Ok(cfg)
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
    let token = v.need("token_embedding.weight", 2)?;
    let (vocab_size, hidden) = (token[0], token[1]);
    let positions = v.need("positional_embedding", 2)?[0];
    let layers = (0..).take_while(|l| v.has(&format!("transformer.resblocks.{l}.mlp.c_fc.weight"))).count();
    if layers == 0 {
        return Err(v.err("transformer.resblocks.0.mlp.c_fc.weight", "missing: the text encoder has no layers"));
    }
    let intermediate = v.need("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
    let projection = v.need("text_projection", 2)?;
    if projection[0] != hidden {
        return Err(v.err("text_projection", format!("has shape {projection:?}, expected [{hidden}, projection]")));
    }
    if hidden % CLIP_HEAD_WIDTH != 0 {
        return Err(v.err(
            "token_embedding.weight",
            format!(
                "the text encoder is {hidden} wide, not a multiple of OpenCLIP's {CLIP_HEAD_WIDTH}-wide heads; pass \
                 --config DIR with a text_encoder_2/config.json"
            ),
        ));
    }
    Ok(json!({
        "architectures": ["CLIPTextModelWithProjection"],
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
        "projection_dim": projection[1],
        "vocab_size": vocab_size,
    }))
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
    use crate::config::Config;
    use crate::ldm::{vae_ldm_is_conv, vae_to_ldm, UnetLayout};
    use crate::{sd15, sdxl, ClipConfig, UnetConfig, VaeConfig};

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
        let shapes = cfg.graph(1, 8, 8, 1).unwrap().weights.into_iter().map(|w| {
            let ldm = layout.to_ldm(&w.name).unwrap();
            (ldm, w.shape)
        });
        let table = Table(shapes.collect(), PathBuf::from("sd15.safetensors"));
        let key = |n: &str| Some(n.to_string());
        let json = unet_config(&View { file: &table, key: &key, what: "the UNet" }, None).unwrap();
        // sample_size (a default image size) is no shape: the file cannot say it.
        same(
            UnetConfig::parse(&Config::from_value(Path::new("x"), json)).unwrap(),
            UnetConfig { sample_size: None, ..cfg },
        );
    }

    /// SDXL's and an SSD-1B-shaped UNet (per-layer depths, its own up path, a resnet-only mid block)
    /// come back from their LDM shapes, with the pooled width text_encoder_2 gives.
    #[test]
    fn sdxl_and_ssd_unets_from_their_ldm_shapes() {
        for (name, json) in [("sdxl", sdxl::UNET_CONFIG), ("ssd-1b", sdxl::SSD_1B_UNET_CONFIG)] {
            let cfg = UnetConfig::from_json(Path::new(name), json).unwrap();
            let layout = UnetLayout::from_config(&cfg);
            let shapes =
                cfg.graph(1, 8, 8, 1).unwrap().weights.into_iter().map(|w| (layout.to_ldm(&w.name).unwrap(), w.shape));
            let table = Table(shapes.collect(), PathBuf::from(format!("{name}.safetensors")));
            let key = |n: &str| Some(n.to_string());
            let json = unet_config(&View { file: &table, key: &key, what: "the UNet" }, Some(1280)).unwrap();
            same(
                UnetConfig::parse(&Config::from_value(Path::new("x"), json)).unwrap(),
                UnetConfig { sample_size: None, ..cfg },
            );
            let err = unet_config(&View { file: &table, key: &key, what: "the UNet" }, None).unwrap_err().to_string();
            assert!(err.contains("label_emb.0.0.weight") && err.contains("second text encoder"), "{err}");
        }
        let te2 = ClipConfig::from_json(Path::new("sdxl"), sdxl::TEXT_ENCODER_2_CONFIG, 0).unwrap();
        let specs = te2.clone().with_output(crate::clip::ClipOutput::Penultimate).graph(1, 1).unwrap().weights;
        let p = "m.";
        let shapes = specs.into_iter().map(|w| {
            let k = crate::open_clip::open_clip_key(p, &w.name).unwrap();
            let shape = k.file_shape(&w.shape).into_owned();
            (k.key, shape)
        });
        let table = Table(shapes.collect(), PathBuf::from("sdxl.safetensors"));
        let key = |n: &str| Some(format!("{p}{n}"));
        let json = open_clip_config(&View { file: &table, key: &key, what: "the second text encoder" }).unwrap();
        same(ClipConfig::parse_value(Path::new("x"), json, 0).unwrap(), te2);
    }

    #[test]
    fn sd15_vae_and_text_encoder_from_their_shapes() {
        let cfg = VaeConfig::from_json(Path::new("sd15"), sd15::VAE_CONFIG).unwrap();
        let specs =
            cfg.decoder_graph(1, 1, 1).unwrap().weights.into_iter().chain(cfg.encoder_graph(1, 8, 8).unwrap().weights);
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
        let shapes = clip.graph(1, 1).unwrap().weights.into_iter().map(|w| (w.name, w.shape));
        let table = Table(shapes.collect(), PathBuf::from("clip.safetensors"));
        let key = |n: &str| Some(n.to_string());
        let json = clip_config(&View { file: &table, key: &key, what: "the text encoder" }).unwrap();
        same(ClipConfig::parse_value(Path::new("x"), json, 0).unwrap(), clip);
    }
}
