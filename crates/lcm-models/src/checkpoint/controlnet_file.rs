//! A ControlNet in one `.safetensors` file, its config read from the tensor shapes. Three namings:
//! - the original ControlNet names after `control_model.`, as the A1111 ControlNet extension's files
//!   ship (`control_v11p_sd15_canny.safetensors`), or the same names with no prefix: the encoder named
//!   as the LDM UNet's ([`UnetLayout`]: `time_embed.0/2`, `label_emb.0.0/2`, `input_blocks.*`,
//!   `middle_block.*`), and [`control_to_original`]'s `input_hint_block.*`, `zero_convs.*`,
//!   `middle_block_out.0`;
//! - diffusers' own names (a folder's `diffusion_pytorch_model.safetensors` on its own).
//!
//! The encoder's config comes from the same shape reader as a single-file UNet's
//! ([`shapes::unet::encoder_config`]), the conditioning embedding's widths from `input_hint_block`.
//! What the shapes cannot give — head counts, GroupNorm groups, SDXL's split of the added embedding's
//! input — follows the families' rules, or the base UNet's config when the caller has it (a
//! ControlNet is trained as a copy of its base UNet's encoder, so it has the base's). Every key must be a weight of
//! the inferred model; under `control_model.` only those keys are the ControlNet's (the original
//! ControlNet 1.0 releases are whole ControlLDM checkpoints, the SD model beside it).

use std::collections::HashSet;
use std::path::Path;

use lcm_core::{Backend, Error, Result, SafeTensorsFile};
use serde_json::json;

use super::ldm::{UnetLayout, UNET_PREFIX};
use super::mapped::{open_safetensors, upload_mapped, FileKey};
use super::shapes::{unet::encoder_config, View};
use crate::arch::controlnet::{ControlNet, ControlNetConfig};
use crate::arch::unet::{MidBlock, UnetConfig, TEXT_TIME_IDS};

/// The original names' prefix in the A1111 ControlNet extension's files.
pub const CONTROL_PREFIX: &str = "control_model.";

/// SDXL's `addition_time_embed_dim` (SSD-1B's and Vega's too): the width of each of the six time ids'
/// sinusoids in the added embedding's input, the rest of which is the pooled text embedding.
const SDXL_TIME_EMBED_DIM: usize = 256;

/// Tensors that mark ControlNet files whose weights are not a whole ControlNet, refused by name.
const REFUSED_MARKERS: [(&str, &str); 2] = [
    (
        "difference",
        "is a difference ControlNet (a `difference` tensor: weights relative to a base model's UNet, as \
         Kohya's diff_control_* files); lcm loads whole ControlNets",
    ),
    (
        "lora_controlnet",
        "is a Control-LoRA (a `lora_controlnet` tensor: low-rank ControlNet weights); lcm loads whole ControlNets",
    ),
];

/// How the file names the ControlNet's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The original names after `prefix` ([`CONTROL_PREFIX`] or nothing).
    Original { prefix: &'static str },
    /// diffusers' ControlNetModel names.
    Diffusers,
}

/// The original name (without prefix) of a ControlNet-only module's parameter, given in diffusers
/// names; `None` for the encoder's (the UNet's names) and unknown names. The original
/// `input_hint_block` is one Sequential whose odd indices are the SiLUs between its convs:
/// `controlnet_cond_embedding.conv_in` = `.0`, `blocks.k` = `.{2k+2}`, `conv_out` the last, after the
/// `hint_blocks` inner convs. `controlnet_down_blocks.i` = `zero_convs.i.0`, `controlnet_mid_block` =
/// `middle_block_out.0`.
fn control_to_original(name: &str, hint_blocks: usize) -> Option<String> {
    let (module, param) = name.rsplit_once('.')?;
    let parts: Vec<&str> = module.split('.').collect();
    let original = match parts.as_slice() {
        ["controlnet_cond_embedding", "conv_in"] => "input_hint_block.0".to_string(),
        ["controlnet_cond_embedding", "blocks", k] => {
            let k: usize = k.parse().ok().filter(|&k| k < hint_blocks)?;
            format!("input_hint_block.{}", 2 * k + 2)
        }
        ["controlnet_cond_embedding", "conv_out"] => format!("input_hint_block.{}", 2 * hint_blocks + 2),
        ["controlnet_down_blocks", i] => format!("zero_convs.{}.0", i.parse::<usize>().ok()?),
        ["controlnet_mid_block"] => "middle_block_out.0".to_string(),
        _ => return None,
    };
    Some(format!("{original}.{param}"))
}

