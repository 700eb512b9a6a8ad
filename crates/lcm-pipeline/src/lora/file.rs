//! LoRA files: their key conventions (kohya, peft and older diffusers spellings), their modules'
//! factors and how they scale ([`LoraFile::open`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result, SafeTensorsFile};

use super::peft::PeftConfig;

/// The model a LoRA module adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// `lora_unet_…`, `unet.…`.
    Unet,
    /// `lora_te_…`, `lora_te1_…`, `text_encoder.…`.
    TextEncoder,
    /// SDXL's second text encoder: `lora_te2_…`, `text_encoder_2.…`.
    TextEncoder2,
}

impl Component {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Component::Unet => "the UNet",
            Component::TextEncoder => "the text encoder",
            Component::TextEncoder2 => "the second text encoder (text_encoder_2, SDXL's)",
        }
    }

    /// Its name in peft keys and in the peft configs of a file's header: `unet`, `text_encoder`, …
    pub(super) fn peft_prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// The naming convention of a LoRA module's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraFormat {
    /// `lora_unet_`/`lora_te_` + underscored module path + `.lora_down.weight`/`.lora_up.weight`/`.alpha`.
    Kohya,
    /// `unet.`/`text_encoder.` + dotted module path + `.lora_A.weight`/`.lora_B.weight` (or older
    /// diffusers spellings), alpha from an `.alpha` tensor or the header's peft config.
    Peft,
}

/// One LoRA module of a file: where its factors lie and how they scale. The factors stay in the mapped
/// file until a weight needs them.
#[derive(Debug, Clone)]
pub struct LoraTensor {
    /// The key without its factor suffix: `lora_unet_down_blocks_0_…_to_q`, `unet.down_blocks.0.….to_q`.
    pub key_stem: String,
    /// The model it adapts.
    pub component: Component,
    /// The key convention it was found in.
    pub format: LoraFormat,
    /// The file key of the down factor (A).
    pub down_key: String,
    /// The file key of the up factor (B).
    pub up_key: String,
    /// `[rank, in]` or `[rank, in, kh, kw]`.
    pub down_shape: Vec<usize>,
    /// `[out, rank]` or `[out, rank, 1, 1]`.
    pub up_shape: Vec<usize>,
    /// r: rows of down, columns of up.
    pub rank: usize,
    /// From the `.alpha` tensor or, for peft files, the header's `lora_alpha`/`alpha_pattern`; `None`
    /// when neither gives one.
    pub alpha: Option<f32>,
    /// s_net: alpha/rank, alpha/√rank for rsLoRA, 1 when no alpha is known.
    pub scale: f32,
}

/// A parsed LoRA file with the user's scale for it.
pub struct LoraFile {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// s_user: multiplies every delta of this file.
    pub user_scale: f32,
    /// Its modules, ordered by key stem.
    pub tensors: Vec<LoraTensor>,
    file: SafeTensorsFile,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

const KOHYA_PARTS: [(&str, Part); 3] =
    [(".lora_down.weight", Part::Down), (".lora_up.weight", Part::Up), (".alpha", Part::Alpha)];
const PEFT_PARTS: [(&str, Part); 9] = [
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora.down.weight", Part::Down),
    (".lora.up.weight", Part::Up),
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    // diffusers' attention-processor LoRAs: `…attn1.processor.to_q_lora.down.weight`.
    ("_lora.down.weight", Part::Down),
    ("_lora.up.weight", Part::Up),
    (".alpha", Part::Alpha),
];
const FORMATS: &str = "expected kohya `lora_unet_…`/`lora_te_…`/`lora_te1_…`/`lora_te2_…` + `.lora_down.weight`/\
                       `.lora_up.weight`/`.alpha`, or peft `unet.…`/`text_encoder.…`/`text_encoder_2.…` + \
                       `.lora_A.weight`/`.lora_B.weight`";

/// What a key of a LoRA-like format lcm does not merge is, or `None`.
pub fn refused_kind(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let module_part = key.rsplit('.').nth(1).unwrap_or("");
    if module_part == "lora_mid" {
        return Some(
            "is the middle factor of a LoCon conv LoRA with CP decomposition (`lora_mid`); only plain \
             down/up factors are supported (diffusers cannot load these either)",
        );
    }
    if last == "dora_scale" {
        return Some(
            "is a DoRA magnitude (`dora_scale`); only plain LoRA is supported (diffusers drops it with a warning \
             and merges the rest as a LoRA, which is not the adapter as trained)",
        );
    }
    if last.starts_with("hada_") || module_part.starts_with("hada_") {
        return Some("is a LyCORIS LoHa factor (`hada_…`); only plain LoRA is supported (diffusers cannot load LoHa)");
    }
    if last.starts_with("lokr_") || module_part.starts_with("lokr_") {
        return Some("is a LyCORIS LoKr factor (`lokr_…`); only plain LoRA is supported");
    }
    if key.starts_with("lycoris_") {
        return Some(
            "uses the `lycoris_` prefix, which diffusers does not load; kohya names (`lora_unet_…`) are expected",
        );
    }
    None
}

/// `key` → (format, component, stem, part), or `None` for a key in no known format.
fn classify(key: &str) -> Option<(LoraFormat, Component, &str, Part)> {
    let (format, component, parts): (_, _, &[(&str, Part)]) = if key.starts_with("lora_unet_") {
        (LoraFormat::Kohya, Component::Unet, &KOHYA_PARTS)
    } else if key.starts_with("lora_te_") || key.starts_with("lora_te1_") {
        (LoraFormat::Kohya, Component::TextEncoder, &KOHYA_PARTS)
    } else if key.starts_with("lora_te2_") {
        (LoraFormat::Kohya, Component::TextEncoder2, &KOHYA_PARTS)
    } else if key.starts_with("unet.") {
        (LoraFormat::Peft, Component::Unet, &PEFT_PARTS)
    } else if key.starts_with("text_encoder.") {
        (LoraFormat::Peft, Component::TextEncoder, &PEFT_PARTS)
    } else if key.starts_with("text_encoder_2.") {
        (LoraFormat::Peft, Component::TextEncoder2, &PEFT_PARTS)
    } else {
        return None;
    };
    parts.iter().find_map(|&(suffix, part)| key.strip_suffix(suffix).map(|stem| (format, component, stem, part)))
}

#[derive(Default)]
struct Keys {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

impl LoraFile {
    /// Parses `path`; every key must belong to a complete LoRA module (down and up factors of matching
    /// rank, optionally an alpha). `user_scale` multiplies every delta of this file.
    pub fn open(path: impl AsRef<Path>, user_scale: f32) -> Result<LoraFile> {
        let path = path.as_ref().to_path_buf();
        if !user_scale.is_finite() {
            return Err(Error::invalid(format!("LoRA scale for {}", path.display()), "must be a finite number"));
        }
        let file = SafeTensorsFile::open(&path)?;
        let meta = PeftConfig::read(&path)?;
        let mut modules: BTreeMap<(String, LoraFormat, Component), Keys> = BTreeMap::new();
        for key in file.names() {
            if let Some(why) = refused_kind(key) {
                return Err(Error::tensor(&path, key, why));
            }
            let (format, component, stem, part) = classify(key).ok_or_else(|| {
                Error::tensor(&path, key, format!("is in none of the known LoRA formats ({FORMATS})"))
            })?;
            let keys = modules.entry((stem.to_string(), format, component)).or_default();
            let slot = match part {
                Part::Down => &mut keys.down,
                Part::Up => &mut keys.up,
                Part::Alpha => &mut keys.alpha,
            };
            if let Some(other) = slot.replace(key.to_string()) {
                return Err(Error::tensor(&path, key, format!("duplicates `{other}` (the same factor twice)")));
            }
        }
        if modules.is_empty() {
            return Err(Error::file(&path, "holds no tensors; expected a LoRA"));
        }
        let tensors = modules
            .into_iter()
            .map(|((stem, format, component), keys)| module(&file, &meta, stem, format, component, keys))
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraFile { path, user_scale, tensors, file })
    }

