//! `lcm frames`: img2img over a folder of frames, batched, into a folder of PNGs with the same names.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use lcm::with_pipeline;
use lcm_core::{Backend, Error, Result};
use lcm_pipeline::output::{parameters_text, png_size, read_image_rgb8, write_png};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, Request, MAX_IMAGES};

use crate::control_args::{ControlArgs, ControlImage};
use crate::device::open;
use crate::frame_seq::{file_name, list_frames, mean_abs_diff};
use crate::generate::with_mask;
use crate::model_args::{check_init_size, load_engine, model_label, ModelArgs, SamplingArgs};
use crate::progress::{ms, Progress};

#[derive(Args, Debug)]
pub struct FramesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A folder of PNG frames, all of one size (sides multiples of 8). Every *.png file in it is a frame
    /// (other files and sub-folders are listed and skipped), taken in natural order of the file names:
    /// digit runs compare as numbers, so frame_2.png comes before frame_10.png.
    #[arg(long, value_name = "DIR")]
    pub input: PathBuf,
    /// The folder the results go to, created if missing; each frame's PNG keeps its input's file name.
    /// It must not be --input (that would overwrite the frames).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Replace PNGs already in --output; without it, any frame whose output exists is refused before
    /// any work.
    #[arg(long)]
    pub overwrite: bool,
    /// Frames per batch: N frames run through one denoising graph (each with its own init image and
    /// noise). A frame's result does not depend on N beyond f32 rounding (±1 in a few 8-bit values).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: usize,
    /// Seed frame i (from 0, in the frames' order) with --seed + i. By default every frame gets the same
    /// seed, so the noise is fixed and what does not move in the input stays still in the output.
    #[arg(long)]
    pub seed_per_frame: bool,
    /// Reuse the previous output for a frame whose input barely changed: when the mean absolute
    /// difference of its 8-bit RGB values from the last frame that ran, over 255, is below T (0: the
    /// same image, 1: black against white; 0.01 is an average change of 2.55 levels), the output of
    /// that frame is written under this frame's name and the model does not run. Off by default.
    #[arg(long, value_name = "T")]
    pub skip_similar: Option<f64>,
    #[command(flatten)]
    pub control: ControlArgs,
    /// With --controlnet: a folder of control images, one per frame under the frame's file name (a pose,
    /// edge or depth sequence). Repeat once per --controlnet, paired by order. --skip-similar then also
    /// needs every control image to be similar.
    #[arg(long = "control-frames", value_name = "DIR")]
    pub control_frames: Vec<PathBuf>,
    /// Inpainting: repaint only the masked region of each frame (white = repaint, as `generate --mask`):
    /// one mask PNG for every frame, or a folder holding each frame's mask under the frame's file name.
    #[arg(long, value_name = "FILE.png|DIR")]
    pub mask: Option<PathBuf>,
}

/// A frame that runs, and the names its output is written under (its own, then those of the frames
/// that skipped to it).
struct Job {
    index: usize,
    rgb: Vec<u8>,
    /// Its control images, one per --controlnet.
    controls: Vec<ControlImage>,
    names: Vec<String>,
}

