//! Element types of weight files and how they widen to the f32 the CPU reference computes in.

use half::{bf16, f16};

/// Element type of a tensor in a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16: f32's 8-bit exponent, 7-bit mantissa.
    BF16,
}

impl DType {
    /// Lower-case name for messages (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The safetensors header spelling (`F32`, `F16`, `BF16`); `None` for types weights never use here.
    pub fn from_safetensors(s: &str) -> Option<DType> {
        match s {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// Widens little-endian `bytes` of `dtype` into `out` (cleared first). The bytes come straight from the
/// memory map, which need not be aligned for the element type, so this reads them bytewise.
pub fn widen_to_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => {
            out.extend(bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()))
        }
        DType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_each_dtype() {
        let mut out = Vec::new();
        widen_to_f32(DType::F32, &1.5f32.to_le_bytes(), &mut out);
        assert_eq!(out, [1.5]);
        widen_to_f32(DType::F16, &f16::from_f32(-2.25).to_bits().to_le_bytes(), &mut out);
        assert_eq!(out, [-2.25]);
        widen_to_f32(DType::BF16, &bf16::from_f32(3.0).to_bits().to_le_bytes(), &mut out);
        assert_eq!(out, [3.0]);
    }
}
