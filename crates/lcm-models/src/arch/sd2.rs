//! Stable Diffusion 2.1's component configs as stabilityai/stable-diffusion-2-1 ships them (the 768-pixel
//! v-prediction model; SD2.1-base and SD-Turbo differ in `sample_size` 64 and `upcast_attention` only),
//! for what must work without a download: `lcm bench --arch sd2` with synthetic weights, and the
//! shape-inference tests at full size. Models never read these when given a folder.

/// `unet/config.json`: SD1.5's four levels and block types with `attention_head_dim` [5, 10, 20, 20]
/// read as head counts (64-wide heads), linear `proj_in`/`proj_out`, a 1024-wide context, and
/// `upcast_attention` (f16 attention scores in f32; lcm's attention accumulates in f32 anyway).
pub const UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
  "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
  "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": true, "use_linear_projection": true
}"#;

/// `vae/config.json`: SD1.5's VAE (the same weights), `scaling_factor` 0.18215.
pub const VAE_CONFIG: &str = super::sd15::VAE_CONFIG;

/// `text_encoder/config.json`: OpenCLIP ViT-H/14's text tower as a CLIPTextModel (1024 wide, 16 heads,
/// gelu), with 23 of OpenCLIP's 24 layers: SD2 conditions on the penultimate layer's states through
/// the final LayerNorm, so diffusers keeps the layers that feed it (the legacy bos/eos/pad 0/2/1 only
/// matter to the unused pooled output).
pub const TEXT_ENCODER_CONFIG: &str = r#"{
  "architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
  "hidden_size": 1024, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
  "num_attention_heads": 16, "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512,
  "vocab_size": 49408
}"#;
