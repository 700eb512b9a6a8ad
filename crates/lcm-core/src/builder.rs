//! Builds a [`Graph`] op by op with shape inference.
//!
//! Model code calls these methods in forward order. A shape that does not fit (a config whose numbers
//! disagree with each other) is recorded as the first error and returned by [`GraphBuilder::finish`],
//! so model code stays free of `?` on every line and nothing panics on a bad config.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{
    Activation, Elem, Graph, KeyLimit, MapKind, Op, Storage, TensorDesc, TensorId, WeightKind, WeightSpec,
};
use crate::lcm::{Sampling, STEP_ROW};

/// A graph under construction: its tensors and ops in forward order, weights deduplicated by checkpoint
/// name within their model ([`GraphBuilder::set_weight_scope`]), and the first shape error met.
#[derive(Default)]
pub struct GraphBuilder {
    g: Graph,
    weight_ids: HashMap<(usize, String), TensorId>,
    /// The model each weight belongs to, by index into `g.weights`.
    weight_scopes: Vec<usize>,
    /// The model weights declared now belong to.
    scope: usize,
    error: Option<String>,
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    fn tensor(&mut self, shape: Vec<usize>, elem: Elem, storage: Storage) -> TensorId {
        self.g.tensors.push(TensorDesc { shape, elem, storage });
        self.g.tensors.len() - 1
    }

    fn act(&mut self, shape: Vec<usize>) -> TensorId {
        self.tensor(shape, Elem::Act, Storage::Activation)
    }

