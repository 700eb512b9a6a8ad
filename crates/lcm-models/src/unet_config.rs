//! UNet2DConditionModel's `config.json` as the graph reads it: SD1.5's layout and SDXL's (a plain first
//! level, per-level head counts, transformer depths per layer and a different up path for SSD-1B and
//! Segmind-Vega, the `text_time` added embedding), with diffusers' defaults and its meaning of each key.

use std::path::Path;

use lcm_core::Result;
use serde_json::{json, Value};

use crate::config::Config;

/// The kind of a UNet level's block, for the down path and (mirrored) the up path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlock {
    /// Resnets each followed by a Transformer2DModel (`CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`).
    CrossAttn,
    /// Resnets only (`DownBlock2D` / `UpBlock2D`).
    Plain,
}

/// `mid_block_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidBlock {
    /// `UNetMidBlock2DCrossAttn` (the default): resnet, transformer, resnet.
    CrossAttn,
    /// `UNetMidBlock2D` as UNet2DConditionModel builds it (`num_layers=0`, no attention): one resnet
    /// (SSD-1B, Segmind-Vega).
    Resnet,
    /// An explicit null: no mid block.
    None,
}

/// How many values `time_ids` holds per image in StableDiffusionXLPipeline: original size (h, w),
/// crop top-left (y, x), target size (h, w). (The refiner's img2img pipeline passes five, with an
/// aesthetic score; lcm does not run it.)
pub const TEXT_TIME_IDS: usize = 6;

/// `addition_embed_type: "text_time"` (SDXL): `add_time_proj` embeds each time id as a sinusoid of
/// `time_embed_dim` (the UNet's `flip_sin_to_cos` and `freq_shift`); pooled text embeds ++ those six
/// sinusoids go through `add_embedding.linear_1` → SiLU → `linear_2` and are added to the time
/// embedding (`UNet2DConditionModel.get_aug_embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// `addition_time_embed_dim` (SDXL: 256).
    pub time_embed_dim: usize,
    /// `projection_class_embeddings_input_dim`: `add_embedding.linear_1`'s input width (SDXL: 2816 =
    /// 1280 pooled + 6 · 256).
    pub input_dim: usize,
}

impl TextTime {
    /// The pooled text embedding's width the UNet takes: `input_dim` less the time ids' sinusoids.
    pub fn pooled_dim(&self) -> usize {
        self.input_dim - TEXT_TIME_IDS * self.time_embed_dim
    }
}

