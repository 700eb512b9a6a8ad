//! LoRA adapters merged into the weights as they load: W += s_user · s_net · up @ down.
//!
//! Files ([`LoraFile::open`]), detected per key, mixed files allowed:
//! - kohya: `lora_unet_<module>` / `lora_te_<module>` + `.lora_down.weight`, `.lora_up.weight`, `.alpha`
//!   (0-dim; absent → alpha = rank). `<module>` is the module path with dots turned into underscores, in
//!   diffusers naming (LCM-LoRA's own exporter, kohya's sd-scripts) or LDM naming (`input_blocks_1_1_…`,
//!   older files); text encoder paths with or without the `text_model` level. `lora_te1_` is an alias of
//!   `lora_te_` (the SDXL-era spelling of the first text encoder, which diffusers' and ComfyUI's loaders
//!   also take for SD1.5); `lora_te2_` is SDXL's second text encoder.
//! - peft (diffusers' `save_lora_weights`): `unet.<module>` / `text_encoder.<module>` /
//!   `text_encoder_2.<module>` + `.lora_A.weight`
//!   (down), `.lora_B.weight` (up); older diffusers' `.lora.down/up.weight` and
//!   `.lora_linear_layer.down/up.weight`, and its attention-processor files
//!   (`unet.….attn1.processor.to_q_lora.down.weight`, `…to_out_lora…` for `to_out.0`); an optional `.alpha`
//!   tensor. Without one, alpha comes from the peft config diffusers stores as JSON in the header
//!   (`__metadata__["lora_adapter_metadata"]`: `unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`,
//!   `unet.rank_pattern`, `unet.use_rslora`, …); without that, alpha = rank, as diffusers assumes.
//!
//! Refused by name ([`refused_kind`]), as diffusers 0.42 cannot load them either or would load them
//! wrongly: LoCon convs with a CP middle factor (`lora_mid`), DoRA (`dora_scale`, or `use_dora` in a
//! peft header; diffusers drops the magnitude with a warning), LoHa/LoKr (`hada_*`, `lokr_*`) and
//! `lycoris_`-prefixed names. A second-text-encoder module on a model with one text encoder matches
//! nothing and is an error naming it.
//!
//! s_net = alpha/rank (alpha/√rank for rsLoRA). Underscored kohya names are ambiguous (`to_q`,
//! `conv_shortcut`, `down_blocks` hold underscores themselves), so nothing is un-underscored: every
//! weight of the model is underscored instead, and a LoRA module resolves by exact lookup
//! ([`LoraSet::resolve`]) to exactly one weight, or fails naming the LoRA key. Nothing is skipped
//! silently, with one exception by design: a text-encoder LoRA on a layer that `clip_skip` leaves out is
//! checked against that layer's shapes and then not applied ([`Merger::skipped`]) — the layer never
//! runs, so the LoRA could not change the output anyway, and the same file must work at any clip_skip.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result, SafeTensorsFile, WeightKind, WeightSpec};
use lcm_cpu::gemm::{gemm, MatRef};
use lcm_models::arch::clip::ClipOutput;
use lcm_models::{ClipConfig, UnetConfig};

use crate::ldm_names::UnetLayout;
use crate::lora_peft::PeftConfig;

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
    fn describe(self) -> &'static str {
        match self {
            Component::Unet => "the UNet",
            Component::TextEncoder => "the text encoder",
            Component::TextEncoder2 => "the second text encoder (text_encoder_2, SDXL's)",
        }
    }
}

