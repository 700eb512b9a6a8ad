//! Module paths in the original Stable Diffusion (LDM) naming ↔ diffusers' naming.
//!
//! LDM numbers its blocks in one running sequence (`input_blocks.N.M`, `middle_block.M`,
//! `output_blocks.N.M`) where diffusers nests them (`down_blocks.i.resnets.j`), so the mapping depends on
//! the UNet's structure: how many resnets each level has and which levels have attention. It is derived
//! here from that structure, the same walk diffusers' `convert_ldm_unet_checkpoint` makes:
//! - `input_blocks.0.0` is `conv_in`; then per level i, per resnet j, one slot `input_blocks.N` holding
//!   the resnet (`.0`) and, with attention, the transformer (`.1`); after every level but the last, one
//!   slot holding the downsampler conv (`.0.op`).
//! - `middle_block.0/1/2` = `mid_block.resnets.0`, `attentions.0`, `resnets.1` (a `UNetMidBlock2D`
//!   mid block, SSD-1B's and Vega's, is `middle_block.0` alone);
//! - SDXL's added embedding `add_embedding.linear_1/2` is `label_emb.0.0/2`.
//! - per up block i (levels reversed, one resnet more than the level's down block), one slot
//!   `output_blocks.N` per resnet: resnet `.0`, transformer `.1`; the upsampler conv sits in the block's
//!   last slot after them: `.1.conv` without attention, `.2.conv` with it.
//! - resnet internals are renamed (`in_layers.2` = `conv1`, …); transformer internals are unchanged.
//!
//! kohya LoRA files for old SD checkpoints and single-file checkpoints (`model.diffusion_model.…`) use
//! these names; both read them through this one mapping. The VAE's (`first_stage_model.…`) names are
//! below it ([`vae_to_ldm`]), and the key prefix of each model in a checkpoint here.

use crate::arch::unet::{DownBlock, MidBlock, UnetConfig};

/// Key prefix of the UNet's weights (LDM names follow).
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Key prefix of the VAE's weights (LDM names follow).
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Key prefix of the CLIP-L text encoder's weights (HF names follow, with or without `text_model.`).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// SD2.x: the key prefix of its text encoder (OpenCLIP-H, OpenCLIP names, see [`super::open_clip`]).
pub const SD2_OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// SDXL: the key prefix of its first text encoder (CLIP-L, HF names as [`CLIP_PREFIX`]).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL: the key prefix of its second text encoder (OpenCLIP names, see [`super::open_clip`]).
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// LDM resnet sub-module ↔ diffusers resnet sub-module.
const RESNET_PARTS: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// One module that has a name on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    ldm: String,
    diffusers: String,
    /// Its sub-modules are renamed with [`RESNET_PARTS`]; otherwise they keep their names.
    resnet: bool,
}

/// The part of a UNet's structure that LDM's block numbering depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetLayout {
    layers_per_block: Vec<usize>,
    attention: Vec<bool>,
    mid: MidBlock,
    blocks: Vec<Block>,
}

impl UnetLayout {
    /// `layers_per_block[i]`: resnets in down block i (its up block has one more); `attention[i]`: whether
    /// level i has transformers (up blocks mirror the down blocks, as `UnetConfig` checks); the mid block
    /// is SD's (resnet, transformer, resnet).
    pub fn new(layers_per_block: Vec<usize>, attention: Vec<bool>) -> Self {
        Self::with_mid(layers_per_block, attention, MidBlock::CrossAttn)
    }

    /// [`Self::new`] with another kind of mid block.
    pub(crate) fn with_mid(layers_per_block: Vec<usize>, attention: Vec<bool>, mid: MidBlock) -> Self {
        assert_eq!(layers_per_block.len(), attention.len(), "one attention flag per level");
        let blocks = ldm_blocks(&layers_per_block, &attention, mid);
        UnetLayout { layers_per_block, attention, mid, blocks }
    }

    /// The layout of a UNet with config `c`.
    pub fn from_config(c: &UnetConfig) -> Self {
        let attention = c.down_blocks.iter().map(|b| *b == DownBlock::CrossAttn).collect();
        Self::with_mid(c.layers_per_block.clone(), attention, c.mid_block)
    }

    /// The kind of mid block.
    pub fn mid_block(&self) -> MidBlock {
        self.mid
    }

    /// Resnets per down block, per level.
    pub fn layers_per_block(&self) -> &[usize] {
        &self.layers_per_block
    }

    /// Whether each level has transformers.
    pub fn attention(&self) -> &[bool] {
        &self.attention
    }

    /// `input_blocks.4.1.proj_in` → `down_blocks.1.attentions.0.proj_in` (module or parameter paths);
    /// `None` for a path that names no module of this structure.
    pub fn to_diffusers(&self, ldm: &str) -> Option<String> {
        self.translate(ldm, true)
    }

