//! The `lcm` command: generate images, list the compiled kernels, benchmark the pipeline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lcm_core::Error;
use lcm_pipeline::spec::Field;

mod bench;
mod control_args;
mod device;
mod frame_seq;
mod frames;
mod generate;
mod hub;
mod kernels;
mod model_args;
mod plan_plot;
mod progress;
mod serve;
mod vae_tiling;

#[derive(Parser)]
#[command(
    name = "lcm",
    version,
    about = "Latent Consistency Model image generation for SD1.5 and SDXL (1-8 steps), on hand-written CUDA kernels or the CPU",
    long_about = "Turns a prompt into an image in 1-8 steps with a Latent Consistency Model: an LCM-distilled \
                  UNet, or any SD1.5 or SDXL (SSD-1B, Segmind-Vega) checkpoint plus its LCM-LoRA. Models are \
                  diffusers folders (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/) with \
                  safetensors weights, or single-file checkpoints (.safetensors in original SD key names).\n\n\
                  Example:\n  lcm generate --model ./stable-diffusion-v1-5 --lora lcm-lora-sdv1-5.safetensors \
                  --prompt \"a photo of a cat\" --seed 7 --output cat.png"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const FRAMES_ABOUT: &str = "img2img over a sequence: every PNG in --input (natural order of the names, so frame_2.png \
    before frame_10.png; all of one size) is repainted with the prompt and written to --output under its own name. \
    Every frame gets the same seed, so the noise is fixed and still regions stay still; frame i's PNG is what \
    `lcm generate --image frame_i` gives with the same flags. --batch runs frames together through one graph; \
    --skip-similar reuses the last output for frames that barely changed. Progress (frames done, frames/s) goes \
    to stderr, each written path to stdout.\n\n\
    Example (ffmpeg splits and joins the video):\n  \
    ffmpeg -i clip.mp4 -vf scale=512:512 in/frame_%04d.png\n  \
    lcm frames --model ./stable-diffusion-v1-5 --lora lcm-lora-sdv1-5.safetensors --prompt \"an oil painting\" \
    --input in --output out --strength 0.5 --steps 4 --seed 7 --batch 4\n  \
    ffmpeg -framerate 25 -i out/frame_%04d.png clip-painted.mp4";

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt and write PNGs.
    Generate(generate::GenerateArgs),
    /// img2img over a folder of frames (a video's, as PNGs), batched, into a folder of PNGs with the
    /// same names.
    #[command(long_about = FRAMES_ABOUT)]
    Frames(frames::FramesArgs),
    /// Time the pipeline (CLIP, UNet steps, VAE decode) per stage; synthetic SD1.5 weights by default.
    Bench(bench::BenchArgs),
    /// Serve the OpenAI images API and A1111 txt2img/img2img over HTTP, with a batching queue,
    /// LoRAs by name, health/readiness probes and Prometheus metrics (docs/serving.md).
    Serve(serve::ServeArgs),
    /// List every compiled CUDA kernel with its architecture, registers, shared memory and spills.
    Kernels,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Frames(args) => frames::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Kernels => kernels::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", with_flag(e));
            ExitCode::FAILURE
        }
    }
}

/// The engine's checks name the spec's fields (`width`, `steps`, …); the CLI's messages name the flag
/// that sets each, so a user sees what to change.
fn with_flag(e: Error) -> Error {
    let flag = match Field::of(&e) {
        None => return e,
        Some(Field::Width) => "--width",
        Some(Field::Height) => "--height",
        Some(Field::Steps) => "--steps",
        Some(Field::NumImages) => "--num-images",
        Some(Field::GuidanceScale) => "--guidance-scale",
        Some(Field::Strength) => "--strength",
        Some(Field::InitImage) => "--image",
        Some(Field::Mask) => "--mask",
        Some(Field::ConfigDir | Field::TokenizerDir) => "--config",
        Some(Field::VaeTiling) => "--vae-tiling",
        Some(Field::VaeTileSize) => "--vae-tile-size",
        Some(Field::ControlNet | Field::ControlScale) => "--controlnet",
        Some(Field::ControlImage) => "--control-image",
        Some(Field::ControlStart) => "--control-start",
        Some(Field::ControlEnd) => "--control-end",
        Some(Field::Scheduler) => "--scheduler",
        Some(Field::Eta) => "--eta",
        Some(Field::TimestepSpacing) => "--timestep-spacing",
        Some(Field::PredictionType) => "--prediction-type",
        Some(Field::Prompt) => "--prompt",
        Some(Field::NegativePrompt) => "--negative-prompt",
        Some(Field::PromptSyntax) => "--prompt-syntax",
    };
    match e {
        Error::Invalid { msg, .. } => Error::invalid(flag, msg),
        e => e,
    }
}