pub fn run(args: FramesArgs) -> Result<()> {
    if args.batch == 0 || args.batch > MAX_IMAGES {
        return Err(Error::invalid("--batch", format!("{}: expected 1..={MAX_IMAGES}", args.batch)));
    }
    if let Some(t) = args.skip_similar.filter(|t| !(0.0..=1.0).contains(t)) {
        return Err(Error::invalid("--skip-similar", format!("{t}: expected a threshold in 0..=1")));
    }
    let (frames, others) = list_frames(&args.input)?;
    if !others.is_empty() {
        eprintln!("--input: skipping {} entries that are not .png frames: {}", others.len(), others.join(", "));
    }
    let (width, height) = check_sizes(&frames)?;
    check_output(&args, &frames)?;
    check_control_frames(&args, &frames)?;
    if let Some(dir) = args.mask.as_ref().filter(|m| m.is_dir()) {
        if let Some(f) = frames.iter().find(|f| !dir.join(file_name(f)).is_file()) {
            return Err(Error::file(dir.join(file_name(f)), "--mask: this frame's mask is missing from the folder"));
        }
    }

    let (model_dir, loras) = args.model.model_and_loras()?;
    let seed = args.sampling.seed_or_random();
    // The first frame as the template request: everything but the frame and the seed is shared.
    let (w, h, rgb) = read_image_rgb8(&frames[0])?;
    let s = &args.sampling;
    let first = frame_init(&args, &frames[0], InitImage::from_rgb8(w, h, &rgb, s.strength)?)?;
    let mut template = s.request(seed, (width, height), 1, Some(first));
    template.controls = args.control.units(&control_images(&args, &frames[0])?, (width, height), true)?;
    let spec = args.model.load_spec(model_dir, loras);
    let (sampler, max_steps) = s.sampler(&lcm_pipeline::load::scheduler(&spec)?)?;
    template.sampler = Some(sampler);
    template.validate(max_steps)?;
    args.model.check_files(&spec)?;
    std::fs::create_dir_all(&args.output).map_err(|e| Error::file(&args.output, format!("--output: {e}")))?;
    eprintln!("seed: {seed}{}", if args.seed_per_frame { " + frame index" } else { " (every frame)" });
    let (mut engine, load_time) = load_engine(open(args.model.device)?, spec, template.steps, args.model.tiling)?;
    eprintln!("load {}", ms(load_time));
    with_pipeline!(&mut engine, p => frames_with(p, &template, &frames, &args))
}

/// Every frame has the first frame's size, and that size suits img2img; read from the headers.
fn check_sizes(frames: &[PathBuf]) -> Result<(usize, usize)> {
    let first = png_size(&frames[0])?;
    check_init_size(&frames[0], first.0, first.1)?;
    for f in &frames[1..] {
        let (w, h) = png_size(f)?;
        if (w, h) != first {
            return Err(Error::file(
                f,
                format!(
                    "is {w}x{h}, but the first frame ({}) is {}x{}; every frame must have one size",
                    file_name(&frames[0]),
                    first.0,
                    first.1
                ),
            ));
        }
    }
    Ok(first)
}

/// The ControlNet flags pair up, and every frame has its control image in each --control-frames folder.
fn check_control_frames(args: &FramesArgs, frames: &[PathBuf]) -> Result<()> {
    if let Some(img) = args.control.images.first() {
        return Err(Error::file(img, "--control-image: frames takes a control image per frame: --control-frames DIR"));
    }
    args.control.check("--control-frames", args.control_frames.len())?;
    for dir in &args.control_frames {
        if !dir.is_dir() {
            return Err(Error::file(dir, "--control-frames: not a folder (expected a control image per frame)"));
        }
        let missing: Vec<String> = frames.iter().map(|f| file_name(f)).filter(|n| !dir.join(n).is_file()).collect();
        if let Some(first) = missing.first() {
            return Err(Error::file(
                dir.join(first),
                format!(
                    "--control-frames: missing ({} of the {} frames have no control image here)",
                    missing.len(),
                    frames.len()
                ),
            ));
        }
    }
    Ok(())
}

/// `init` (frame `frame`'s image) with its inpainting mask when `--mask` is given.
fn frame_init(args: &FramesArgs, frame: &Path, init: InitImage) -> Result<InitImage> {
    match &args.mask {
        None => Ok(init),
        Some(m) if m.is_dir() => with_mask(init, &m.join(file_name(frame))),
        Some(m) => with_mask(init, m),
    }
}

/// The control images of `frame`: its namesake in each --control-frames folder, preprocessed.
fn control_images(args: &FramesArgs, frame: &Path) -> Result<Vec<ControlImage>> {
    let name = file_name(frame);
    args.control_frames.iter().enumerate().map(|(k, dir)| args.control.read_image(k, &dir.join(&name))).collect()
}

/// `--output` is not `--input` (nor a file), and no frame's output exists unless `--overwrite`.
fn check_output(args: &FramesArgs, frames: &[PathBuf]) -> Result<()> {
    let out = &args.output;
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::file(out, "--output: exists and is not a folder"));
        }
        let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(x, y)| x == y);
        if same(out, &args.input) {
            return Err(Error::file(out, "--output is the --input folder; the outputs would overwrite the frames"));
        }
    }
    if !args.overwrite {
        let existing: Vec<String> = frames.iter().map(|f| file_name(f)).filter(|n| out.join(n).exists()).collect();
        if let Some(first) = existing.first() {
            return Err(Error::file(
                out.join(first),
                format!(
                    "already exists ({} of the {} outputs do); pass --overwrite to replace them",
                    existing.len(),
                    frames.len()
                ),
            ));
        }
    }
    Ok(())
}

