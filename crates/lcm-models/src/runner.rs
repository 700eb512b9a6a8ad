//! Weights plus one executor per input shape: the graph for a shape is built, fused and planned the
//! first time that shape is seen, then reused (its arena too) for every later call.

use std::collections::HashMap;

use lcm_core::{Backend, Executor, Graph, HostData, ModelWeights, Result};

/// A model's weights and its executors, one per input-shape key.
pub struct Runner<B: Backend> {
    /// The weights every executor runs with, in the graph's weight order.
    pub weights: ModelWeights<B>,
    executors: HashMap<Vec<usize>, Executor<B>>,
}

impl<B: Backend> Runner<B> {
    /// A runner with no executor built yet.
    pub fn new(weights: ModelWeights<B>) -> Self {
        Runner { weights, executors: HashMap::new() }
    }

    /// The executor for `key`, building it with `build` on first use.
    pub fn executor(
        &mut self,
        backend: &B,
        key: &[usize],
        build: impl FnOnce() -> Result<Graph>,
    ) -> Result<&mut Executor<B>> {
        if !self.executors.contains_key(key) {
            let ex = Executor::new(backend, build()?, &self.weights)?;
            self.executors.insert(key.to_vec(), ex);
        }
        Ok(self.executors.get_mut(key).expect("inserted above"))
    }

    /// The executor for `key` (built with `build` on first use) beside the weights it runs with, for
    /// callers that write inputs, run and move results themselves (the denoising loop).
    pub fn prepare(
        &mut self,
        backend: &B,
        key: &[usize],
        build: impl FnOnce() -> Result<Graph>,
    ) -> Result<(&mut Executor<B>, &ModelWeights<B>)> {
        self.prepare_parts(backend, key, &[], build)
    }

    /// [`Runner::prepare`] for a graph that also runs other models' weights, `extra`, after these
    /// (`lcm_core::Executor::with_parts`).
    pub fn prepare_parts(
        &mut self,
        backend: &B,
        key: &[usize],
        extra: &[&ModelWeights<B>],
        build: impl FnOnce() -> Result<Graph>,
    ) -> Result<(&mut Executor<B>, &ModelWeights<B>)> {
        if !self.executors.contains_key(key) {
            let parts: Vec<&ModelWeights<B>> = std::iter::once(&self.weights).chain(extra.iter().copied()).collect();
            let ex = Executor::with_parts(backend, build()?, &parts)?;
            self.executors.insert(key.to_vec(), ex);
        }
        let ex = self.executors.get_mut(key).expect("built above");
        Ok((ex, &self.weights))
    }

    /// Writes `inputs` (in graph order), runs, and returns output 0.
    pub fn run(
        &mut self,
        backend: &B,
        key: &[usize],
        build: impl FnOnce() -> Result<Graph>,
        inputs: &[HostData<'_>],
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let ex = self.executor(backend, key, build)?;
        for (i, d) in inputs.iter().enumerate() {
            ex.set_input(backend, i, *d)?;
        }
        // Split borrow: the executor lives in `executors`, the weights beside it.
        let ex = self.executors.get_mut(key).expect("built above");
        ex.run(backend, &self.weights)?;
        Ok((ex.output(backend, 0)?, ex.output_shape(0).to_vec()))
    }

    /// Writes `inputs`, runs, and returns every output with its shape.
    pub fn run_all(
        &mut self,
        backend: &B,
        key: &[usize],
        build: impl FnOnce() -> Result<Graph>,
        inputs: &[HostData<'_>],
    ) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
        let ex = self.executor(backend, key, build)?;
        for (i, d) in inputs.iter().enumerate() {
            ex.set_input(backend, i, *d)?;
        }
        let ex = self.executors.get_mut(key).expect("built above");
        ex.run(backend, &self.weights)?;
        (0..ex.graph().outputs.len()).map(|i| Ok((ex.output(backend, i)?, ex.output_shape(i).to_vec()))).collect()
    }

    /// Drops every executor built so far: what a change of a weight's shape needs (a text encoder's
    /// token table grown by embeddings), since each was planned and recorded for the old shapes. The
    /// next call for a shape builds its executor again.
    pub fn clear_executors(&mut self) {
        self.executors.clear();
    }

    /// Every executor built so far (one per input shape): tests reach their arenas through it, e.g. to
    /// poison them before a run.
    pub fn executors(&self) -> impl Iterator<Item = &Executor<B>> {
        self.executors.values()
    }

    /// Shapes planned so far, with their arena sizes in bytes.
    pub fn arenas(&self) -> Vec<(Vec<usize>, usize)> {
        self.executors.iter().map(|(k, e)| (k.clone(), e.plan().size)).collect()
    }
}
