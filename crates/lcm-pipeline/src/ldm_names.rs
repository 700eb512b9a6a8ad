//! LDM ↔ diffusers UNet names. The mapping lives in `lcm_models::checkpoint::ldm`, where single-file checkpoint
//! loading reads it too (one walk of the block structure for LoRA keys and checkpoint keys); it is
//! re-exported here for the LoRA code and existing users of this path.

pub use lcm_models::checkpoint::ldm::UnetLayout;
