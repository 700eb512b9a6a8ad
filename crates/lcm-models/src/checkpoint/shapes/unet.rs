//! UNet2DConditionModel's config from the shapes of its LDM-named tensors (`input_blocks.…`, relative
//! to `model.diffusion_model.`). The down path is walked slot by slot as LDM numbers it (see
//! [`crate::checkpoint::ldm::UnetLayout`]): a slot holds a resnet (`.0.in_layers.2`, its width) and
//! maybe a transformer (`.1`, its depth), or a downsampler (`.0.op`) that closes a level. The up
//! path's and the mid block's transformers are read too (SSD-1B and Segmind-Vega differ there).

use lcm_core::Result;
use serde_json::{json, Value};

use super::{UnetHeads, View, SD15_UNET_HEADS, SD_NORM_GROUPS, WIDE_UNET_HEAD_WIDTH};
use crate::arch::unet::UnetConfig;

/// One level of the down path as read from its slots.
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

/// The config as diffusers would write it. SDXL's added embedding (`label_emb.0`) needs the pooled
/// text width, `pooled_dim` (text_encoder_2's projection): the rest of its input is six sinusoids of
/// `addition_time_embed_dim`. `heads`: the family's rule for the head counts (an SDXL UNet's are
/// always 64 wide).
pub(crate) fn unet_config(v: &View, pooled_dim: Option<usize>, heads: UnetHeads) -> Result<Value> {
    config(v, pooled_dim, None, true, heads)
}

/// [`unet_config`] for the encoder alone, a ControlNet's copy of it (the same LDM names, no
/// `output_blocks` and no `out`): the keys a ControlNetModel's config shares with the UNet's, without
/// the up path's (`up_block_types`, `out_channels`, `conv_out_kernel`), which a ControlNet lacks. What
/// the shapes do not give (heads, GroupNorm groups) is `base`'s when its widths are the encoder's (the
/// UNet a ControlNet was copied from), else the families' rules.
pub(crate) fn encoder_config(v: &View, pooled_dim: Option<usize>, base: Option<&UnetConfig>) -> Result<Value> {
    config(v, pooled_dim, base, false, UnetHeads::Sd15)
}

fn config(
    v: &View,
    pooled_dim: Option<usize>,
    base: Option<&UnetConfig>,
    decoder: bool,
    family_heads: UnetHeads,
) -> Result<Value> {
    let conv_in = conv_in(v)?;
    let text_time = text_time(v, pooled_dim)?;
    let sdxl = text_time.is_some();
    let (levels, slots) = down_levels(v)?;
    let up_depths = match decoder {
        true => up_depths(v, &levels)?,
        // No up path to read: the down path's depths mirrored, so no reverse depths are written.
        false => levels.iter().rev().map(|l| vec![l.depths[0].unwrap_or(1); l.depths.len() + 1]).collect(),
    };
    let (mid_depth, mid_block_type) = mid_block(v, sdxl)?;
    let (cross_attention_dim, use_linear_projection) = cross_attention(v, slots)?;
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
    let conv_out = if decoder { Some(v.need("out.2.weight", 4)?.to_vec()) } else { None };
    let channels: Vec<usize> = levels.iter().map(|l| l.channels).collect();
    let base = base.filter(|b| b.block_out_channels == channels);
    let heads = match base {
        Some(b) => json!(b.heads),
        None => heads(v, &channels, sdxl, family_heads)?,
    };
    let depths = Depths::read(v, &levels, up_depths, mid_depth)?;
    let cross = |l: &Level, down: bool| match (l.depths[0].is_some(), down) {
        (true, true) => "CrossAttnDownBlock2D",
        (false, true) => "DownBlock2D",
        (true, false) => "CrossAttnUpBlock2D",
        (false, false) => "UpBlock2D",
    };
    let layers: Vec<usize> = levels.iter().map(|l| l.depths.len()).collect();
    let mut cfg = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": conv_in[1],
        "conv_in_kernel": conv_in[2],
        "block_out_channels": channels,
        "layers_per_block": depth_entry(&layers),
        "down_block_types": levels.iter().map(|l| cross(l, true)).collect::<Vec<_>>(),
        "mid_block_type": mid_block_type,
        "transformer_layers_per_block": depths.down,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": heads,
        "use_linear_projection": use_linear_projection,
        "norm_num_groups": base.map_or(SD_NORM_GROUPS, |b| b.norm_groups),
        "time_cond_proj_dim": time_cond_proj_dim,
    });
    if let Some(conv_out) = conv_out {
        cfg["out_channels"] = json!(conv_out[0]);
        cfg["conv_out_kernel"] = json!(conv_out[2]);
        cfg["up_block_types"] = json!(levels.iter().rev().map(|l| cross(l, false)).collect::<Vec<_>>());
    }
    if time_embed[0] != 4 * c0 {
        cfg["time_embedding_dim"] = json!(time_embed[0]);
    }
    if let Some(up) = depths.up {
        cfg["reverse_transformer_layers_per_block"] = up;
    }
    if let Some((input, time_dim)) = text_time {
        cfg["addition_embed_type"] = json!("text_time");
        cfg["addition_time_embed_dim"] = json!(time_dim);
        cfg["projection_class_embeddings_input_dim"] = json!(input);
    }
    Ok(cfg)
}

/// `conv_in`'s shape `[out, in, k, k]`: 4 input channels (text-to-image), or 9 (an inpainting UNet:
/// latents + mask + masked image latents; `generate --mask` runs it).
fn conv_in(v: &View) -> Result<Vec<usize>> {
    let conv_in = v.need("input_blocks.0.0.weight", 4)?.to_vec();
    match conv_in[1] {
        4 | 9 => Ok(conv_in),
        8 => Err(v.err(
            "input_blocks.0.0.weight",
            "has 8 input channels: an InstructPix2Pix-style UNet (latents + image latents); lcm runs \
             UNets with 4 input channels only",
        )),
        n => Err(v.err("input_blocks.0.0.weight", format!("has {n} input channels, expected 4"))),
    }
}