/// A single-file ControlNet, memory-mapped, its naming detected.
pub struct ControlNetFile {
    file: SafeTensorsFile,
    layout: Layout,
    /// The conditioning embedding's inner convs (`blocks.k`): two per level after the first. The
    /// original names number `conv_out` after them, so they are counted before any name is mapped.
    hint_blocks: usize,
}

impl ControlNetFile {
    /// Opens `path` and detects its naming by the conditioning embedding's first conv. A pickle, a file
    /// that is no ControlNet (a checkpoint, a LoRA, …), a difference ControlNet or a Control-LoRA, or a
    /// conditioning embedding with a conv missing, is refused naming the file and what was expected.
    pub fn open(path: impl AsRef<Path>) -> Result<ControlNetFile> {
        let path = path.as_ref();
        let file = open_safetensors(path)?;
        if let Some((_, why)) = REFUSED_MARKERS.iter().find(|(key, _)| file.contains(key)) {
            return Err(Error::file(path, *why));
        }
        let layout = [CONTROL_PREFIX, ""]
            .into_iter()
            .find(|p| file.contains(&format!("{p}input_hint_block.0.weight")))
            .map(|prefix| Layout::Original { prefix })
            .or_else(|| file.contains("controlnet_cond_embedding.conv_in.weight").then_some(Layout::Diffusers))
            .ok_or_else(|| Error::file(path, not_a_controlnet(&file)))?;
        let hint_blocks = match layout {
            Layout::Original { prefix } => original_hint_blocks(&file, prefix)?,
            Layout::Diffusers => {
                let has = |k: usize| file.contains(&format!("controlnet_cond_embedding.blocks.{k}.weight"));
                let n = (0..).take_while(|&k| has(k)).count();
                if n % 2 == 1 {
                    let missing = format!("controlnet_cond_embedding.blocks.{n}.weight");
                    return Err(Error::tensor(path, missing, "missing: the inner convs come in pairs, two per level"));
                }
                n
            }
        };
        Ok(ControlNetFile { file, layout, hint_blocks })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The config read from the shapes. With `base`, the config of the UNet it will run with, the
    /// head counts and GroupNorm groups are the base's (when the widths match) and SDXL's added
    /// embedding is split as the base's; without, the families' rules: SD1.5's 8 heads or SDXL's
    /// 64-wide ones, 32 groups, six 256-wide time ids. The control image's channel order (rgb) is no
    /// shape either.
    pub fn infer(&self, base: Option<&UnetConfig>) -> Result<ControlNetConfig> {
        let structure = self.diffusers_structure();
        let ldm_key = |ldm: &str| match self.layout {
            Layout::Original { prefix } => Some(format!("{prefix}{ldm}")),
            Layout::Diffusers => structure.as_ref().and_then(|s| s.to_diffusers(ldm)),
        };
        let view = View { file: &self.file, key: &ldm_key, what: "the ControlNet" };
        let pooled = pooled_dim(&view, base)?;
        let mut json = encoder_config(&view, pooled, base)?;

        let hint_key = |name: &str| self.control_key(name);
        let hint = View { file: &self.file, key: &hint_key, what: "the ControlNet's conditioning embedding" };
        let conv_in = hint.need("controlnet_cond_embedding.conv_in.weight", 4)?;
        let mut widths = vec![conv_in[0]];
        for level in 0..self.hint_blocks / 2 {
            // A level's second conv (stride 2) gives its width; its first keeps the previous one.
            widths.push(hint.need(&format!("controlnet_cond_embedding.blocks.{}.weight", 2 * level + 1), 4)?[0]);
        }
        json["_class_name"] = json!("ControlNetModel");
        json["conditioning_channels"] = json!(conv_in[1]);
        json["conditioning_embedding_out_channels"] = json!(widths);
        ControlNetConfig::parse_value(self.path(), json)
    }

    /// Loads the ControlNet as `config` describes it. Every key of the file (under `control_model.`:
    /// every key there) must be one of its weights; each weight must be present and shaped as the
    /// config says, and finite (widened from F16/BF16). Errors name the file and the tensor.
    pub fn load<B: Backend>(&self, backend: &B, config: ControlNetConfig) -> Result<ControlNet<B>> {
        let specs = config.weights()?;
        let unet = UnetLayout::from_config(&config.unet);
        let key = |name: &str| self.weight_key(&unet, name);
        let expected: HashSet<String> = specs.iter().filter_map(|s| key(&s.name)).collect();
        let scope = match self.layout {
            Layout::Original { prefix } => prefix,
            Layout::Diffusers => "",
        };
        let unknown: Vec<&str> = self.file.names().filter(|k| k.starts_with(scope) && !expected.contains(*k)).collect();
        if let [first, rest @ ..] = unknown.as_slice() {
            let more = if rest.is_empty() { String::new() } else { format!("; {} more unknown keys", rest.len()) };
            return Err(Error::tensor(
                self.path(),
                *first,
                format!("is not a weight of this ControlNet as its shapes describe it{more}"),
            ));
        }
        let file_key = |name: &str| key(name).map(FileKey::whole);
        let weights = upload_mapped(backend, &self.file, &specs, &file_key, "the ControlNet", None)?;
        Ok(ControlNet::new(config, weights))
    }

    /// The file key of a ControlNet-only weight, given in diffusers names.
    fn control_key(&self, name: &str) -> Option<String> {
        match self.layout {
            Layout::Original { prefix } => control_to_original(name, self.hint_blocks).map(|o| format!("{prefix}{o}")),
            Layout::Diffusers => Some(name.to_string()),
        }
    }

    /// The file key of any weight, given in diffusers names; `unet` maps the encoder's.
    fn weight_key(&self, unet: &UnetLayout, name: &str) -> Option<String> {
        match self.layout {
            Layout::Original { prefix } => {
                self.control_key(name).or_else(|| Some(format!("{prefix}{}", unet.to_ldm(name)?)))
            }
            Layout::Diffusers => Some(name.to_string()),
        }
    }

    /// For diffusers names, the encoder's structure counted from them (levels, resnets, attention, mid
    /// block), so that the shape reader's LDM names can be mapped onto them; `None` otherwise.
    fn diffusers_structure(&self) -> Option<UnetLayout> {
        if self.layout != Layout::Diffusers {
            return None;
        }
        let has = |name: String| self.file.contains(&name);
        let levels = (0..).take_while(|i| has(format!("down_blocks.{i}.resnets.0.conv1.weight"))).count();
        let resnets = |i: usize| (0..).take_while(|j| has(format!("down_blocks.{i}.resnets.{j}.conv1.weight"))).count();
        let attention = (0..levels).map(|i| has(format!("down_blocks.{i}.attentions.0.proj_in.weight"))).collect();
        let mid = if has("mid_block.attentions.0.proj_in.weight".into()) {
            MidBlock::CrossAttn
        } else if has("mid_block.resnets.0.conv1.weight".into()) {
            MidBlock::Resnet
        } else {
            MidBlock::None
        };
        Some(UnetLayout::with_mid((0..levels).map(resnets).collect(), attention, mid))
    }
}

/// The number of inner convs of the original `input_hint_block`, whose convs sit at the even indices
/// 0, 2, 4, … (the odd ones are SiLUs): conv_in, two per level after the first, conv_out. A gap, or
/// an odd number of inner convs (a conv cut off the end), is an error naming the missing tensor.
fn original_hint_blocks(file: &SafeTensorsFile, prefix: &str) -> Result<usize> {
    let stem = format!("{prefix}input_hint_block.");
    let mut indices: Vec<usize> =
        file.names().filter_map(|k| k.strip_prefix(&stem)?.split('.').next()?.parse().ok()).collect();
    indices.sort_unstable();
    indices.dedup();
    if let Some((i, found)) = indices.iter().enumerate().find(|&(i, &n)| n != 2 * i) {
        return Err(Error::tensor(
            file.path(),
            format!("{stem}{}.weight", 2 * i),
            format!(
                "missing: the conditioning embedding's convs are `input_hint_block.0`, `.2`, `.4`, … (SiLUs \
                 between them), but the next one in this file is `.{found}`"
            ),
        ));
    }
    let convs = indices.len();
    if convs < 2 || convs % 2 == 1 {
        return Err(Error::tensor(
            file.path(),
            format!("{stem}{}.weight", 2 * convs),
            format!(
                "missing: `input_hint_block` has {convs} convs (.0 to .{}); it needs conv_in, two convs per level \
                 after the first and conv_out, an even number",
                2 * convs - 2
            ),
        ));
    }
    Ok(convs - 2)
}

/// SDXL's pooled text width for the added embedding (`label_emb.0.0`), `None` without one: the base
/// UNet's, or the embedding's input less six [`SDXL_TIME_EMBED_DIM`]-wide time ids.
fn pooled_dim(v: &View, base: Option<&UnetConfig>) -> Result<Option<usize>> {
    let name = "label_emb.0.0.weight";
    let Some(shape) = v.shape(name) else { return Ok(None) };
    if let Some(t) = base.and_then(|b| b.text_time) {
        return Ok(Some(t.pooled_dim()));
    }
    let times = TEXT_TIME_IDS * SDXL_TIME_EMBED_DIM;
    match *shape {
        [_, input] if input > times => Ok(Some(input - times)),
        _ => Err(v.err(
            name,
            format!(
                "has shape {shape:?}: its input is not a pooled text embedding plus six {SDXL_TIME_EMBED_DIM}-wide \
                 time ids (SDXL's), the split assumed without the base UNet's config"
            ),
        )),
    }
}

/// Why a file with no conditioning embedding is no ControlNet, and what it looks like instead.
fn not_a_controlnet(file: &SafeTensorsFile) -> String {
    let names: Vec<&str> = file.names().collect();
    let has = |needle: &str| names.iter().any(|k| k.contains(needle));
    let elsewhere = names.iter().find(|k| k.ends_with("input_hint_block.0.weight"));
    let hint = if let Some(k) = elsewhere {
        format!("it has `{k}`: a conditioning embedding under a prefix lcm does not read")
    } else if names.iter().any(|k| k.starts_with(UNET_PREFIX)) {
        format!("it looks like a Stable Diffusion checkpoint (`{UNET_PREFIX}…`): pass it as the model")
    } else if has("lora_down") || has("lora_A") || names.iter().any(|k| k.starts_with("lora_")) {
        "it looks like a LoRA: pass it with --lora".to_string()
    } else if has("down_blocks.0.resnets.0.conv1.weight") {
        "it looks like a diffusers UNet file".to_string()
    } else {
        "it is none of the kinds lcm knows".to_string()
    };
    let first = names.first().copied().unwrap_or("(no tensors)");
    format!(
        "is not a ControlNet: none of its {} tensors (first: `{first}`) is a conditioning embedding's first conv \
         (`{CONTROL_PREFIX}input_hint_block.0.weight`, `input_hint_block.0.weight`, or in diffusers names \
         `controlnet_cond_embedding.conv_in.weight`); {hint}",
        names.len()
    )
}

impl<B: Backend> ControlNet<B> {
    /// Loads a single-file ControlNet, its config read from the shapes with the families' rules for
    /// what they do not give ([`ControlNetFile::infer`]).
    pub fn load_single_file(backend: &B, path: &Path) -> Result<Self> {
        Self::load_single_file_for(backend, path, None)
    }

