//! Fusion as a graph rewrite, so model code stays a plain transcription of diffusers:
//! - `GroupNorm` then a SiLU `Map` becomes one `GroupNorm { silu: true }`;
//! - an `Add` (`Map`) of a conv/linear result and another tensor moves the add into that op's epilogue
//!   (`residual`), which also removes the intermediate from the arena;
//! - `Linear` then `Geglu` becomes one `Linear { geglu: true }` (the GEMM epilogue computes
//!   hidden·gelu(gate)): the planner then sees the fused op's real lifetimes, so its output is never
//!   placed on its input, and the 2·hidden intermediate never exists.

use crate::graph::{Activation, Graph, MapKind, Op, Storage, TensorId};

/// Applies the rewrites above. The fused op writes the removed op's output tensor, so tensor ids, graph
/// inputs and outputs are unchanged; an intermediate that another op or the caller reads is never fused
/// away.
pub fn fuse(mut g: Graph) -> Graph {
    let uses = g.use_counts();
    let is_output = {
        let mut v = vec![false; g.tensors.len()];
        for &t in &g.outputs {
            v[t] = true;
        }
        v
    };
    // producer[t] = index of the op writing t
    let mut producer: Vec<Option<usize>> = vec![None; g.tensors.len()];
    for (i, op) in g.ops.iter().enumerate() {
        producer[op.output()] = Some(i);
    }
    // A tensor may be read by an op at index i if it exists before i runs.
    let ready_before = |producer: &[Option<usize>], g: &Graph, t: TensorId, i: usize| match g.tensors[t].storage {
        Storage::Input(_) | Storage::Weight(_) => true,
        Storage::Activation => producer[t].is_some_and(|p| p < i),
    };
    let single_use = |t: TensorId| uses[t] == 1 && !is_output[t];

    let mut dead = vec![false; g.ops.len()];
    let ops = g.ops.clone();
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Map { kind: MapKind::Act(Activation::Silu), x, out, .. } if single_use(x) => {
                if let Some(p) = producer[x] {
                    if let Op::GroupNorm { silu: silu @ false, out: gn_out, .. } = &mut g.ops[p] {
                        *silu = true;
                        *gn_out = out;
                        producer[out] = Some(p);
                        dead[i] = true;
                    }
                }
            }
            Op::Geglu { x, out } if single_use(x) => {
                if let Some(p) = producer[x] {
                    if let Op::Linear { residual: None, geglu: fused @ false, out: o, .. } = &mut g.ops[p] {
                        *fused = true;
                        *o = out;
                        producer[out] = Some(p);
                        dead[i] = true;
                    }
                }
            }
            Op::Map { kind: MapKind::Add, x: a, y: Some(b), out } => {
                for (main, other) in [(a, b), (b, a)] {
                    if !single_use(main) {
                        continue;
                    }
                    let Some(p) = producer[main] else { continue };
                    if !ready_before(&producer, &g, other, p) {
                        continue;
                    }
                    // No residual after GEGLU: the epilogue has one or the other.
                    if let Op::Conv2d { residual: r @ None, out: o, .. }
                    | Op::Linear { residual: r @ None, geglu: false, out: o, .. } = &mut g.ops[p]
                    {
                        *r = Some(other);
                        *o = out;
                        producer[out] = Some(p);
                        dead[i] = true;
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    let mut i = 0;
    g.ops.retain(|_| {
        i += 1;
        !dead[i - 1]
    });
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Elem, GraphBuilder};

    #[test]
    fn norm_silu_residual_add_and_geglu_fuse_into_their_producers() {
        let mut b = GraphBuilder::new();
        let x = b.input(&[1, 4, 4, 8], Elem::Act);
        let n = b.group_norm("gn", x, 2, 1e-5, false);
        let s = b.activation(n, Activation::Silu);
        let c = b.conv2d("conv", s, 8, 3, 1, [1; 4], true);
        let r = b.add(x, c); // the conv result as either operand
        let t = b.input(&[1, 16, 8], Elem::Act);
        let l = b.linear("fc", t, 16, true);
        let g = b.geglu(l);
        b.output(r);
        b.output(g);
        let g = fuse(b.finish().unwrap());
        assert_eq!(g.ops.len(), 3, "{:?}", g.ops);
        assert!(matches!(g.ops[0], Op::GroupNorm { silu: true, out, .. } if out == s));
        assert!(matches!(g.ops[1], Op::Conv2d { residual: Some(rx), out, .. } if rx == x && out == r));
        assert!(matches!(g.ops[2], Op::Linear { geglu: true, .. }));
    }

    #[test]
    fn a_silu_or_add_whose_input_is_read_elsewhere_stays() {
        let mut b = GraphBuilder::new();
        let x = b.input(&[1, 4, 4, 8], Elem::Act);
        let n = b.group_norm("gn", x, 2, 1e-5, false);
        let s = b.activation(n, Activation::Silu);
        let c = b.conv2d("conv", s, 8, 1, 1, [0; 4], false);
        let r = b.add(c, x);
        b.output(n); // the norm's output is read by the caller: no SiLU fusion
        b.output(c); // the conv's too: no residual fusion
        b.output(r);
        let g = fuse(b.finish().unwrap());
        assert_eq!(g.ops.len(), 4);
        assert!(matches!(g.ops[1], Op::Map { kind: MapKind::Act(Activation::Silu), .. }));
        assert!(matches!(g.ops[3], Op::Map { kind: MapKind::Add, .. }));
    }
}
