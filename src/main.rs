//! The `lcm` command: generate images, list the compiled kernels, benchmark the pipeline.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "lcm",
    version,
    about = "Latent Consistency Model image generation for Stable Diffusion 1.5 (1-8 steps), on hand-written CUDA kernels or the CPU",
    long_about = "Turns a prompt into an image in 1-8 steps with a Latent Consistency Model: an LCM-distilled \
                  UNet, or any SD1.5 checkpoint plus the LCM-LoRA. Models are diffusers folders (model_index.json, \
                  text_encoder/, tokenizer/, unet/, vae/, scheduler/) with safetensors weights.\n\n\
                  Example:\n  lcm generate --model ./stable-diffusion-v1-5 --lora lcm-lora-sdv1-5.safetensors \
                  --prompt \"a photo of a cat\" --seed 7 --output cat.png"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt and write PNGs.
    Generate(cli::generate::GenerateArgs),
    /// Time the pipeline (CLIP, UNet steps, VAE decode) per stage; synthetic SD1.5 weights by default.
    Bench(cli::bench::BenchArgs),
    /// Serve the OpenAI images API and A1111 txt2img/img2img over HTTP, with a batching queue,
    /// LoRAs by name, health/readiness probes and Prometheus metrics (docs/serving.md).
    Serve(cli::serve::ServeArgs),
    /// List every compiled CUDA kernel with its architecture, registers, shared memory and spills.
    Kernels,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::Kernels => cli::kernels::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
