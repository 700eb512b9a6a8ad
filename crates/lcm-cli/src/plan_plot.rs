//! `lcm bench --plan GPU --plot FILE.svg`: the plan's launches on a roofline. x: FLOPs per compulsory
//! DRAM byte; y: predicted TFLOP/s; the GPU's tensor peak, mma.sync's share of it, and the DRAM and
//! shared-memory roofs drawn; one colour per stage; the ten costliest launches of the listed ones (the
//! first step's, as in the table) labelled. Launches without FLOPs (element-wise, norms) have no place
//! on it.

use std::fmt::Display;
use std::path::Path;

use lcm::plan::{Plan, Stage};
use lcm_core::{Error, Result};
use plotters::prelude::*;

const X_RANGE: (f64, f64) = (0.1, 1e5);
const Y_RANGE: (f64, f64) = (0.01, 2000.0);

fn plot_error(path: &Path, e: impl Display) -> Error {
    Error::invalid("--plot", format!("{}: {e}", path.display()))
}

fn colour(s: Stage) -> RGBColor {
    match s {
        Stage::Text => RGBColor(31, 119, 180),
        Stage::Once => RGBColor(148, 103, 189),
        Stage::Unet => RGBColor(214, 39, 40),
        Stage::Step => RGBColor(44, 160, 44),
        Stage::Vae => RGBColor(255, 127, 14),
    }
}

/// Writes the roofline of `plan` to `path` (SVG).
pub fn roofline(plan: &Plan, path: &Path) -> Result<()> {
    let err = |e: &dyn Display| plot_error(path, e);
    let gpu = plan.gpu;
    // (x, y, predicted µs, label) of every listed launch with tensor work.
    let points: Vec<(Stage, f64, f64, f64, String)> = plan
        .launches
        .iter()
        .enumerate()
        .filter(|(_, l)| l.step == 0 && l.cost.work.flops > 0.0 && l.cost.work.dram_bytes > 0.0)
        .map(|(i, l)| {
            let w = &l.cost.work;
            let x = (w.flops / w.dram_bytes).clamp(X_RANGE.0, X_RANGE.1);
            let y = (w.flops / l.cost.predicted_us / 1e6).clamp(Y_RANGE.0, Y_RANGE.1);
            (l.stage, x, y, l.cost.predicted_us, format!("#{i} {}", l.cost.kernel.name()))
        })
        .collect();

    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let c = &plan.config;
    let caption = format!(
        "{} {}x{}, {} image(s): predicted roofline on {}",
        c.arch.name(),
        c.width,
        c.height,
        c.num_images,
        gpu.model
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((X_RANGE.0..X_RANGE.1).log_scale(), (Y_RANGE.0..Y_RANGE.1).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP per compulsory DRAM byte)")
        .y_desc("predicted TFLOP/s")
        .draw()
        .map_err(|e| err(&e))?;

    // Ceilings: flat compute roofs, and bandwidth roofs y = x · bandwidth.
    let roofs: [(String, f64, f64, RGBColor); 4] = [
        (format!("tensor peak {:.0} TFLOP/s", gpu.tensor_peak_tflops), 0.0, gpu.tensor_peak_tflops, BLACK),
        (format!("mma.sync {:.0} TFLOP/s", gpu.mma_flops() / 1e12), 0.0, gpu.mma_flops() / 1e12, RGBColor(90, 90, 90)),
        (format!("DRAM {:.0} GB/s", gpu.dram_gbs), gpu.dram_bytes() / 1e12, 0.0, RGBColor(0, 0, 160)),
        (
            format!(
                "shared memory {:.1} TB/s (x = FLOP per smem byte)",
                gpu.smem_bytes_per_sm() * gpu.sm_count as f64 / 1e12
            ),
            gpu.smem_bytes_per_sm() * gpu.sm_count as f64 / 1e12,
            0.0,
            RGBColor(0, 130, 130),
        ),
    ];
    for (label, slope, flat, col) in roofs {
        let line: Vec<(f64, f64)> = (0..=100)
            .map(|i| X_RANGE.0 * (X_RANGE.1 / X_RANGE.0).powf(i as f64 / 100.0))
            .map(|x| (x, if slope > 0.0 { x * slope } else { flat }))
            .filter(|&(_, y)| y <= Y_RANGE.1)
            .collect();
        chart
            .draw_series(LineSeries::new(line, col.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    for stage in Stage::ALL {
        let col = colour(stage);
        let pts: Vec<(f64, f64)> = points.iter().filter(|p| p.0 == stage).map(|p| (p.1, p.2)).collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, col.filled())))
            .map_err(|e| err(&e))?
            .label(stage.name())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, col.filled()));
    }
    let mut costliest: Vec<&(Stage, f64, f64, f64, String)> = points.iter().collect();
    costliest.sort_by(|a, b| b.3.total_cmp(&a.3));
    for p in costliest.into_iter().take(10) {
        let text = format!("{} {:.0} µs", p.4, p.3);
        chart.draw_series(std::iter::once(Text::new(text, (p.1, p.2), ("sans-serif", 12)))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}