    /// The inverse of [`Self::to_diffusers`]; `None` for modules LDM lacks (`time_embedding.cond_proj`).
    pub fn to_ldm(&self, diffusers: &str) -> Option<String> {
        self.translate(diffusers, false)
    }

    fn translate(&self, path: &str, from_ldm: bool) -> Option<String> {
        fn sides(b: &Block, from_ldm: bool) -> (&str, &str) {
            if from_ldm {
                (&b.ldm, &b.diffusers)
            } else {
                (&b.diffusers, &b.ldm)
            }
        }
        let block = |b| sides(b, from_ldm);
        // Prefixes are whole dotted components, and no block's path is a prefix of another's, so at most
        // one block matches.
        let (b, rest) = self.blocks.iter().find_map(|b| strip_module(path, block(b).0).map(|rest| (b, rest)))?;
        let to = block(b).1;
        if !b.resnet || rest.is_empty() {
            return Some(format!("{to}{rest}"));
        }
        RESNET_PARTS.iter().find_map(|&(ldm, diff)| {
            let (from, into) = if from_ldm { (ldm, diff) } else { (diff, ldm) };
            strip_module(&rest[1..], from).map(|tail| format!("{to}.{into}{tail}"))
        })
    }
}

/// `path` without the module prefix `prefix`: `""` or `".rest"`; `None` unless `prefix` ends at a dot.
fn strip_module<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('.')).then_some(rest)
}

fn ldm_blocks(layers_per_block: &[usize], attention: &[bool], mid: MidBlock) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut add = |ldm: String, diffusers: String, resnet: bool| blocks.push(Block { ldm, diffusers, resnet });
    add("time_embed.0".into(), "time_embedding.linear_1".into(), false);
    add("time_embed.2".into(), "time_embedding.linear_2".into(), false);
    add("label_emb.0.0".into(), "add_embedding.linear_1".into(), false);
    add("label_emb.0.2".into(), "add_embedding.linear_2".into(), false);
    add("input_blocks.0.0".into(), "conv_in".into(), false);
    add("out.0".into(), "conv_norm_out".into(), false);
    add("out.2".into(), "conv_out".into(), false);

    let levels = layers_per_block.len();
    let mut slot = 1;
    for i in 0..levels {
        for j in 0..layers_per_block[i] {
            add(format!("input_blocks.{slot}.0"), format!("down_blocks.{i}.resnets.{j}"), true);
            if attention[i] {
                add(format!("input_blocks.{slot}.1"), format!("down_blocks.{i}.attentions.{j}"), false);
            }
            slot += 1;
        }
        if i + 1 < levels {
            add(format!("input_blocks.{slot}.0.op"), format!("down_blocks.{i}.downsamplers.0.conv"), false);
            slot += 1;
        }
    }

    match mid {
        MidBlock::CrossAttn => {
            add("middle_block.0".into(), "mid_block.resnets.0".into(), true);
            add("middle_block.1".into(), "mid_block.attentions.0".into(), false);
            add("middle_block.2".into(), "mid_block.resnets.1".into(), true);
        }
        MidBlock::Resnet => add("middle_block.0".into(), "mid_block.resnets.0".into(), true),
        MidBlock::None => {}
    }

    let mut slot = 0;
    for i in 0..levels {
        let level = levels - 1 - i;
        let resnets = layers_per_block[level] + 1;
        for j in 0..resnets {
            add(format!("output_blocks.{slot}.0"), format!("up_blocks.{i}.resnets.{j}"), true);
            if attention[level] {
                add(format!("output_blocks.{slot}.1"), format!("up_blocks.{i}.attentions.{j}"), false);
            }
            if j + 1 == resnets && i + 1 < levels {
                let sub = if attention[level] { 2 } else { 1 };
                add(format!("output_blocks.{slot}.{sub}.conv"), format!("up_blocks.{i}.upsamplers.0.conv"), false);
            }
            slot += 1;
        }
    }
    blocks
}