    /// The factors of `t` in f32, as `([rank, in·kh·kw], [out, rank])` row-major.
    pub(super) fn factors(&self, t: &LoraTensor) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.file.get(&t.down_key)?.to_f32(), self.file.get(&t.up_key)?.to_f32()))
    }
}

fn module(
    file: &SafeTensorsFile,
    meta: &PeftConfig,
    key_stem: String,
    format: LoraFormat,
    component: Component,
    keys: Keys,
) -> Result<LoraTensor> {
    let path = file.path();
    let (down_name, up_name) = match format {
        LoraFormat::Kohya => ("lora_down", "lora_up"),
        LoraFormat::Peft => ("lora_A", "lora_B"),
    };
    let (down_key, up_key) = match (keys.down, keys.up) {
        (Some(d), Some(u)) => (d, u),
        (d, u) => {
            let missing = if u.is_none() { up_name } else { down_name };
            let present = d.or(u).or(keys.alpha).unwrap_or_default();
            return Err(Error::tensor(path, present, format!("has no `{missing}` partner: a LoRA needs both factors")));
        }
    };
    let down_shape = file.get(&down_key)?.shape.to_vec();
    let up_shape = file.get(&up_key)?.shape.to_vec();
    let rank = down_shape.first().copied().unwrap_or(0);
    let down_ok = matches!(down_shape.len(), 2 | 4) && rank > 0;
    let up_ok = up_shape.len() == 2 || (up_shape.len() == 4 && up_shape[2..] == [1, 1]);
    if !down_ok || !up_ok || up_shape[1] != rank {
        return Err(Error::tensor(
            path,
            &down_key,
            format!(
                "{down_name} is {down_shape:?} (rank {rank}) and {up_name} `{up_key}` is {up_shape:?}; \
                 expected [rank, in(, kh, kw)] and [out, rank(, 1, 1)] with the same rank"
            ),
        ));
    }
    if format == LoraFormat::Peft && meta.flag(component.peft_prefix(), "use_dora") {
        // DoRA rescales each column of W + Δ; merged as plain LoRA it would be silently wrong.
        return Err(Error::file(path, "is a DoRA adapter (use_dora in its header); only plain LoRA is supported"));
    }
    let alpha = match &keys.alpha {
        Some(k) => match file.get(k)?.to_f32().as_slice() {
            &[a] if a.is_finite() => Some(a),
            other => return Err(Error::tensor(path, k, format!("alpha must be one finite number, got {other:?}"))),
        },
        None if format == LoraFormat::Peft => meta.alpha(path, component.peft_prefix(), &key_stem, rank)?,
        None => None,
    };
    let rslora = format == LoraFormat::Peft && meta.flag(component.peft_prefix(), "use_rslora");
    let scale = match alpha {
        Some(a) if rslora => a / (rank as f32).sqrt(),
        Some(a) => a / rank as f32,
        None => 1.0,
    };
    Ok(LoraTensor { key_stem, component, format, down_key, up_key, down_shape, up_shape, rank, alpha, scale })
}