/// What the second text encoder's weights are called in LoRA plans and targets, so that they do not
/// collide with the first one's (both are `text_model.…`).
pub const TEXT_ENCODER_2_PREFIX: &str = "text_encoder_2.";

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
    fn factors(&self, t: &LoraTensor) -> Result<(Vec<f32>, Vec<f32>)> {
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
    if format == LoraFormat::Peft && meta.flag(component, "use_dora") {
        // DoRA rescales each column of W + Δ; merged as plain LoRA it would be silently wrong.
        return Err(Error::file(path, "is a DoRA adapter (use_dora in its header); only plain LoRA is supported"));
    }
    let alpha = match &keys.alpha {
        Some(k) => match file.get(k)?.to_f32().as_slice() {
            &[a] if a.is_finite() => Some(a),
            other => return Err(Error::tensor(path, k, format!("alpha must be one finite number, got {other:?}"))),
        },
        None if format == LoraFormat::Peft => meta.alpha(path, component, &key_stem, rank)?,
        None => None,
    };
    let rslora = format == LoraFormat::Peft && meta.flag(component, "use_rslora");
    let scale = match alpha {
        Some(a) if rslora => a / (rank as f32).sqrt(),
        Some(a) => a / rank as f32,
        None => 1.0,
    };
    Ok(LoraTensor { key_stem, component, format, down_key, up_key, down_shape, up_shape, rank, alpha, scale })
}

/// The weights LoRAs may target, as the models' graphs name them.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The UNet graph's weights.
    pub unet: Vec<WeightSpec>,
    /// Needed to read LDM-named kohya keys (`lora_unet_input_blocks_…`); `None`: diffusers names only.
    pub unet_layout: Option<UnetLayout>,
    /// The text-encoder graph's weights (the layers `clip_skip` keeps).
    pub text_encoder: Vec<WeightSpec>,
    /// Text-encoder weights of layers that clip_skip leaves out (never loaded).
    pub text_encoder_skipped: Vec<WeightSpec>,
    /// SDXL's second text encoder's weights, named [`TEXT_ENCODER_2_PREFIX`] + its own names.
    pub text_encoder_2: Vec<WeightSpec>,
    /// Its weights that clip_skip leaves out, named likewise.
    pub text_encoder_2_skipped: Vec<WeightSpec>,
}

impl Targets {
    /// The weights of a UNet and a text encoder with these configs, with the UNet's LDM layout.
    pub fn for_models(unet: &UnetConfig, clip: &ClipConfig) -> Result<Targets> {
        let (text_encoder, text_encoder_skipped) = encoder_weights(clip)?;
        Ok(Targets {
            // Which weights a UNet has does not depend on the latent size.
            unet: unet.graph(1, 8, 8, 1)?.weights,
            unet_layout: Some(UnetLayout::from_config(unet)),
            text_encoder,
            text_encoder_skipped,
            text_encoder_2: Vec::new(),
            text_encoder_2_skipped: Vec::new(),
        })
    }

    /// [`Self::for_models`] with SDXL's second text encoder.
    pub fn for_sdxl(unet: &UnetConfig, clip: &ClipConfig, clip_2: &ClipConfig) -> Result<Targets> {
        let mut t = Self::for_models(unet, clip)?;
        let rename = |specs: Vec<WeightSpec>| -> Vec<WeightSpec> {
            specs.into_iter().map(|s| WeightSpec { name: format!("{TEXT_ENCODER_2_PREFIX}{}", s.name), ..s }).collect()
        };
        let (loaded, skipped) = encoder_weights(clip_2)?;
        (t.text_encoder_2, t.text_encoder_2_skipped) = (rename(loaded), rename(skipped));
        Ok(t)
    }
}

/// A text encoder's weights: those its graph reads, and those of the layers `clip_skip` leaves out.
fn encoder_weights(clip: &ClipConfig) -> Result<(Vec<WeightSpec>, Vec<WeightSpec>)> {
    let loaded = clip.graph(1, 1)?.weights;
    let names: HashSet<&str> = loaded.iter().map(|s| s.name.as_str()).collect();
    let all = ClipConfig { clip_skip: 0, output: ClipOutput::FinalNorm, ..clip.clone() }.graph(1, 1)?.weights;
    let skipped = all.into_iter().filter(|s| !names.contains(s.name.as_str())).collect();
    Ok((loaded, skipped))
}

/// Every name a LoRA file may give a target weight → that weight.
struct Index<'t> {
    by_key: HashMap<String, Vec<(&'t WeightSpec, bool)>>,
}

