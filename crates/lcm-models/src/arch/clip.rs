//! CLIPTextModel (SD1.5's text encoder, SDXL's first) and CLIPTextModelWithProjection (SDXL's second)
//! from `config.json`: token and position embeddings, pre-LayerNorm causal transformer layers, the
//! final LayerNorm, and the projection of the pooled output. `config.json` is read into [`ClipConfig`]
//! by `crate::checkpoint::config`.

use std::ops::Range;

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor, WeightSpec};

use crate::runner::Runner;

/// What the text encoder's graph outputs: what the pipeline's `encode_prompt` takes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipOutput {
    /// StableDiffusionPipeline: output 0 is `final_layer_norm(hidden_states[-(clip_skip + 1)])`.
    FinalNorm,
    /// StableDiffusionXLPipeline: output 0 is `hidden_states[-(clip_skip + 2)]` (no final LayerNorm);
    /// output 1 `hidden_states[-2]`, which diffusers gives the negative prompt whatever `clip_skip`
    /// says; with a projection, output 2 is `text_projection(final_layer_norm(hidden_states[-1]))` for
    /// every token — the pooled `text_embeds` are its row at [`ClipConfig::pooled_position`].
    Penultimate,
}

/// Output indices of a [`ClipOutput::Penultimate`] graph.
pub mod output {
    /// `hidden_states[-(clip_skip + 2)]`.
    pub const CONTEXT: usize = 0;
    /// `hidden_states[-2]` (the negative prompt's context).
    pub const NEGATIVE_CONTEXT: usize = 1;
    /// The projected final states, one row per token (with a projection).
    pub const PROJECTED: usize = 2;
}

/// CLIPTextModel's `config.json` (a `CLIPTextConfig`, or the `text_config` of a full CLIPModel's), plus
/// `clip_skip` and what the pipeline takes from it. Defaults are transformers'.
#[derive(Debug, Clone)]
pub struct ClipConfig {
    /// `vocab_size`: rows of the token embedding (49408).
    pub vocab_size: usize,
    /// `hidden_size`: the model width (768 for CLIP-L).
    pub hidden_size: usize,
    /// `intermediate_size`: the MLP's inner width (3072 for CLIP-L).
    pub intermediate_size: usize,
    /// `num_hidden_layers`: transformer layers (12).
    pub layers: usize,
    /// `num_attention_heads` (12 for CLIP-L: 64-wide heads).
    pub heads: usize,
    /// `max_position_embeddings`: the longest token sequence (77).
    pub max_positions: usize,
    /// `layer_norm_eps` (1e-5).
    pub eps: f32,
    /// `hidden_act`: the MLP activation, `quick_gelu` (CLIP-L) or `gelu`.
    pub act: Activation,
    /// Layers skipped at the end, as diffusers' `clip_skip`: the output is hidden_states[-(skip+1)]
    /// through the final LayerNorm ([`ClipOutput::FinalNorm`]) or hidden_states[-(skip+2)]
    /// ([`ClipOutput::Penultimate`]).
    pub clip_skip: usize,
    /// `projection_dim` of a `CLIPTextModelWithProjection` (its `architectures`): `text_projection`
    /// `[projection_dim, hidden_size]`, no bias. `None` for a CLIPTextModel.
    pub projection_dim: Option<usize>,
    /// `eos_token_id`: where the pooled output is read (see [`Self::pooled_position`]).
    pub eos_token_id: i64,
    /// What the graph outputs ([`ClipOutput::FinalNorm`] unless set for SDXL).
    pub output: ClipOutput,
}

impl ClipConfig {
    /// This config with the graph giving `output`.
    pub fn with_output(self, output: ClipOutput) -> Self {
        ClipConfig { output, ..self }
    }

