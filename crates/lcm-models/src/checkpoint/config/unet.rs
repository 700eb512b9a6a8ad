//! UNet2DConditionModel's `config.json` read into [`UnetConfig`], with diffusers' defaults and its
//! meaning of each key; features the graph does not build are refused by key.

use std::path::Path;

use lcm_core::Result;
use serde_json::{json, Value};

use super::Config;
use crate::arch::unet::{DownBlock, MidBlock, TextTime, UnetConfig, TEXT_TIME_IDS};

impl UnetConfig {
    /// Reads a `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&Config::read(path)?)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?)
    }

    /// From a JSON value (an inferred config); `origin` names it in errors.
    pub fn parse_value(origin: &Path, value: Value) -> Result<Self> {
        Self::parse(&Config::from_value(origin, value))
    }

    /// Reads `c`. Features the graph does not build (class or other added embeddings, other block,
    /// mid-block or activation types, …) and inconsistent sizes are errors naming the key.
    fn parse(c: &Config) -> Result<Self> {
        refuse_unbuilt(c)?;
        let block_out_channels = c.usizes("block_out_channels")?;
        let n = block_out_channels.len();
        let (down_blocks, up_blocks) = block_types(c, n)?;
        let mid_block = mid_block(c)?;
        let heads = match c.per_block("num_attention_heads", n, None)? {
            Some(h) => h,
            None => c.per_block("attention_head_dim", n, Some(8))?.expect("defaulted"),
        };
        let cross_dims = c.per_block("cross_attention_dim", n, Some(1280))?.expect("defaulted");
        if cross_dims.iter().any(|&d| d != cross_dims[0]) {
            return Err(c.error("cross_attention_dim", "different dimensions per block are not supported"));
        }
        // Absent: diffusers' default, 32; an explicit null (no normalisation) is not built.
        if c.is_null("norm_num_groups") {
            return Err(c.error("norm_num_groups", "null (no normalisation) is not supported"));
        }
        let norm_groups = c.usize_or("norm_num_groups", 32)?;
        let layers_per_block = c.per_block("layers_per_block", n, Some(2))?.expect("defaulted");
        let depths = TransformerDepths::parse(c, &layers_per_block)?;
        let text_time = text_time(c)?;
        let cfg = UnetConfig {
            in_channels: c.usize_or("in_channels", 4)?,
            out_channels: c.usize_or("out_channels", 4)?,
            layers_per_block,
            down_transformer_layers: depths.down,
            up_transformer_layers: depths.up,
            mid_transformer_layers: depths.mid,
            heads,
            cross_attention_dim: cross_dims[0],
            norm_groups,
            norm_eps: c.f32_or("norm_eps", 1e-5)?,
            use_linear_projection: c.bool_or("use_linear_projection", false)?,
            time_cond_proj_dim: c.usize_opt("time_cond_proj_dim")?,
            text_time,
            time_embed_dim: c.usize_opt("time_embedding_dim")?.unwrap_or(block_out_channels[0] * 4),
            flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
            freq_shift: c.f32_or("freq_shift", 0.0)?,
            downsample_padding: c.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: c.f32_or("mid_block_scale_factor", 1.0)?,
            conv_in_kernel: c.usize_or("conv_in_kernel", 3)?,
            conv_out_kernel: c.usize_or("conv_out_kernel", 3)?,
            // diffusers also accepts [h, w] here; only a square size gives a default.
            sample_size: c.get("sample_size").and_then(Value::as_u64).map(|s| s as usize),
            block_out_channels,
            down_blocks,
            up_blocks,
            mid_block,
        };
        check_consistent(c, &cfg)?;
        Ok(cfg)
    }
}

