//! A graph made ready to run: fused, lowered and planned once. What the executor builds and every
//! backend's `run` takes, so both depend on it and not on each other.

use crate::error::Result;
use crate::fuse::fuse;
use crate::graph::Graph;
use crate::lower::Problem;
use crate::planner::{plan, ArenaPlan};

/// A graph ready to run: fused, every op lowered to its problem (`problems[i]` is `graph.ops[i]`'s),
/// and planned into an arena. What a backend's `run` gets.
#[derive(Debug, Clone)]
pub struct Program {
    /// The fused graph.
    pub graph: Graph,
    /// One per op of `graph`, in op order.
    pub problems: Vec<Problem>,
    /// Where each activation and input lives in the arena, and the arena's size.
    pub plan: ArenaPlan,
}

impl Program {
    /// Fuses, lowers and plans `graph` for a backend whose activations take `act_bytes`.
    pub fn new(graph: Graph, act_bytes: usize) -> Result<Program> {
        let graph = fuse(graph);
        let problems = graph.lower()?;
        let plan = plan(&graph, act_bytes);
        Ok(Program { graph, problems, plan })
    }
}