    /// The token whose final state is the pooled output, by transformers' rule for this config: with
    /// the legacy `eos_token_id` 2 (SDXL's text_encoder_2 config) the first position of the largest id
    /// (CLIP's end-of-text is its largest), else the first position of `eos_token_id` (0 if none).
    pub fn pooled_position(&self, ids: &[i32]) -> usize {
        if self.eos_token_id == 2 {
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&i| i == max).unwrap_or(0)
        } else {
            ids.iter().position(|&i| i as i64 == self.eos_token_id).unwrap_or(0)
        }
    }

    /// Every weight of the graph this config builds (name, torch shape, use), in graph order: what a
    /// loader reads. The layers `clip_skip` leaves out are not among them.
    pub fn weights(&self) -> Result<Vec<WeightSpec>> {
        Ok(self.graph(1, 1)?.weights)
    }

    /// The text encoder as a graph: token ids `I32 [batch, tokens]` -> hidden states `[batch, tokens,
    /// hidden_size]` after the last kept layer (causal self-attention) and the final LayerNorm; for
    /// [`ClipOutput::Penultimate`] the outputs listed there. `tokens` must be in 1..=`max_positions`
    /// (an error naming the token ids).
    pub fn graph(&self, batch: usize, tokens: usize) -> Result<Graph> {
        if tokens == 0 || tokens > self.max_positions {
            return Err(Error::invalid(
                "token ids",
                format!("{tokens} tokens; the text encoder takes 1..={}", self.max_positions),
            ));
        }
        let c = self.hidden_size;
        let mut b = GraphBuilder::new();
        let ids = b.input(&[batch, tokens], Elem::I32);
        let table = b.weight(TOKEN_EMBEDDING, &[self.vocab_size, c], lcm_core::WeightKind::Plain);
        let pos = b.weight(
            "text_model.embeddings.position_embedding.weight",
            &[self.max_positions, c],
            lcm_core::WeightKind::Plain,
        );
        let mut x = b.embed(ids, table, pos);
        let layers = match (self.output, self.projection_dim) {
            (ClipOutput::FinalNorm, _) => self.layers - self.clip_skip,
            (ClipOutput::Penultimate, None) => self.layers - 1,
            (ClipOutput::Penultimate, Some(_)) => self.layers,
        };
        let mut hidden = vec![x]; // hidden_states[j]: after j layers
        for l in 0..layers {
            let p = format!("text_model.encoder.layers.{l}");
            let h = b.layer_norm(&format!("{p}.layer_norm1"), x, self.eps);
            let q = b.linear(&format!("{p}.self_attn.q_proj"), h, c, true);
            let k = b.linear(&format!("{p}.self_attn.k_proj"), h, c, true);
            let v = b.linear(&format!("{p}.self_attn.v_proj"), h, c, true);
            let a = b.attention(q, k, v, self.heads, true);
            let a = b.linear(&format!("{p}.self_attn.out_proj"), a, c, true);
            x = b.add(a, x);
            let h = b.layer_norm(&format!("{p}.layer_norm2"), x, self.eps);
            let h = b.linear(&format!("{p}.mlp.fc1"), h, self.intermediate_size, true);
            let h = b.activation(h, self.act);
            let h = b.linear(&format!("{p}.mlp.fc2"), h, c, true);
            x = b.add(h, x);
            hidden.push(x);
        }
        match self.output {
            ClipOutput::FinalNorm => {
                let out = b.layer_norm("text_model.final_layer_norm", x, self.eps);
                b.output(out);
            }
            ClipOutput::Penultimate => {
                b.output(hidden[self.layers - 1 - self.clip_skip]);
                b.output(hidden[self.layers - 1]);
                if let Some(p) = self.projection_dim {
                    let n = b.layer_norm("text_model.final_layer_norm", x, self.eps);
                    let out = b.linear("text_projection", n, p, false);
                    b.output(out);
                }
            }
        }
        b.finish()
    }
}

/// The token-embedding table's weight name: `[vocab_size, hidden_size]`.
pub const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// A loaded CLIP text encoder on a backend.
pub struct ClipTextModel<B: Backend> {
    /// The config the graph is built from (its `clip_skip` included).
    pub config: ClipConfig,
    pub(crate) runner: Runner<B>,
}

impl<B: Backend> ClipTextModel<B> {
    /// `ids` row-major `[batch, T]` -> hidden states `[batch, T, hidden_size]` through the final
    /// LayerNorm (of the last layer, or hidden_states[-(clip_skip+1)]). An id outside the vocabulary is
    /// an error from the backend's embedding.
    pub fn forward(&mut self, backend: &B, ids: &[i32], batch: usize) -> Result<Tensor> {
        if batch == 0 || !ids.len().is_multiple_of(batch) {
            return Err(Error::invalid("token ids", format!("{} ids do not split into {batch} prompts", ids.len())));
        }
        let tokens = ids.len() / batch;
        let cfg = &self.config;
        let (out, shape) =
            self.runner.run(backend, &[batch, tokens], || cfg.graph(batch, tokens), &[HostData::I32(ids)])?;
        Ok(Tensor::new(shape, out))
    }