fn frames_with<B: Backend>(
    pipe: &mut Pipeline<B>,
    template: &Request,
    frames: &[PathBuf],
    args: &FramesArgs,
) -> Result<()> {
    let mut run = Runner { bar: Progress::new("frames"), start: Instant::now(), done: 0, batches: 0 };
    let (mut pending, mut last_run): (Vec<Job>, Option<Vec<Vec<u8>>>) = (Vec::with_capacity(args.batch), None);
    let mut skipped = 0;
    for (index, path) in frames.iter().enumerate() {
        let (_, _, rgb) = read_image_rgb8(path)?;
        let controls = control_images(args, path)?;
        let name = file_name(path);
        // The skip compares with the last frame that ran, not the previous frame: a slow drift cannot
        // pile up under the threshold frame after frame. StreamDiffusion's filter skips at random with a
        // probability that grows with the similarity (so a still scene is refreshed now and then); here a
        // fixed threshold keeps the promise that the same inputs give the same outputs.
        // With ControlNets, the input and every control image must be similar.
        let seen: Vec<Vec<u8>> = std::iter::once(rgb.clone()).chain(controls.iter().map(|c| c.rgb.clone())).collect();
        if let (Some(t), Some(prev)) = (args.skip_similar, &last_run) {
            let d = seen
                .iter()
                .zip(prev)
                .map(|(a, b)| if a.len() == b.len() { mean_abs_diff(a, b) } else { 1.0 })
                .fold(0.0, f64::max);
            if d < t {
                let job = pending.last_mut().expect("a frame ran before, and its job is still pending");
                eprintln!("{name}: skipped, reuses {}'s output (difference {d:.5} < {t})", job.names[0]);
                job.names.push(name);
                skipped += 1;
                continue;
            }
        }
        // A full batch runs only when the next frame that runs arrives, so that frames skipping to its
        // last job still find it pending.
        if pending.len() == args.batch {
            run.batch(pipe, template, std::mem::take(&mut pending), frames.len(), args)?;
        }
        last_run = Some(seen);
        pending.push(Job { index, rgb, controls, names: vec![name] });
    }
    run.batch(pipe, template, pending, frames.len(), args)?;
    let t = run.start.elapsed();
    eprintln!(
        "{} frames ({} skipped, {} batches of up to {}) in {:.2} s: {:.2} frames/s",
        run.done,
        skipped,
        run.batches,
        args.batch,
        t.as_secs_f64(),
        run.done as f64 / t.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Runs batches and writes their outputs, counting frames for the progress line.
struct Runner {
    bar: Progress,
    start: Instant,
    done: usize,
    batches: usize,
}

impl Runner {
    fn batch<B: Backend>(
        &mut self,
        pipe: &mut Pipeline<B>,
        template: &Request,
        jobs: Vec<Job>,
        total: usize,
        args: &FramesArgs,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let (w, h, strength) = (template.width, template.height, args.sampling.strength);
        let mut reqs = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let seed = if args.seed_per_frame { template.seed.wrapping_add(job.index as u64) } else { template.seed };
            let frame = args.input.join(&job.names[0]);
            let init_image = Some(frame_init(args, &frame, InitImage::from_rgb8(w, h, &job.rgb, strength)?)?);
            let controls = args.control.units(&job.controls, (w, h), true)?;
            reqs.push(Request { seed, init_image, controls, ..template.clone() });
        }
        let outs = pipe.generate_batch(&reqs, &mut |_| {}, None)?;
        let model = model_label(&pipe.spec.model_dir);
        for ((job, req), out) in jobs.iter().zip(&reqs).zip(&outs) {
            let (rgb, params) = (out.rgb8(0), parameters_text(req, &model, &pipe.spec.loras));
            for name in &job.names {
                let path = args.output.join(name);
                write_png(&path, w, h, &rgb, &params)?;
                println!("{}", path.display());
            }
            self.done += job.names.len();
        }
        self.batches += 1;
        let elapsed = self.start.elapsed();
        let fps = self.done as f64 / elapsed.as_secs_f64().max(1e-9);
        self.bar.update(self.done, total, &format!("{fps:.2} frames/s"), elapsed);
        Ok(())
    }
}
