//! Stable Diffusion XL's component configs as stabilityai/stable-diffusion-xl-base-1.0 ships them (and
//! an SSD-1B-shaped UNet), for what must work without a download: `lcm bench --arch sdxl|ssd-1b` with
//! synthetic weights, and the shape-inference tests at full size. Models never read these when given a
//! folder.

/// `unet/config.json`: three levels of 320/640/1280 channels, a plain first level, transformer depths
/// 1/2/10, `attention_head_dim` [5, 10, 20] read as head counts (64-wide heads), a 2048-wide context
/// and the `text_time` added embedding (1280 pooled + 6 · 256 = 2816).
pub const UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280], "center_input_sample": false, "cross_attention_dim": 2048,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": true
}"#;

/// An SSD-1B-shaped UNet: SDXL's with the depths distilled per layer, an up path of its own
/// (`reverse_transformer_layers_per_block`) and a mid block without attention, as Segmind's distilled
/// models vary them (the exact depths of the released checkpoints come with their config.json).
pub const SSD_1B_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280], "center_input_sample": false, "cross_attention_dim": 2048,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2D", "norm_eps": 1e-05, "norm_num_groups": 32,
  "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
  "transformer_layers_per_block": [1, [1, 2], [4, 4]],
  "reverse_transformer_layers_per_block": [[4, 4, 10], [1, 2, 1], 1],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": true
}"#;

/// `vae/config.json`: SD1.5's shape with `scaling_factor` 0.13025 and `force_upcast` (it overflows in f16).
pub const VAE_CONFIG: &str = r#"{
  "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
  "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

/// `text_encoder/config.json`: CLIP ViT-L/14's text tower, as SD1.5's.
pub const TEXT_ENCODER_CONFIG: &str = super::sd15::TEXT_ENCODER_CONFIG;

/// `text_encoder_2/config.json`: OpenCLIP ViT-bigG/14's text tower as a CLIPTextModelWithProjection
/// (1280 wide, 32 layers of 20 heads, gelu, projection to 1280, the legacy `eos_token_id` 2).
pub const TEXT_ENCODER_2_CONFIG: &str = r#"{
  "architectures": ["CLIPTextModelWithProjection"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
  "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
  "num_attention_heads": 20, "num_hidden_layers": 32, "pad_token_id": 1, "projection_dim": 1280,
  "vocab_size": 49408
}"#;
