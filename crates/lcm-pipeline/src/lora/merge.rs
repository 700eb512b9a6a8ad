//! A set of LoRA files resolved onto a model's weights ([`LoraSet::resolve`]) and merged into them as
//! they load ([`Merger`]), or handed out as factors for a backend that applies them unmerged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result, WeightSpec};
use lcm_cpu::gemm::{gemm, MatRef};

use super::file::LoraFile;
use super::targets::{check_fit, Index, Targets, TEXT_ENCODER_2_PREFIX};
use crate::spec::LoraSpec;

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

    /// Opens the files `loras` name, each with its scale.
    pub fn from_specs(loras: &[LoraSpec]) -> Result<Self> {
        Ok(LoraSet { files: loras.iter().map(|l| LoraFile::open(&l.path, l.scale)).collect::<Result<_>>()? })
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
