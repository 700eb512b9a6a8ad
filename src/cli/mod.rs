pub mod bench;
pub mod device;
pub mod generate;
pub mod kernels;
pub mod progress;
pub mod serve;
pub mod vae_tiling;