    /// [`Self::load_single_file`] with the config of the UNet it will run with, `base`, for what the
    /// shapes do not give (head counts, GroupNorm groups, SDXL's added-embedding split).
    pub fn load_single_file_for(backend: &B, path: &Path, base: Option<&UnetConfig>) -> Result<Self> {
        let file = ControlNetFile::open(path)?;
        let config = file.infer(base)?;
        file.load(backend, config)
    }
}

#[cfg(test)]
mod tests {
    use super::control_to_original;

    #[test]
    fn control_names_follow_the_original_layout() {
        let cases = [
            ("controlnet_cond_embedding.conv_in.weight", Some("input_hint_block.0.weight")),
            ("controlnet_cond_embedding.blocks.0.bias", Some("input_hint_block.2.bias")),
            ("controlnet_cond_embedding.blocks.5.weight", Some("input_hint_block.12.weight")),
            ("controlnet_cond_embedding.conv_out.weight", Some("input_hint_block.14.weight")),
            ("controlnet_down_blocks.11.bias", Some("zero_convs.11.0.bias")),
            ("controlnet_mid_block.weight", Some("middle_block_out.0.weight")),
            ("controlnet_cond_embedding.blocks.6.weight", None),
            ("down_blocks.0.resnets.0.conv1.weight", None),
        ];
        for (diffusers, original) in cases {
            assert_eq!(control_to_original(diffusers, 6).as_deref(), original, "{diffusers}");
        }
    }
}