/// UNet2DConditionModel's `config.json`, as far as the graph depends on it. Defaults are diffusers'.
#[derive(Debug, Clone)]
pub struct UnetConfig {
    /// `in_channels`: latent channels in (4).
    pub in_channels: usize,
    /// `out_channels`: channels of the prediction (4).
    pub out_channels: usize,
    /// `block_out_channels`: the width of each level, full resolution first (SD1.5: 320, 640, 1280,
    /// 1280; SDXL: 320, 640, 1280); its length is the number of levels.
    pub block_out_channels: Vec<usize>,
    /// `down_block_types`, per down block: with cross-attention or not. Up blocks mirror them (checked).
    pub down_blocks: Vec<DownBlock>,
    /// `up_block_types`, lowest resolution first: `down_blocks` reversed.
    pub up_blocks: Vec<DownBlock>,
    /// `mid_block_type`.
    pub mid_block: MidBlock,
    /// `layers_per_block` (an int or one per level): resnets per down block; each up block has one more.
    pub layers_per_block: Vec<usize>,
    /// BasicTransformerBlocks in the Transformer2DModel after each resnet of each down block, per level
    /// then per resnet: `transformer_layers_per_block` (an int, one per level, or one list per level).
    pub down_transformer_layers: Vec<Vec<usize>>,
    /// The same per up block (lowest resolution first) and resnet: `reverse_transformer_layers_per_block`
    /// when given (SSD-1B, Segmind-Vega), else the down path's per-level values reversed.
    pub up_transformer_layers: Vec<Vec<usize>>,
    /// The mid block transformer's depth: the last level's (its first entry when per layer).
    pub mid_transformer_layers: usize,
    /// Attention heads per down block (diffusers reads `attention_head_dim` as heads when
    /// `num_attention_heads` is absent — SD1.5's and SDXL's configs rely on that); up blocks mirror them.
    pub heads: Vec<usize>,
    /// `cross_attention_dim`: the width of the text context the cross-attention reads (768 for
    /// CLIP-L, 2048 for SDXL's two encoders); one value for every block.
    pub cross_attention_dim: usize,
    /// `norm_num_groups`: GroupNorm groups (32).
    pub norm_groups: usize,
    /// `norm_eps`: the resnets' and `conv_norm_out`'s GroupNorm eps (1e-5); the transformers' GroupNorm
    /// uses 1e-6, as diffusers hard-codes.
    pub norm_eps: f32,
    /// `use_linear_projection`: `proj_in`/`proj_out` are linear layers `[C, C]` rather than 1x1 convs
    /// `[C, C, 1, 1]`.
    pub use_linear_projection: bool,
    /// `time_cond_proj_dim`: the guidance-scale embedding's width in a full LCM UNet (256), added to the
    /// timestep sinusoid through `time_embedding.cond_proj` (no bias); `None` for SD UNets.
    pub time_cond_proj_dim: Option<usize>,
    /// `addition_embed_type: "text_time"` and its sizes (SDXL); `None` without an added embedding.
    pub text_time: Option<TextTime>,
    /// `time_embedding_dim`, default 4·`block_out_channels[0]` (1280): the timestep embedding's width.
    pub time_embed_dim: usize,
    /// `flip_sin_to_cos`: the timestep sinusoid puts cos first (true for SD).
    pub flip_sin_to_cos: bool,
    /// `freq_shift`: the sinusoid's `downscale_freq_shift` (0 for SD).
    pub freq_shift: f32,
    /// `downsample_padding`: padding of the stride-2 3x3 downsampler convs (1).
    pub downsample_padding: usize,
    /// `mid_block_scale_factor`: the mid block's resnets divide their output by it (1).
    pub mid_block_scale_factor: f32,
    /// `conv_in_kernel`: `conv_in`'s kernel size (3; odd, padded by half).
    pub conv_in_kernel: usize,
    /// `conv_out_kernel`: `conv_out`'s kernel size (3; odd, padded by half).
    pub conv_out_kernel: usize,
    /// `sample_size`: the latent size the model was trained at (SD1.5: 64, SDXL: 128); pipelines
    /// default to this times the VAE's factor.
    pub sample_size: Option<usize>,
}

impl UnetConfig {
    /// Reads a `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&Config::read(path)?)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?)
    }

    /// Reads `c`. Features the graph does not build (class or other added embeddings, other block,
    /// mid-block or activation types, …) and inconsistent sizes are errors naming the key.
    pub fn parse(c: &Config) -> Result<Self> {
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
        let block_out_channels = c.usizes("block_out_channels")?;
        let n = block_out_channels.len();
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
        // An explicit null is diffusers' "no mid block"; absent is its default, the cross-attention one.
        let mid_block = if c.is_null("mid_block_type") {
            MidBlock::None
        } else {
            match c.str_or("mid_block_type", "UNetMidBlock2DCrossAttn")? {
                "UNetMidBlock2DCrossAttn" => MidBlock::CrossAttn,
                "UNetMidBlock2D" => MidBlock::Resnet,
                other => {
                    return Err(c.error(
                        "mid_block_type",
                        format!(
                            "unknown block type `{other}` (expected UNetMidBlock2DCrossAttn, UNetMidBlock2D or null)"
                        ),
                    ))
                }
            }
        };
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
        let text_time = match c.get("addition_embed_type") {
            None => None,
            Some(Value::String(s)) if s == "text_time" => Some(TextTime {
                time_embed_dim: c.usize("addition_time_embed_dim")?,
                input_dim: c.usize("projection_class_embeddings_input_dim")?,
            }),
            Some(v) => {
                return Err(c.error("addition_embed_type", format!("{v} is not supported (only \"text_time\", SDXL's)")))
            }
        };
        if let Some(tt) = text_time {
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
        }
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
        Ok(cfg)
    }
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