/// SDXL's added embedding: `(projection_class_embeddings_input_dim, addition_time_embed_dim)`, or
/// `None` without `label_emb`.
fn text_time(v: &View, pooled_dim: Option<usize>) -> Result<Option<(usize, usize)>> {
    match (v.shape("label_emb.0.0.weight"), pooled_dim) {
        (None, _) => Ok(None),
        (Some(&[_, input]), Some(pooled)) if input > pooled && (input - pooled) % 6 == 0 => {
            Ok(Some((input, (input - pooled) / 6)))
        }
        (Some(s), Some(pooled)) => Err(v.err(
            "label_emb.0.0.weight",
            format!("has shape {s:?}: its input is not {pooled} pooled text widths plus six time-id sinusoids"),
        )),
        (Some(_), None) => Err(v.err(
            "label_emb.0.0.weight",
            "is an added-condition embedding (SDXL's text_time, an SD2 upscaler's class embedding) in a checkpoint \
             without SDXL's second text encoder",
        )),
    }
}

/// The down path's levels, and the first slot after them.
fn down_levels(v: &View) -> Result<(Vec<Level>, usize)> {
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
    Ok((levels, slot))
}

/// The up path's transformer depths per up block (lowest resolution first) and resnet: it mirrors
/// the down path with one resnet more per level, and may differ in depths.
fn up_depths(v: &View, levels: &[Level]) -> Result<Vec<Vec<usize>>> {
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
    Ok(up_depths)
}

/// The mid block's transformer depth and `mid_block_type`: UNetMidBlock2DCrossAttn (resnet,
/// transformer, resnet), UNetMidBlock2D as UNet2DConditionModel builds it (one resnet: Segmind-Vega),
/// or none (null). SD1.5-family UNets have the first.
fn mid_block(v: &View, sdxl: bool) -> Result<(Option<usize>, Value)> {
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
    Ok((mid_depth, mid_block_type))
}

/// `cross_attention_dim` and `use_linear_projection`, from the first transformer of the down path's
/// slots `1..slots`.
fn cross_attention(v: &View, slots: usize) -> Result<(usize, bool)> {
    let first_attn = (1..slots)
        .find(|s| v.has(&format!("input_blocks.{s}.1.proj_in.weight")))
        .ok_or_else(|| v.err("input_blocks.1.1.proj_in.weight", "missing: the UNet has no cross-attention"))?;
    let to_k = v.need(&format!("input_blocks.{first_attn}.1.transformer_blocks.0.attn2.to_k.weight"), 2)?;
    let proj_in = v.shape(&format!("input_blocks.{first_attn}.1.proj_in.weight")).unwrap_or_default();
    Ok((to_k[1], proj_in.len() == 2))
}

/// `attention_head_dim`, which the shapes do not give: SD1.5's 8 heads everywhere, or SD2's and SDXL's
/// 64-wide heads (`[5, 10, 20, 20]` and `[5, 10, 20]` read as heads). A level too narrow for the
/// family's rule is an error.
fn heads(v: &View, channels: &[usize], sdxl: bool, family: UnetHeads) -> Result<Value> {
    let (wide, rule) = match (sdxl, family) {
        (true, _) => (true, "SDXL family's 64-wide heads"),
        (false, UnetHeads::Sd2) => (true, "SD2 family's 64-wide heads"),
        (false, UnetHeads::Sd15) => (false, "SD1.5 family's 8 heads"),
    };
    let heads = if wide {
        json!(channels.iter().map(|c| c / WIDE_UNET_HEAD_WIDTH).collect::<Vec<_>>())
    } else {
        json!(SD15_UNET_HEADS)
    };
    let splits = |c: usize| {
        c.is_multiple_of(SD_NORM_GROUPS)
            && if wide { c.is_multiple_of(WIDE_UNET_HEAD_WIDTH) } else { c.is_multiple_of(SD15_UNET_HEADS) }
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
    Ok(heads)
}

/// The transformer depths as config entries.
struct Depths {
    /// `transformer_layers_per_block`: per level when every layer agrees (SD1.5, SDXL), per layer
    /// otherwise (SSD-1B, Vega).
    down: Value,
    /// `reverse_transformer_layers_per_block`, when the up path is not the down path's levels
    /// mirrored (or the depths are per layer).
    up: Option<Value>,
}

impl Depths {
    /// The entries for `levels` and the up path's `up_depths`; the mid block's depth, `mid_depth`, must
    /// be what diffusers gives it from them: the last level's first.
    fn read(v: &View, levels: &[Level], up_depths: Vec<Vec<usize>>, mid_depth: Option<usize>) -> Result<Depths> {
        let down_depths: Vec<Vec<usize>> =
            levels.iter().map(|l| l.depths.iter().map(|d| d.unwrap_or(1)).collect()).collect();
        let down_entries: Vec<Value> = down_depths.iter().map(|d| depth_entry(d)).collect();
        let per_layer = down_entries.iter().any(Value::is_array);
        let mirrored = down_depths.iter().rev().zip(&up_depths).all(|(d, u)| u.iter().all(|&x| x == d[0]));
        let down = if !per_layer && down_entries.iter().all(|e| *e == down_entries[0]) {
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
        let up = (per_layer || !mirrored).then(|| json!(up_depths.iter().map(|d| depth_entry(d)).collect::<Vec<_>>()));
        Ok(Depths { down, up })
    }
}
