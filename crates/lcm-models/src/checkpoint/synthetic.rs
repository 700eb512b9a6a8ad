//! Seeded random weights with a sane scale, for benchmarks that must run without a download. The
//! numbers mean nothing; what matters is that activations stay finite and O(1) through deep stacks
//! (fan-in scaled weights, unit norm scales) so timings are those of real data, not of NaNs or zeros.

use lcm_core::{Result, WeightKind, WeightSpec};

/// A source for [`super::weights::upload_weights`]: each weight's values from a counter-based hash of
/// (seed, weight index, element), rounded to f16 as a checkpoint in f16 would be.
pub fn random_source(seed: u64) -> impl FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()> {
    let mut index = 0u64;
    move |spec, buf| {
        index += 1;
        let n: usize = spec.shape.iter().product();
        let fan_in = match spec.kind {
            WeightKind::Linear => spec.shape[1],
            WeightKind::Conv => spec.shape[1..].iter().product(),
            WeightKind::Plain => 1,
        } as f32;
        let is_norm_scale = spec.kind == WeightKind::Plain
            && spec.name.ends_with(".weight")
            && (spec.name.contains("norm") || spec.name.contains("layer_norm"));
        let (center, spread) = match spec.kind {
            _ if is_norm_scale => (1.0, 0.1),
            WeightKind::Plain if spec.shape.len() == 2 => (0.0, 0.02), // embedding tables
            WeightKind::Plain => (0.0, 0.02),                          // biases
            _ => (0.0, (3.0 / fan_in).sqrt()),                         // uniform with variance 1/fan_in
        };
        buf.clear();
        buf.extend((0..n as u64).map(|i| {
            let u = unit(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
            half::f16::from_f32(center + spread * (2.0 * u - 1.0)).to_f32()
        }));
        Ok(())
    }
}

/// splitmix64 finaliser to a uniform in [0, 1).
fn unit(x: u64) -> f32 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}