/// Keys of features the graph does not build: each must be absent or say diffusers' default.
fn refuse_unbuilt(c: &Config) -> Result<()> {
    for (key, value) in [
        ("act_fn", json!("silu")),
        ("resnet_time_scale_shift", json!("default")),
        ("time_embedding_type", json!("positional")),
        ("center_input_sample", json!(false)),
        ("only_cross_attention", json!(false)),
        ("dual_cross_attention", json!(false)),
        ("attention_type", json!("default")),
        ("resnet_skip_time_act", json!(false)),
        ("resnet_out_scale_factor", json!(1.0)),
        ("class_embeddings_concat", json!(false)),
    ] {
        c.require(key, &value)?;
    }
    for key in [
        "class_embed_type",
        "num_class_embeds",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "time_embedding_act_fn",
        "timestep_post_act",
        "cross_attention_norm",
    ] {
        c.require_absent(key)?;
    }
    // Not refused, and nothing to build: `upcast_attention` (SD2.x's UNets) makes diffusers compute f16
    // attention scores and their softmax in f32. lcm's attention does so at every precision (the CPU in
    // f32; the CUDA kernel keeps Q·Kᵀ and the online softmax in f32 accumulators), with or without it.
    c.bool_or("upcast_attention", false)?;
    Ok(())
}

/// `down_block_types` and `up_block_types`, one per level of the `n` in `block_out_channels`.
fn block_types(c: &Config, n: usize) -> Result<(Vec<DownBlock>, Vec<DownBlock>)> {
    let kind = |key: &str, name: &str, cross: &str, plain: &str| match name {
        s if s == cross => Ok(DownBlock::CrossAttn),
        s if s == plain => Ok(DownBlock::Plain),
        other => Err(c.error(key, format!("unknown block type `{other}` (expected {cross} or {plain})"))),
    };
    let down_blocks = c
        .strings("down_block_types")?
        .iter()
        .map(|s| kind("down_block_types", s, "CrossAttnDownBlock2D", "DownBlock2D"))
        .collect::<Result<Vec<_>>>()?;
    let up_blocks = c
        .strings("up_block_types")?
        .iter()
        .map(|s| kind("up_block_types", s, "CrossAttnUpBlock2D", "UpBlock2D"))
        .collect::<Result<Vec<_>>>()?;
    if down_blocks.len() != n || up_blocks.len() != n {
        return Err(c.error(
            "block_out_channels",
            format!("{n} channel counts for {} down and {} up blocks", down_blocks.len(), up_blocks.len()),
        ));
    }
    Ok((down_blocks, up_blocks))
}

/// `mid_block_type`: an explicit null is diffusers' "no mid block"; absent is its default, the
/// cross-attention one.
fn mid_block(c: &Config) -> Result<MidBlock> {
    if c.is_null("mid_block_type") {
        return Ok(MidBlock::None);
    }
    match c.str_or("mid_block_type", "UNetMidBlock2DCrossAttn")? {
        "UNetMidBlock2DCrossAttn" => Ok(MidBlock::CrossAttn),
        "UNetMidBlock2D" => Ok(MidBlock::Resnet),
        other => Err(c.error(
            "mid_block_type",
            format!("unknown block type `{other}` (expected UNetMidBlock2DCrossAttn, UNetMidBlock2D or null)"),
        )),
    }
}

/// `addition_embed_type`: absent, or SDXL's `text_time` with room for a pooled text embedding.
fn text_time(c: &Config) -> Result<Option<TextTime>> {
    let tt = match c.get("addition_embed_type") {
        None => return Ok(None),
        Some(Value::String(s)) if s == "text_time" => TextTime {
            time_embed_dim: c.usize("addition_time_embed_dim")?,
            input_dim: c.usize("projection_class_embeddings_input_dim")?,
        },
        Some(v) => {
            return Err(c.error("addition_embed_type", format!("{v} is not supported (only \"text_time\", SDXL's)")))
        }
    };
    if tt.time_embed_dim == 0 || tt.input_dim <= TEXT_TIME_IDS * tt.time_embed_dim {
        return Err(c.error(
            "projection_class_embeddings_input_dim",
            format!(
                "{} leaves no room for the pooled text embedding beside {TEXT_TIME_IDS} time ids of \
                 addition_time_embed_dim {}",
                tt.input_dim, tt.time_embed_dim
            ),
        ));
    }
    Ok(Some(tt))
}

