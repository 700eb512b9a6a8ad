//! CLIPTextModel (SD1.5's text encoder, SDXL's first) and CLIPTextModelWithProjection (SDXL's second)
//! from `config.json`: token and position embeddings, pre-LayerNorm causal transformer layers, the
//! final LayerNorm, and the projection of the pooled output.

use std::path::Path;

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor};

use crate::config::Config;
use crate::loader::{
    component_config, file_source, find_weights, load_weights, upload_weights, LoadOptions, WeightSource,
};
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
    /// Reads a `text_encoder/config.json`; `clip_skip` must leave at least one layer.
    pub fn from_file(path: &Path, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::read(path)?, clip_skip)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?, clip_skip)
    }

    /// From a JSON value (an inferred config); `origin` names it in errors.
    pub fn parse_value(origin: &Path, value: serde_json::Value, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::from_value(origin, value), clip_skip)
    }

    fn parse(c: &Config, clip_skip: usize) -> Result<Self> {
        let path = c.path.clone();
        // transformers nests the text config under `text_config` in full CLIPModel configs.
        let nested;
        let c = match c.get("text_config") {
            Some(v) if v.is_object() => {
                nested = Config::from_value(&path, v.clone());
                &nested
            }
            _ => c,
        };
        let act = match c.str_or("hidden_act", "quick_gelu")? {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => return Err(c.error("hidden_act", format!("`{other}` is not supported (quick_gelu or gelu)"))),
        };
        let with_projection = c
            .get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("CLIPTextModelWithProjection")));
        let eos_token_id = match c.get("eos_token_id") {
            None => 49407,
            Some(v) => v.as_i64().ok_or_else(|| c.error("eos_token_id", format!("expected an integer, got {v}")))?,
        };
        let cfg = ClipConfig {
            projection_dim: if with_projection { Some(c.usize_or("projection_dim", 512)?) } else { None },
            eos_token_id,
            output: ClipOutput::FinalNorm,
            vocab_size: c.usize_or("vocab_size", 49408)?,
            hidden_size: c.usize_or("hidden_size", 512)?,
            intermediate_size: c.usize_or("intermediate_size", 2048)?,
            layers: c.usize_or("num_hidden_layers", 12)?,
            heads: c.usize_or("num_attention_heads", 8)?,
            max_positions: c.usize_or("max_position_embeddings", 77)?,
            eps: c.f32_or("layer_norm_eps", 1e-5)?,
            act,
            clip_skip,
        };
        if cfg.heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.heads) {
            return Err(c.error(
                "num_attention_heads",
                format!("{} heads do not divide hidden_size {}", cfg.heads, cfg.hidden_size),
            ));
        }
        if clip_skip >= cfg.layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} skips every one of the {} layers", cfg.layers),
            ));
        }
        Ok(cfg)
    }

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
        let table = b.weight(
            "text_model.embeddings.token_embedding.weight",
            &[self.vocab_size, c],
            lcm_core::WeightKind::Plain,
        );
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

/// A loaded CLIP text encoder on a backend.
pub struct ClipTextModel<B: Backend> {
    /// The config the graph is built from (its `clip_skip` included).
    pub config: ClipConfig,
    pub(crate) runner: Runner<B>,
}

impl<B: Backend> ClipTextModel<B> {
    /// Loads `dir` (a diffusers `text_encoder/` folder: `config.json` and `model.safetensors` or its
    /// variants, see [`crate::loader::find_weights`]), each weight through `opts.hook` (LoRA merging);
    /// the weights keep the file as their source for a LoRA swap.
    pub fn load(backend: &B, dir: &Path, clip_skip: usize, opts: LoadOptions) -> Result<Self> {
        Self::load_as(backend, ClipConfig::from_file(&component_config(dir)?, clip_skip)?, dir, opts)
    }

    /// [`Self::load`] with the config given (read from `dir`'s and set up by the caller, e.g. with
    /// [`ClipConfig::with_output`]).
    pub fn load_as(backend: &B, config: ClipConfig, dir: &Path, opts: LoadOptions) -> Result<Self> {
        let files = find_weights(dir, "model", opts.variant)?;
        let specs = config.graph(1, 1)?.weights;
        let mut weights = load_weights(backend, &specs, &files, opts.hook)?;
        weights.source = Some(file_source(files));
        Ok(ClipTextModel { config, runner: Runner::new(weights) })
    }

    /// A text encoder whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: ClipConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let specs = config.graph(1, 1)?.weights;
        let weights = upload_weights(backend, &specs, origin, source, None)?;
        Ok(ClipTextModel { config, runner: Runner::new(weights) })
    }

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

    /// The weights and the executors built so far.
    pub fn runner(&self) -> &Runner<B> {
        &self.runner
    }

    /// The runner, mutably: a LoRA swap rewrites weights in place.
    pub fn runner_mut(&mut self) -> &mut Runner<B> {
        &mut self.runner
    }
}
