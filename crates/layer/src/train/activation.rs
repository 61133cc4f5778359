//! Elementwise activations and their derivatives.

use faer::{Mat, MatRef};

/// An elementwise activation applied after a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `f(z) = z`.
    #[default]
    Identity,
    /// `f(z) = max(z, 0)` (derivative 0 at 0).
    Relu,
    /// `f(z) = z·Φ(z)` with the exact normal CDF `Φ(z) = ½(1 + erf(z/√2))` (PyTorch's default GELU);
    /// `erf` by Abramowitz–Stegun 7.1.26 refined to `|error| < 1.5·10⁻⁷`.
    Gelu,
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn erf(x: f64) -> f64 {
    // Abramowitz & Stegun 7.1.26.
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

impl Activation {
    /// `f(z)` elementwise.
    pub fn forward(self, z: MatRef<'_, f32>) -> Mat<f32> {
        match self {
            Self::Identity => z.to_owned(),
            Self::Relu => Mat::from_fn(z.nrows(), z.ncols(), |i, j| z[(i, j)].max(0.0)),
            Self::Gelu => Mat::from_fn(z.nrows(), z.ncols(), |i, j| {
                let v = f64::from(z[(i, j)]);
                (v * 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2))) as f32
            }),
        }
    }

    /// `∂L/∂z = f'(z) ⊙ ∂L/∂f`.
    pub fn backward(self, z: MatRef<'_, f32>, g: MatRef<'_, f32>) -> Mat<f32> {
        match self {
            Self::Identity => g.to_owned(),
            Self::Relu => Mat::from_fn(z.nrows(), z.ncols(), |i, j| {
                if z[(i, j)] > 0.0 { g[(i, j)] } else { 0.0 }
            }),
            Self::Gelu => Mat::from_fn(z.nrows(), z.ncols(), |i, j| {
                let v = f64::from(z[(i, j)]);
                let cdf = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
                let pdf = FRAC_1_SQRT_2PI * (-0.5 * v * v).exp();
                ((cdf + v * pdf) * f64::from(g[(i, j)])) as f32
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_values_and_derivative() {
        // torch.nn.functional.gelu(torch.tensor([-1., 0.5, 2.])) = [-0.1587, 0.3457, 1.9545]
        let z = faer::mat![[-1.0f32, 0.5, 2.0]];
        let y = Activation::Gelu.forward(z.as_ref());
        for (a, b) in [
            (y[(0, 0)], -0.158_655_3),
            (y[(0, 1)], 0.345_731_4),
            (y[(0, 2)], 1.954_499_7),
        ] {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let h = 1e-3f32;
        for act in [Activation::Gelu, Activation::Relu, Activation::Identity] {
            let g = act.backward(z.as_ref(), faer::mat![[1.0f32, 1.0, 1.0]].as_ref());
            for j in 0..3 {
                let (mut p, mut m) = (z.clone(), z.clone());
                p[(0, j)] += h;
                m[(0, j)] -= h;
                let fd =
                    (act.forward(p.as_ref())[(0, j)] - act.forward(m.as_ref())[(0, j)]) / (2.0 * h);
                assert!((fd - g[(0, j)]).abs() < 1e-3, "{act:?} {j}");
            }
        }
    }
}