/// What must agree across keys: mirrored block types, widths that split into the groups and heads,
/// odd kernels.
fn check_consistent(c: &Config, cfg: &UnetConfig) -> Result<()> {
    let mirrored: Vec<DownBlock> = cfg.down_blocks.iter().rev().copied().collect();
    if cfg.up_blocks != mirrored {
        return Err(c.error("up_block_types", "must mirror down_block_types (cross-attention at the same levels)"));
    }
    for (i, &ch) in cfg.block_out_channels.iter().enumerate() {
        if ch % cfg.norm_groups != 0 || cfg.heads[i] == 0 || ch % cfg.heads[i] != 0 {
            return Err(c.error(
                "block_out_channels",
                format!(
                    "block {i}: {ch} channels must divide into {} groups and {} heads",
                    cfg.norm_groups, cfg.heads[i]
                ),
            ));
        }
    }
    if cfg.conv_in_kernel.is_multiple_of(2) || cfg.conv_out_kernel.is_multiple_of(2) {
        return Err(c.error("conv_in_kernel", "kernel sizes must be odd"));
    }
    Ok(())
}

/// Transformer depths per block and layer, read as UNet2DConditionModel reads them.
struct TransformerDepths {
    down: Vec<Vec<usize>>,
    up: Vec<Vec<usize>>,
    mid: usize,
}

/// One block's entry: an int for every layer, or one per layer.
fn per_layer(c: &Config, key: &str, block: usize, v: &Value, layers: usize) -> Result<Vec<usize>> {
    match v {
        Value::Number(n) => {
            let d =
                n.as_u64().ok_or_else(|| c.error(key, format!("block {block}: expected a non-negative integer")))?;
            Ok(vec![d as usize; layers])
        }
        Value::Array(a) => {
            let d = a
                .iter()
                .map(|x| x.as_u64().map(|d| d as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| c.error(key, format!("block {block}: expected a list of integers, got {v}")))?;
            if d.len() != layers {
                return Err(c.error(key, format!("block {block}: {} depths for its {layers} layers", d.len())));
            }
            Ok(d)
        }
        other => Err(c.error(key, format!("block {block}: expected an integer or a list, got {other}"))),
    }
}

impl TransformerDepths {
    fn parse(c: &Config, layers_per_block: &[usize]) -> Result<Self> {
        let n = layers_per_block.len();
        const DOWN: &str = "transformer_layers_per_block";
        const UP: &str = "reverse_transformer_layers_per_block";
        // An int applies to every block; a list has one entry per block, each an int or per layer.
        let entries: Vec<Value> = match c.get(DOWN) {
            None => vec![json!(1); n],
            Some(v @ Value::Number(_)) => vec![v.clone(); n],
            Some(Value::Array(a)) if a.len() == n => a.clone(),
            Some(Value::Array(a)) => return Err(c.error(DOWN, format!("has {} entries for {n} blocks", a.len()))),
            Some(v) => return Err(c.error(DOWN, format!("expected an integer or a list, got {v}"))),
        };
        let down = (0..n).map(|i| per_layer(c, DOWN, i, &entries[i], layers_per_block[i])).collect::<Result<_>>()?;
        // The mid block takes the last level's entry; per layer, its first (it has one layer).
        let mid = per_layer(c, DOWN, n - 1, &entries[n - 1], layers_per_block[n - 1].max(1))?[0];
        let up_layers = |i: usize| layers_per_block[n - 1 - i] + 1;
        let up = match c.get(UP) {
            Some(Value::Array(a)) if a.len() == n => {
                (0..n).map(|i| per_layer(c, UP, i, &a[i], up_layers(i))).collect::<Result<_>>()?
            }
            Some(Value::Array(a)) => return Err(c.error(UP, format!("has {} entries for {n} up blocks", a.len()))),
            Some(v) => return Err(c.error(UP, format!("expected a list, got {v}"))),
            None => {
                if entries.iter().any(Value::is_array) {
                    // diffusers refuses this too: the up path of an asymmetrical UNet is not implied.
                    return Err(c.error(DOWN, format!("per-layer depths need `{UP}` for the up path")));
                }
                (0..n)
                    .map(|i| per_layer(c, DOWN, n - 1 - i, &entries[n - 1 - i], up_layers(i)))
                    .collect::<Result<_>>()?
            }
        };
        Ok(TransformerDepths { down, up, mid })
    }
}
