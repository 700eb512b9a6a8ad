//! A plain host tensor (f32, row-major) for inputs, outputs and tests, and the layout moves at the
//! engine's edges: callers speak NCHW like diffusers, the graph computes in NHWC.

/// A host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// `data` of `shape`; panics if the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not fill its shape");
        Tensor { shape, data }
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    /// Element count.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// `[B, C, H, W]` -> `[B, H, W, C]`.
    pub fn nchw_to_nhwc(&self) -> Tensor {
        let [b, c, h, w] = dims4(&self.shape);
        let mut out = vec![0.0; self.data.len()];
        for bi in 0..b {
            for ci in 0..c {
                for p in 0..h * w {
                    out[(bi * h * w + p) * c + ci] = self.data[(bi * c + ci) * h * w + p];
                }
            }
        }
        Tensor { shape: vec![b, h, w, c], data: out }
    }

    /// `[B, H, W, C]` -> `[B, C, H, W]`.
    pub fn nhwc_to_nchw(&self) -> Tensor {
        let [b, h, w, c] = dims4(&self.shape);
        let mut out = vec![0.0; self.data.len()];
        for bi in 0..b {
            for p in 0..h * w {
                for ci in 0..c {
                    out[(bi * c + ci) * h * w + p] = self.data[(bi * h * w + p) * c + ci];
                }
            }
        }
        Tensor { shape: vec![b, c, h, w], data: out }
    }
}

fn dims4(s: &[usize]) -> [usize; 4] {
    s.try_into().unwrap_or_else(|_| panic!("expected a 4-d tensor, got shape {s:?}"))
}

/// ‖a − b‖₂ / ‖b‖₂, the parity measure of the test suite. NaN anywhere gives infinity, so it never passes.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_l2 of tensors of different sizes");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::INFINITY;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip() {
        let t = Tensor::new(vec![2, 3, 2, 2], (0..24).map(|i| i as f32).collect());
        let nhwc = t.nchw_to_nhwc();
        assert_eq!(nhwc.shape, [2, 2, 2, 3]);
        // element (b=1, c=2, h=0, w=1): NHWC index ((b·H + h)·W + w)·C + c, NCHW ((b·C + c)·H + h)·W + w
        let (b, c, h, w) = (1, 2, 0, 1);
        assert_eq!(nhwc.data[((b * 2 + h) * 2 + w) * 3 + c], t.data[((b * 3 + c) * 2 + h) * 2 + w]);
        assert_eq!(nhwc.nhwc_to_nchw(), t);
    }

    #[test]
    fn rel_l2_rejects_nan() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(rel_l2(&[f32::NAN, 2.0], &[1.0, 2.0]).is_infinite());
        assert!((rel_l2(&[1.1], &[1.0]) - 0.1).abs() < 1e-6);
    }
}