    /// Every output of the graph for `ids` `[batch, T]` (see [`ClipOutput`]), as `[batch, T, …]` tensors.
    pub fn forward_outputs(&mut self, backend: &B, ids: &[i32], batch: usize) -> Result<Vec<Tensor>> {
        if batch == 0 || !ids.len().is_multiple_of(batch) {
            return Err(Error::invalid("token ids", format!("{} ids do not split into {batch} prompts", ids.len())));
        }
        let tokens = ids.len() / batch;
        let cfg = &self.config;
        let outs =
            self.runner.run_all(backend, &[batch, tokens], || cfg.graph(batch, tokens), &[HostData::I32(ids)])?;
        Ok(outs.into_iter().map(|(data, shape)| Tensor::new(shape, data)).collect())
    }

    /// SDXL's pooled `text_embeds` `[batch, projection_dim]` for `ids` `[batch, T]`: each prompt's
    /// projected final state at its [`ClipConfig::pooled_position`]. Needs a projection and
    /// [`ClipOutput::Penultimate`].
    pub fn text_embeds(&mut self, backend: &B, ids: &[i32], batch: usize) -> Result<Tensor> {
        let Some(p) = self.config.projection_dim.filter(|_| self.config.output == ClipOutput::Penultimate) else {
            return Err(Error::invalid("text encoder", "has no text_projection (not a CLIPTextModelWithProjection)"));
        };
        let projected = self.forward_outputs(backend, ids, batch)?.swap_remove(output::PROJECTED);
        let tokens = ids.len() / batch;
        let mut data = Vec::with_capacity(batch * p);
        for (b, row) in ids.chunks(tokens).enumerate() {
            let at = (b * tokens + self.config.pooled_position(row)) * p;
            data.extend_from_slice(&projected.data[at..at + p]);
        }
        Ok(Tensor::new(vec![batch, p], data))
    }

    /// Appends `rows` (row-major `[n, hidden_size]`, f32) to the token-embedding table as ids
    /// `vocab_size..vocab_size + n`, as transformers' `resize_token_embeddings` followed by writing the
    /// new rows does for diffusers' `load_textual_inversion`; returns those ids. The table is read
    /// again from the weights' source (the backend's copy may be f16), grown and uploaded anew, and the
    /// source is wrapped so that a later re-read (a LoRA swap) gives the grown table. Every executor is
    /// dropped: their graphs and plans hold the old table shape. Nothing changes on an error.
    pub fn append_token_rows(&mut self, backend: &B, rows: &[f32]) -> Result<Range<usize>> {
        let c = self.config.hidden_size;
        if rows.is_empty() || !rows.len().is_multiple_of(c) {
            return Err(Error::invalid(
                "token embedding rows",
                format!("{} values are not whole rows of the text encoder's width {c}", rows.len()),
            ));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid("token embedding rows", format!("value {i} is {} (must be finite)", rows[i])));
        }
        let weights = &mut self.runner.weights;
        let i = weights
            .index(TOKEN_EMBEDDING)
            .ok_or_else(|| Error::invalid("text encoder", format!("has no `{TOKEN_EMBEDDING}` weight")))?;
        let Some(mut source) = weights.source.take() else {
            return Err(Error::invalid(
                "text encoder",
                "its weights have no file to read the token table from again (synthetic weights?)",
            ));
        };
        let old = weights.specs[i].clone();
        let mut table = Vec::new();
        let grown = source(&old, &mut table).and_then(|()| {
            table.extend_from_slice(rows);
            let mut spec = old.clone();
            spec.shape[0] += rows.len() / c;
            Ok((backend.upload_weight(&spec, &table)?, spec))
        });
        let (w, spec) = match grown {
            Ok(g) => g,
            Err(e) => {
                weights.source = Some(source);
                return Err(e);
            }
        };
        let added = old.shape[0]..spec.shape[0];
        weights.weights[i] = w;
        weights.specs[i] = spec;
        let extra = rows.to_vec();
        weights.source = Some(Box::new(move |s: &WeightSpec, buf: &mut Vec<f32>| {
            if s.name != old.name {
                return source(s, buf);
            }
            source(&old, buf)?;
            buf.extend_from_slice(&extra);
            Ok(())
        }));
        self.config.vocab_size = added.end;
        self.runner.clear_executors();
        Ok(added)
    }

    /// The weights and the executors built so far.
    pub fn runner(&self) -> &Runner<B> {
        &self.runner
    }

    /// The runner, mutably: a LoRA swap rewrites weights in place.
    pub fn runner_mut(&mut self) -> &mut Runner<B> {
        &mut self.runner
    }
}