    /// Shape of `t`.
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.g.tensors[t].shape
    }

    /// Channels (last dimension) of `t`.
    pub fn channels(&self, t: TensorId) -> usize {
        *self.shape(t).last().unwrap_or(&0)
    }

    /// A new graph input; inputs are numbered in call order (the `i` of [`crate::Executor::set_input`]).
    pub fn input(&mut self, shape: &[usize], elem: Elem) -> TensorId {
        let idx = self.g.inputs.len();
        let t = self.tensor(shape.to_vec(), elem, Storage::Input(idx));
        self.g.inputs.push(t);
        t
    }

    /// Marks `t` as the next graph output (the `i` of [`crate::Executor::output`]).
    pub fn output(&mut self, t: TensorId) {
        self.g.outputs.push(t);
    }

    /// Weights declared from now on belong to model `scope`: 0 (the default) is the graph's own model,
    /// k the k-th further model whose weights an executor runs the graph with
    /// ([`crate::Executor::with_parts`]; a ControlNet inside a UNet's denoising loop). Names are
    /// deduplicated within a model, and [`GraphBuilder::finish`] orders the weights model by model,
    /// each in its declaration order, so a model's part is the list its own graph declares.
    pub fn set_weight_scope(&mut self, scope: usize) {
        self.scope = scope;
    }

    /// The weight `name` of `shape`; the same name twice gives the same tensor (and must agree in shape).
    pub fn weight(&mut self, name: &str, shape: &[usize], kind: WeightKind) -> TensorId {
        let key = (self.scope, name.to_string());
        if let Some(&t) = self.weight_ids.get(&key) {
            if self.g.tensors[t].shape != shape {
                self.fail(format!("weight {name} used with shapes {:?} and {shape:?}", self.g.tensors[t].shape));
            }
            return t;
        }
        let idx = self.g.weights.len();
        self.g.weights.push(WeightSpec { name: name.to_string(), shape: shape.to_vec(), kind });
        self.weight_scopes.push(self.scope);
        let t = self.tensor(shape.to_vec(), Elem::Act, Storage::Weight(idx));
        self.weight_ids.insert(key, t);
        t
    }

    fn push(&mut self, op: Op) -> TensorId {
        let out = op.output();
        self.g.ops.push(op);
        out
    }

    /// `prefix.weight` `[co, ci, k, k]` and optional `prefix.bias`, applied to NHWC `x`.
    pub fn conv2d(
        &mut self,
        prefix: &str,
        x: TensorId,
        co: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        bias: bool,
    ) -> TensorId {
        let ci = self.channels(x);
        let w = self.weight(&format!("{prefix}.weight"), &[co, ci, k, k], WeightKind::Conv);
        let b = bias.then(|| self.weight(&format!("{prefix}.bias"), &[co], WeightKind::Plain));
        let s = self.shape(x).to_vec();
        if s.len() != 4 || stride == 0 {
            self.fail(format!("{prefix}: conv input must be NHWC, got {s:?}"));
            return self.act(vec![0; 4]);
        }
        let out_dim = |n: usize, p0: usize, p1: usize| (n + p0 + p1).saturating_sub(k) / stride + 1;
        if s[1] + pad[0] + pad[2] < k || s[2] + pad[1] + pad[3] < k {
            self.fail(format!("{prefix}: input {}x{} is smaller than the {k}x{k} kernel", s[1], s[2]));
        }
        let out = self.act(vec![s[0], out_dim(s[1], pad[0], pad[2]), out_dim(s[2], pad[1], pad[3]), co]);
        self.push(Op::Conv2d { x, w, bias: b, residual: None, stride, pad, out })
    }

    /// `prefix.weight` `[n, k]` (and `prefix.bias` if `bias`) over the last dimension of `x`.
    pub fn linear(&mut self, prefix: &str, x: TensorId, n: usize, bias: bool) -> TensorId {
        let k = self.channels(x);
        let w = self.weight(&format!("{prefix}.weight"), &[n, k], WeightKind::Linear);
        let b = bias.then(|| self.weight(&format!("{prefix}.bias"), &[n], WeightKind::Plain));
        let mut s = self.shape(x).to_vec();
        *s.last_mut().expect("linear input has a shape") = n;
        let out = self.act(s);
        self.push(Op::Linear { x, w, bias: b, residual: None, geglu: false, out })
    }

    /// GroupNorm of NHWC `x` in `groups` groups, affine `prefix.weight` and `prefix.bias` `[C]`; `silu` applies
    /// SiLU after. `groups` must divide C.
    pub fn group_norm(&mut self, prefix: &str, x: TensorId, groups: usize, eps: f32, silu: bool) -> TensorId {
        let c = self.channels(x);
        if groups == 0 || !c.is_multiple_of(groups) {
            self.fail(format!("{prefix}: {c} channels do not split into {groups} groups"));
        }
        let gamma = self.weight(&format!("{prefix}.weight"), &[c], WeightKind::Plain);
        let beta = self.weight(&format!("{prefix}.bias"), &[c], WeightKind::Plain);
        let out = self.act(self.shape(x).to_vec());
        self.push(Op::GroupNorm { x, gamma, beta, groups, eps, silu, out })
    }

    /// LayerNorm of `x` over its last dimension, affine `prefix.weight` and `prefix.bias` `[C]`.
    pub fn layer_norm(&mut self, prefix: &str, x: TensorId, eps: f32) -> TensorId {
        let c = self.channels(x);
        let gamma = self.weight(&format!("{prefix}.weight"), &[c], WeightKind::Plain);
        let beta = self.weight(&format!("{prefix}.bias"), &[c], WeightKind::Plain);
        let out = self.act(self.shape(x).to_vec());
        self.push(Op::LayerNorm { x, gamma, beta, eps, out })
    }

    /// Attention over q `[B, N, C]`, k/v `[B, M, C]`; q may be an NHWC image (its H·W are the tokens).
    pub fn attention(&mut self, q: TensorId, k: TensorId, v: TensorId, heads: usize, causal: bool) -> TensorId {
        self.attention_op(q, k, v, heads, causal, None)
    }

    /// Non-causal attention (as [`GraphBuilder::attention`]) where the batch rows of `limit` see only its
    /// first keys (see [`KeyLimit`]); `None` is plain attention.
    pub fn attention_limited(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        heads: usize,
        limit: Option<KeyLimit>,
    ) -> TensorId {
        self.attention_op(q, k, v, heads, false, limit)
    }

    fn attention_op(
        &mut self,
        q: TensorId,
        k: TensorId,
        v: TensorId,
        heads: usize,
        causal: bool,
        key_limit: Option<KeyLimit>,
    ) -> TensorId {
        let c = self.channels(q);
        if heads == 0 || !c.is_multiple_of(heads) || self.channels(k) != c || self.shape(k) != self.shape(v) {
            self.fail(format!(
                "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
                self.shape(q),
                self.shape(k),
                self.shape(v)
            ));
        }
        if let (Some(l), Some(&batch)) = (key_limit, self.shape(k).first()) {
            let n_kv = self.shape(k).iter().product::<usize>() / (batch * c).max(1);
            if let Err(e) = l.check(batch, n_kv) {
                self.fail(format!("attention: {e}"));
            }
        }
        let out = self.act(self.shape(q).to_vec());
        self.push(Op::Attention { q, k, v, heads, causal, key_limit, out })
    }

    /// GEGLU: `x = [hidden | gate]` on the last dimension -> `hidden·gelu(gate)`, half the width (which
    /// must be even).
    pub fn geglu(&mut self, x: TensorId) -> TensorId {
        let mut s = self.shape(x).to_vec();
        let c = s.last_mut().expect("geglu input has a shape");
        if !(*c).is_multiple_of(2) {
            self.fail(format!("geglu: odd width {c}"));
        }
        *c /= 2;
        let out = self.act(s);
        self.push(Op::Geglu { x, out })
    }

    /// `kind` element-wise over `x`, and `y` (x's shape) when `kind` is binary.
    pub fn map(&mut self, kind: MapKind, x: TensorId, y: Option<TensorId>) -> TensorId {
        if y.map_or(1, |_| 2) != kind.arity() {
            self.fail(format!("{}: takes {} operands, given {}", kind.name(), kind.arity(), 1 + y.iter().len()));
        } else if let Some(y) = y.filter(|&y| self.shape(x) != self.shape(y)) {
            self.fail(format!("{}: shapes {:?} and {:?} differ", kind.name(), self.shape(x), self.shape(y)));
        }
        let out = self.act(self.shape(x).to_vec());
        self.push(Op::Map { kind, x, y, out })
    }

    /// `act` applied element-wise.
    pub fn activation(&mut self, x: TensorId, act: Activation) -> TensorId {
        self.map(MapKind::Act(act), x, None)
    }

    /// `a + b`, of equal shapes.
    pub fn add(&mut self, a: TensorId, b: TensorId) -> TensorId {
        self.map(MapKind::Add, a, Some(b))
    }

    /// `x [B, H, W, C] + bias [B, C]` broadcast over space (a ResNet's time embedding).
    pub fn add_channel(&mut self, x: TensorId, bias: TensorId) -> TensorId {
        let (s, bs) = (self.shape(x), self.shape(bias));
        if s.len() != 4 || bs != [s[0], s[3]] {
            self.fail(format!("add_channel: {s:?} + {bs:?}"));
        }
        let out = self.act(self.shape(x).to_vec());
        self.push(Op::AddChannel { x, bias, out })
    }

    /// `x + scale[row, b]·y` per image b (see [`Op::AddScaled`]); `scale` is an `F32 [rows, B]` input.
    pub fn add_scaled(&mut self, x: TensorId, y: TensorId, scale: TensorId, row: usize) -> TensorId {
        let (s, ws) = (self.shape(x).to_vec(), self.shape(scale).to_vec());
        let rows_ok = matches!(ws.as_slice(), &[rows, b] if row < rows && Some(&b) == s.first());
        if self.shape(y) != s || !rows_ok || self.g.tensors[scale].elem != Elem::F32 {
            self.fail(format!("add_scaled: {s:?} + {ws:?}[{row}]·{:?}", self.shape(y)));
        }
        let out = self.act(s);
        self.push(Op::AddScaled { x, y, scale, row, out })
    }

    /// `a` then `b` on the channel (last) dimension; the other dimensions must agree.
    pub fn concat(&mut self, a: TensorId, b: TensorId) -> TensorId {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa.len() != sb.len() || sa[..sa.len() - 1] != sb[..sb.len() - 1] {
            self.fail(format!("concat: shapes {sa:?} and {sb:?} differ outside the channels"));
        }
        let mut s = sa.clone();
        *s.last_mut().expect("concat input has a shape") += sb.last().copied().unwrap_or(0);
        let out = self.act(s);
        self.push(Op::Concat { a, b, out })
    }

    /// Nearest-neighbour resize of NHWC `x` to `h`×`w`.
    pub fn upsample(&mut self, x: TensorId, h: usize, w: usize) -> TensorId {
        let s = self.shape(x).to_vec();
        let out = self.act(vec![s[0], h, w, s[3]]);
        self.push(Op::Upsample { x, out })
    }

    /// Token plus position embedding: ids `[B, T]` (`I32`), table `[V, C]`, positions `[P, C]` (P ≥ T) ->
    /// `[B, T, C]`.
    pub fn embed(&mut self, ids: TensorId, table: TensorId, positions: TensorId) -> TensorId {
        let (ids_s, ts, ps) = (self.shape(ids).to_vec(), self.shape(table).to_vec(), self.shape(positions).to_vec());
        if ids_s.len() != 2 || ts.len() != 2 || ps.len() != 2 || ts[1] != ps[1] || ps[0] < ids_s[1] {
            self.fail(format!("embed: ids {ids_s:?}, table {ts:?}, positions {ps:?}"));
        }
        let out = self.act(vec![ids_s[0], ids_s[1], ts[1]]);
        self.push(Op::Embed { ids, table, positions, out })
    }

    /// The embedding of timesteps `t` `[B]`.
    pub fn timestep_embed(&mut self, t: TensorId, dim: usize, flip_sin_to_cos: bool, freq_shift: f32) -> TensorId {
        self.timestep_embed_row(t, 0, dim, flip_sin_to_cos, freq_shift)
    }

    /// The embedding of row `row` of timesteps `t` `[R, B]` (or `[B]`, row 0).
    pub fn timestep_embed_row(
        &mut self,
        t: TensorId,
        row: usize,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> TensorId {
        let (rows, b) = match *self.shape(t) {
            [b] => (1, b),
            [r, b] => (r, b),
            ref s => {
                let msg = format!("timesteps of shape {s:?}: expected [B] or [rows, B]");
                self.fail(msg);
                (1, 0)
            }
        };
        if dim < 2 || row >= rows {
            self.fail(format!("timestep embedding of width {dim} from row {row} of {rows}"));
        }
        let out = self.act(vec![b, dim]);
        self.push(Op::TimestepEmbed { t, row, flip_sin_to_cos, freq_shift, out })
    }

    /// `x / div + add` as `elem` (`Act` or `F32`), repeated `copies` times along the batch.
    pub fn cast(&mut self, x: TensorId, elem: Elem, copies: usize, div: f32, add: f32) -> TensorId {
        self.cast_by(x, elem, copies, div, add, None)
    }

    /// The sampler's `scale_model_input` into the UNet: `x / input_div` of row `step` of `schedule`,
    /// as `Act`, repeated `copies` times along the batch.
    pub fn scale_model_input(&mut self, x: TensorId, copies: usize, schedule: TensorId, step: usize) -> TensorId {
        let rows = match *self.shape(schedule) {
            [rows, STEP_ROW] if self.g.tensors[schedule].elem == Elem::F32 => rows,
            _ => 0,
        };
        if step >= rows {
            self.fail(format!("scale_model_input {step}: schedule {:?}", self.shape(schedule)));
        }
        self.cast_by(x, Elem::Act, copies, 1.0, 0.0, Some((schedule, step)))
    }

    fn cast_by(
        &mut self,
        x: TensorId,
        elem: Elem,
        copies: usize,
        div: f32,
        add: f32,
        row: Option<(TensorId, usize)>,
    ) -> TensorId {
        let mut s = self.shape(x).to_vec();
        if s.is_empty() || copies == 0 || elem == Elem::I32 || self.g.tensors[x].elem == Elem::I32 {
            self.fail(format!("cast of {s:?} ({:?}) to {elem:?} x{copies}", self.g.tensors[x].elem));
        } else {
            s[0] *= copies;
        }
        let out = self.tensor(s, elem, Storage::Activation);
        self.push(Op::Cast { x, div, add, row, out })
    }

    /// One sampler step (see [`Op::LcmStep`]); returns the next latents (`F32`, x's shape). `noise` is
    /// the noise tensor and the row this step reads.
    #[allow(clippy::too_many_arguments)]
    pub fn lcm_step(
        &mut self,
        x: TensorId,
        model_output: TensorId,
        noise: Option<(TensorId, usize)>,
        schedule: TensorId,
        step: usize,
        guided: bool,
        sampling: Sampling,
    ) -> TensorId {
        let xs = self.shape(x).to_vec();
        let mut want = xs.clone();
        if let Some(b) = want.first_mut() {
            *b *= if guided { 2 } else { 1 };
        }
        let steps = match *self.shape(schedule) {
            [steps, STEP_ROW] => steps,
            _ => 0,
        };
        let noise_ok = noise.is_none_or(|(z, row)| {
            let zs = self.shape(z);
            zs.len() == xs.len() + 1 && zs[1..] == xs[..] && row < zs[0] && self.g.tensors[z].elem == Elem::F32
        });
        let elems_ok = self.g.tensors[x].elem == Elem::F32 && self.g.tensors[schedule].elem == Elem::F32;
        if self.shape(model_output) != want || step >= steps || !noise_ok || !elems_ok {
            self.fail(format!(
                "lcm_step {step}: latents {xs:?}, model output {:?} (guided: {guided}), schedule {:?}, noise {:?}",
                self.shape(model_output),
                self.shape(schedule),
                noise.map(|(z, row)| (self.shape(z).to_vec(), row))
            ));
        }
        let out = self.tensor(xs, Elem::F32, Storage::Activation);
        self.push(Op::LcmStep { x, model_output, noise, schedule, step, guided, sampling, out })
    }

    /// Inpainting's blend after an LCM step (see [`Op::InpaintBlend`]); returns the blended latents.
    #[allow(clippy::too_many_arguments)]
    pub fn inpaint_blend(
        &mut self,
        x: TensorId,
        image: TensorId,
        noise: TensorId,
        mask: TensorId,
        schedule: TensorId,
        step: usize,
        last: bool,
    ) -> TensorId {
        let s = self.shape(x).to_vec();
        let mut ms = s.clone();
        if let Some(c) = ms.last_mut() {
            *c = 1;
        }
        let f32s = [x, image, noise, mask, schedule].iter().all(|&t| self.g.tensors[t].elem == Elem::F32);
        let rows = match *self.shape(schedule) {
            [rows, STEP_ROW] => rows,
            _ => 0,
        };
        if self.shape(image) != s || self.shape(noise) != s || self.shape(mask) != ms || !f32s || step >= rows {
            self.fail(format!(
                "inpaint_blend {step}: latents {s:?}, image {:?}, noise {:?}, mask {:?}, schedule {:?}",
                self.shape(image),
                self.shape(noise),
                self.shape(mask),
                self.shape(schedule)
            ));
        }
        let out = self.tensor(s, Elem::F32, Storage::Activation);
        self.push(Op::InpaintBlend { x, image, noise, mask, schedule, step, last, out })
    }

    /// `x·mul + add`.
    pub fn scale(&mut self, x: TensorId, mul: f32, add: f32) -> TensorId {
        self.map(MapKind::Scale { mul, add }, x, None)
    }

    /// The finished graph, or the first inconsistency met while building it.
    pub fn finish(mut self) -> Result<Graph> {
        if let Some(e) = self.error {
            return Err(Error::invalid("model graph", e));
        }
        // Model by model, each in declaration order (a stable sort by scope), storages renumbered.
        let mut order: Vec<usize> = (0..self.g.weights.len()).collect();
        order.sort_by_key(|&i| self.weight_scopes[i]);
        if order.iter().enumerate().any(|(new, &old)| new != old) {
            let mut new_of = vec![0; order.len()];
            for (new, &old) in order.iter().enumerate() {
                new_of[old] = new;
            }
            let mut weights: Vec<Option<WeightSpec>> = self.g.weights.drain(..).map(Some).collect();
            self.g.weights = order.iter().map(|&old| weights[old].take().expect("each weight once")).collect();
            for t in &mut self.g.tensors {
                if let Storage::Weight(i) = &mut t.storage {
                    *i = new_of[*i];
                }
            }
        }
        Ok(self.g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_ordered_model_by_model_and_named_within_their_model() {
        let mut b = GraphBuilder::new();
        let x = b.input(&[1, 4], Elem::Act);
        b.set_weight_scope(1);
        let y = b.linear("proj", x, 4, false); // the second model's "proj"
        b.set_weight_scope(0);
        let z = b.linear("proj", y, 4, true); // the first model's own "proj", a different weight
        b.set_weight_scope(1);
        let z = b.linear("proj", z, 4, false); // the second model's again: shared
        b.output(z);
        let g = b.finish().unwrap();
        let names: Vec<_> = g.weights.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["proj.weight", "proj.bias", "proj.weight"]);
        let Op::Linear { w, bias, .. } = g.ops[1] else { panic!() };
        assert_eq!((g.tensors[w].storage, g.tensors[bias.unwrap()].storage), (Storage::Weight(0), Storage::Weight(1)));
        let (Op::Linear { w: w0, .. }, Op::Linear { w: w2, .. }) = (g.ops[0], g.ops[2]) else { panic!() };
        assert_eq!((g.tensors[w0].storage, w0), (Storage::Weight(2), w2));
    }

    #[test]
    fn a_map_with_the_wrong_operands_is_a_graph_error() {
        let mut b = GraphBuilder::new();
        let x = b.input(&[2, 3], Elem::Act);
        b.map(MapKind::Add, x, None);
        assert!(b.finish().unwrap_err().to_string().contains("add: takes 2 operands, given 1"));
        let mut b = GraphBuilder::new();
        let (x, y) = (b.input(&[2, 3], Elem::Act), b.input(&[3, 2], Elem::Act));
        b.add(x, y);
        assert!(b.finish().unwrap_err().to_string().contains("add: shapes [2, 3] and [3, 2] differ"));
    }
}