impl<'t> Index<'t> {
    fn new(t: &'t Targets) -> Self {
        let mut by_key: HashMap<String, Vec<(&WeightSpec, bool)>> = HashMap::new();
        let mut add = |key: String, spec: &'t WeightSpec, skipped: bool| {
            let hits = by_key.entry(key).or_default();
            if !hits.iter().any(|(s, _)| s.name == spec.name) {
                hits.push((spec, skipped));
            }
        };
        let lora_targets = |specs: &'t [WeightSpec]| {
            specs
                .iter()
                .filter(|s| matches!(s.kind, WeightKind::Linear | WeightKind::Conv))
                .filter_map(|s| s.name.strip_suffix(".weight").map(|m| (s, m)))
        };
        for (spec, m) in lora_targets(&t.unet) {
            add(format!("unet.{m}"), spec, false);
            add(format!("lora_unet_{}", m.replace('.', "_")), spec, false);
            if let Some(ldm) = t.unet_layout.as_ref().and_then(|l| l.to_ldm(m)) {
                add(format!("lora_unet_{}", ldm.replace('.', "_")), spec, false);
            }
            if let Some(processor) = attention_processor_name(m) {
                add(format!("unet.{processor}"), spec, false);
            }
        }
        let te = lora_targets(&t.text_encoder).map(|x| (x, false));
        for ((spec, m), skipped) in te.chain(lora_targets(&t.text_encoder_skipped).map(|x| (x, true))) {
            // transformers 5 saves CLIPTextModel without the `text_model.` level; accept both spellings.
            for m in [m, m.strip_prefix("text_model.").unwrap_or(m)] {
                add(format!("text_encoder.{m}"), spec, skipped);
                add(format!("lora_te_{}", m.replace('.', "_")), spec, skipped);
                add(format!("lora_te1_{}", m.replace('.', "_")), spec, skipped);
            }
        }
        let te2 = lora_targets(&t.text_encoder_2).map(|x| (x, false));
        for ((spec, m), skipped) in te2.chain(lora_targets(&t.text_encoder_2_skipped).map(|x| (x, true))) {
            let m = m.strip_prefix(TEXT_ENCODER_2_PREFIX).unwrap_or(m);
            for m in [m, m.strip_prefix("text_model.").unwrap_or(m)] {
                add(format!("text_encoder_2.{m}"), spec, skipped);
                add(format!("lora_te2_{}", m.replace('.', "_")), spec, skipped);
            }
        }
        Index { by_key }
    }

    fn find(&self, file: &LoraFile, t: &LoraTensor, targets: &Targets) -> Result<(&'t WeightSpec, bool)> {
        match self.by_key.get(&t.key_stem).map(Vec::as_slice) {
            Some(&[hit]) => Ok(hit),
            Some(hits) => {
                let names: Vec<&str> = hits.iter().map(|(s, _)| s.name.as_str()).collect();
                Err(Error::tensor(&file.path, &t.down_key, format!("is ambiguous: it could target {names:?}")))
            }
            None => {
                let hint = match t.component {
                    Component::Unet if t.format == LoraFormat::Kohya && targets.unet_layout.is_none() => {
                        " (LDM-named keys need the UNet's layout)"
                    }
                    Component::TextEncoder2 if targets.text_encoder_2.is_empty() => {
                        " (this model has one text encoder: the LoRA is for SDXL)"
                    }
                    _ => "",
                };
                let what = t.component.describe();
                Err(Error::tensor(&file.path, &t.down_key, format!("matches no module of {what}{hint}")))
            }
        }
    }
}

/// The name diffusers' attention-processor LoRA files give an attention projection:
/// `….attn1.to_q` → `….attn1.processor.to_q`, `….to_out.0` → `….processor.to_out` (its
/// `_lora.down.weight` suffix is split off by [`classify`]).
fn attention_processor_name(module: &str) -> Option<String> {
    let (attn, proj) = module.rsplit_once(".to_")?;
    if !(attn.ends_with(".attn1") || attn.ends_with(".attn2")) {
        return None;
    }
    let proj = match proj {
        "q" | "k" | "v" => proj,
        "out.0" => "out",
        _ => return None,
    };
    Some(format!("{attn}.processor.to_{proj}"))
}

