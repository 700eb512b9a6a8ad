//! Every `config.json` parser on the same text: UNet, text encoder (plain and nested `text_config`),
//! VAE, scheduler (every sampler); each config that parses is also built into its graphs (where absurd sizes would bite).
#![no_main]
use std::path::Path;

use lcm_models::{ClipConfig, UnetConfig, VaeConfig};
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions, Scheduler, SchedulerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let origin = Path::new("config.json");
    if let Ok(c) = UnetConfig::from_json(origin, text) {
        let _ = c.graph(1, 8, 8, 4);
        let _ = lcm_models::checkpoint::ldm::UnetLayout::from_config(&c);
    }
    if let Ok(c) = ClipConfig::from_json(origin, text, 0) {
        let _ = c.graph(1, 4);
    }
    let _ = ClipConfig::from_json(origin, text, 1);
    if let Ok(c) = VaeConfig::from_json(origin, text) {
        let _ = c.decoder_graph(1, 4, 4);
        let _ = c.encoder_graph(1, 32, 32);
    }
    // Every sampler's from_config of the same scheduler_config.json, its schedules and their rows.
    let path = lcm_fuzz::write("scheduler_config.json", data);
    if let Ok(config) = SchedulerConfig::from_json_file(&path) {
        for kind in SamplerKind::ALL {
            let Ok(mut s) = Scheduler::new(&config, &SamplerOptions::new(kind)) else { continue };
            for (steps, strength) in [(1, 1.0), (4, 1.0), (8, 1.0), (4, 0.5)] {
                if s.set_timesteps(steps, strength).is_ok() {
                    let _rows: Vec<_> = (0..steps).map(|i| s.row(i, 1.5)).collect();
                    let _ = s.init_noise_sigma();
                }
            }
        }
    }
});