/// The LDM name of an AutoencoderKL parameter (without the checkpoint's `first_stage_model.` prefix),
/// for a VAE with `levels` blocks; `None` for a name that is not an AutoencoderKL parameter. The walk
/// of diffusers' `convert_ldm_vae_checkpoint`, inverted:
/// - `{encoder,decoder}.conv_in/conv_out`, `quant_conv`, `post_quant_conv` keep their names;
///   `conv_norm_out` is `norm_out`;
/// - `encoder.down_blocks.i.resnets.j` is `encoder.down.i.block.j`, its downsampler
///   `encoder.down.i.downsample.conv`; LDM numbers the decoder from the bottom, so
///   `decoder.up_blocks.i` is `decoder.up.{levels-1-i}` (`.block.j`, `.upsample.conv`);
/// - `mid_block.resnets.k` is `mid.block_{k+1}`; the mid attention's `group_norm`, `to_q`, `to_k`,
///   `to_v`, `to_out.0` are `mid.attn_1.norm`, `q`, `k`, `v`, `proj_out` (1x1 convs in LDM files:
///   see [`vae_ldm_is_conv`]);
/// - inside a resnet, `conv_shortcut` is `nin_shortcut`.
pub fn vae_to_ldm(name: &str, levels: usize) -> Option<String> {
    let (part, rest) = name.split_once('.')?;
    if matches!(part, "quant_conv" | "post_quant_conv") {
        return matches!(rest, "weight" | "bias").then(|| name.to_string());
    }
    if !matches!(part, "encoder" | "decoder") {
        return None;
    }
    let p: Vec<&str> = rest.split('.').collect();
    let resnet_tail = |tail: &[&str]| -> Option<String> {
        let (first, param) = match tail {
            [m, param] => (*m, *param),
            _ => return None,
        };
        let m = match first {
            "norm1" | "conv1" | "norm2" | "conv2" => first,
            "conv_shortcut" => "nin_shortcut",
            _ => return None,
        };
        Some(format!("{m}.{param}"))
    };
    let out = match p.as_slice() {
        [m @ ("conv_in" | "conv_out"), param] => format!("{m}.{param}"),
        ["conv_norm_out", param] => format!("norm_out.{param}"),
        ["mid_block", "resnets", k, tail @ ..] => {
            let k: usize = k.parse().ok().filter(|&k| k < 2)?;
            format!("mid.block_{}.{}", k + 1, resnet_tail(tail)?)
        }
        ["mid_block", "attentions", "0", tail @ ..] => {
            let (m, param) = match tail {
                ["group_norm", param] => ("norm", *param),
                ["to_q", param] => ("q", *param),
                ["to_k", param] => ("k", *param),
                ["to_v", param] => ("v", *param),
                ["to_out", "0", param] => ("proj_out", *param),
                _ => return None,
            };
            format!("mid.attn_1.{m}.{param}")
        }
        [kind @ ("down_blocks" | "up_blocks"), i, inner, tail @ ..] => {
            let i: usize = i.parse().ok().filter(|&i| i < levels)?;
            let (stem, level, sampler) = match (part, *kind) {
                ("encoder", "down_blocks") => ("down", i, "downsamplers"),
                ("decoder", "up_blocks") => ("up", levels - 1 - i, "upsamplers"),
                _ => return None,
            };
            match (*inner, tail) {
                ("resnets", [j, rest @ ..]) => {
                    let j: usize = j.parse().ok()?;
                    format!("{stem}.{level}.block.{j}.{}", resnet_tail(rest)?)
                }
                (s, ["0", "conv", param]) if s == sampler => {
                    let what = if stem == "down" { "downsample" } else { "upsample" };
                    format!("{stem}.{level}.{what}.conv.{param}")
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(format!("{part}.{out}"))
}

/// Whether an LDM VAE weight is a 1x1 conv (`[C, C, 1, 1]`) where diffusers has a linear layer: the
/// mid-block attention's q, k, v and proj_out.
pub fn vae_ldm_is_conv(ldm: &str) -> bool {
    ["q", "k", "v", "proj_out"].iter().any(|m| ldm.ends_with(&format!(".mid.attn_1.{m}.weight")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_names_follow_convert_ldm_vae_checkpoint() {
        let cases = [
            ("encoder.conv_in.weight", "encoder.conv_in.weight"),
            ("encoder.down_blocks.1.resnets.0.conv_shortcut.bias", "encoder.down.1.block.0.nin_shortcut.bias"),
            ("encoder.down_blocks.2.downsamplers.0.conv.weight", "encoder.down.2.downsample.conv.weight"),
            ("encoder.mid_block.resnets.1.norm2.weight", "encoder.mid.block_2.norm2.weight"),
            ("decoder.mid_block.attentions.0.group_norm.bias", "decoder.mid.attn_1.norm.bias"),
            ("decoder.mid_block.attentions.0.to_out.0.weight", "decoder.mid.attn_1.proj_out.weight"),
            ("decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.up.3.block.2.conv1.weight"),
            ("decoder.up_blocks.2.upsamplers.0.conv.bias", "decoder.up.1.upsample.conv.bias"),
            ("decoder.conv_norm_out.weight", "decoder.norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ];
        for (diffusers, ldm) in cases {
            assert_eq!(vae_to_ldm(diffusers, 4).as_deref(), Some(ldm), "{diffusers}");
        }
        assert!(vae_ldm_is_conv("decoder.mid.attn_1.q.weight"));
        assert!(!vae_ldm_is_conv("decoder.mid.attn_1.q.bias"));
        for bad in ["decoder.up_blocks.4.resnets.0.conv1.weight", "encoder.up_blocks.0.resnets.0.conv1.weight", "x.y"] {
            assert_eq!(vae_to_ldm(bad, 4), None, "{bad}");
        }
    }
}