/// Checks that `t`'s delta has `spec`'s shape. A 1×1 conv and a linear layer take the same factors
/// (peft and kohya files flatten or keep the 1×1 kernel depending on the model they were trained on).
fn check_fit(file: &LoraFile, t: &LoraTensor, spec: &WeightSpec) -> Result<()> {
    let (out, inner) = match spec.shape.as_slice() {
        [o, rest @ ..] if !rest.is_empty() => (*o, rest),
        _ => return Err(Error::tensor(&file.path, &t.down_key, format!("targets `{}`, not a matrix", spec.name))),
    };
    let down_in = &t.down_shape[1..];
    let is_1x1 = |s: &[usize]| s[1..].iter().all(|&k| k == 1);
    let fits_in = down_in == inner || (is_1x1(inner) && is_1x1(down_in) && down_in[0] == inner[0]);
    if fits_in && t.up_shape[0] == out {
        return Ok(());
    }
    Err(Error::tensor(
        &file.path,
        &t.down_key,
        format!(
            "does not fit `{}` {:?}: down is {:?}, up is {:?} (expected [rank, {}] and [{out}, rank])",
            spec.name,
            spec.shape,
            t.down_shape,
            t.up_shape,
            inner.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Several LoRA files applied together, each with its own user scale.
pub struct LoraSet {
    /// The files, in the order given.
    pub files: Vec<LoraFile>,
}

/// One LoRA module on one target: file index, module index.
#[derive(Debug, Clone, Copy)]
struct Use {
    file: usize,
    tensor: usize,
}

struct Plan {
    shape: Vec<usize>,
    uses: Vec<Use>,
}

impl LoraSet {
    /// A set of already opened files.
    pub fn new(files: Vec<LoraFile>) -> Self {
        LoraSet { files }
    }

    /// Opens each `(path, user_scale)`.
    pub fn open<P: AsRef<Path>>(files: &[(P, f32)]) -> Result<Self> {
        Ok(LoraSet { files: files.iter().map(|(p, s)| LoraFile::open(p, *s)).collect::<Result<_>>()? })
    }

    /// Maps every LoRA module to exactly one weight of `targets` and checks its shapes, or fails naming
    /// the first module that does not fit.
    pub fn resolve(&self, targets: &Targets) -> Result<Merger<'_>> {
        let index = Index::new(targets);
        let mut plan: BTreeMap<String, Plan> = BTreeMap::new();
        let mut skipped = Vec::new();
        for (fi, file) in self.files.iter().enumerate() {
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for (ti, t) in file.tensors.iter().enumerate() {
                let (spec, is_skipped) = index.find(file, t, targets)?;
                check_fit(file, t, spec)?;
                if let Some(first) = seen.insert(&spec.name, &t.key_stem) {
                    let msg = format!("targets `{}`, as `{first}` in the same file does", spec.name);
                    return Err(Error::tensor(&file.path, &t.down_key, msg));
                }
                let u = Use { file: fi, tensor: ti };
                if is_skipped {
                    skipped.push(u);
                } else {
                    let p =
                        plan.entry(spec.name.clone()).or_insert(Plan { shape: spec.shape.clone(), uses: Vec::new() });
                    p.uses.push(u);
                }
            }
        }
        Ok(Merger { set: self, plan, applied: BTreeSet::new(), skipped, delta: Vec::new() })
    }
}

/// A LoRA's factors for one target, for a backend that applies them unmerged: Δ = scale · up @ down.
#[derive(Debug, Clone)]
pub struct LoraFactors {
    /// The LoRA file they come from.
    pub file: PathBuf,
    /// The module's key stem in that file.
    pub key_stem: String,
    /// `[rank, in·kh·kw]` row-major (torch's layout of down, flattened).
    pub down: Vec<f32>,
    /// `[out, rank]` row-major.
    pub up: Vec<f32>,
    /// r: rows of `down`, columns of `up`.
    pub rank: usize,
    /// s_user · s_net (s_net: alpha/rank, alpha/√rank for rsLoRA, 1 without an alpha).
    pub scale: f32,
}

/// The resolved LoRAs, applied to each target weight as it loads.
pub struct Merger<'s> {
    set: &'s LoraSet,
    plan: BTreeMap<String, Plan>,
    applied: BTreeSet<String>,
    skipped: Vec<Use>,
    /// Scratch for one target's delta.
    delta: Vec<f32>,
}

impl<'s> Merger<'s> {
    /// The summed rank of every LoRA on weight `name` (0 when none targets it): what unmerged buffers
    /// for it must hold.
    pub fn rank(&self, name: &str) -> usize {
        self.plan.get(name).map_or(0, |p| p.uses.iter().map(|u| self.set.files[u.file].tensors[u.tensor].rank).sum())
    }

    /// Names of the weights some LoRA changes.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.plan.keys().map(String::as_str)
    }

    /// `(file, key stem)` of LoRA modules left out because their text-encoder layer is skipped.
    pub fn skipped(&self) -> impl Iterator<Item = (&'s Path, &'s str)> + '_ {
        self.skipped.iter().map(|u| {
            let f = &self.set.files[u.file];
            (f.path.as_path(), f.tensors[u.tensor].key_stem.as_str())
        })
    }

    /// The factors every LoRA contributes to weight `name` (empty when none targets it).
    pub fn factors(&self, name: &str) -> Result<Vec<LoraFactors>> {
        let Some(plan) = self.plan.get(name) else { return Ok(Vec::new()) };
        plan.uses
            .iter()
            .map(|u| {
                let f = &self.set.files[u.file];
                let t = &f.tensors[u.tensor];
                let (down, up) = f.factors(t)?;
                let (file, key_stem, rank, scale) =
                    (f.path.clone(), t.key_stem.clone(), t.rank, f.user_scale * t.scale);
                Ok(LoraFactors { file, key_stem, down, up, rank, scale })
            })
            .collect()
    }

    /// Adds every LoRA delta for `spec` to `w` (torch layout, f32); other weights pass unchanged.
    pub fn apply(&mut self, spec: &WeightSpec, w: &mut [f32]) -> Result<()> {
        let Some(plan) = self.plan.get(&spec.name) else { return Ok(()) };
        if spec.shape != plan.shape || w.len() != plan.shape.iter().product::<usize>() {
            return Err(Error::invalid(
                &spec.name,
                format!("LoRAs were resolved for shape {:?}, the weight loads as {:?}", plan.shape, spec.shape),
            ));
        }
        let out = plan.shape[0];
        let k = w.len() / out;
        for f in self.factors(&spec.name)? {
            // One GEMM per LoRA, Δ[out, k] = up[out, r] @ down[r, k], folded in with its scale: a rank-64
            // LoRA on SD1.5 is ~50 GMAC to merge (target parameters × rank), too many for plain loops.
            self.delta.resize(w.len(), 0.0);
            let up = MatRef { data: &f.up, rs: f.rank, cs: 1 };
            let down = MatRef { data: &f.down, rs: k, cs: 1 };
            gemm(out, k, f.rank, up, down, &mut self.delta);
            w.iter_mut().zip(&self.delta).for_each(|(w, d)| *w += f.scale * d);
        }
        self.applied.insert(spec.name.clone());
        Ok(())
    }

    /// [`Self::apply`] as the loaders' weight hook (`lcm_models::WeightHook`).
    pub fn hook(&mut self) -> impl FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()> + use<'_, 's> {
        move |spec, w| self.apply(spec, w)
    }

    /// The hook for SDXL's second text encoder, whose weights the plan names with
    /// [`TEXT_ENCODER_2_PREFIX`].
    pub fn hook_text_encoder_2(&mut self) -> impl FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()> + use<'_, 's> {
        move |spec, w| {
            let named = WeightSpec { name: format!("{TEXT_ENCODER_2_PREFIX}{}", spec.name), ..spec.clone() };
            self.apply(&named, w)
        }
    }

    /// Fails if a LoRA target was never loaded (its model not loaded, or loaded without this hook).
    pub fn finish(&self) -> Result<()> {
        let mut missing = self.plan.iter().filter(|(name, _)| !self.applied.contains(*name));
        let Some((name, plan)) = missing.next() else { return Ok(()) };
        let f = &self.set.files[plan.uses[0].file];
        let t = &f.tensors[plan.uses[0].tensor];
        let more = missing.count();
        let more = if more > 0 { format!(" ({more} more targets were not loaded either)") } else { String::new() };
        Err(Error::tensor(&f.path, &t.down_key, format!("targets `{name}`, which was never loaded{more}")))
    }
}
