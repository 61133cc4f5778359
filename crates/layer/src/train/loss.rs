//! Losses: value and gradient with respect to the model output.

use faer::{Mat, MatRef};
use multiversion::multiversion;

use crate::error::{Result, shape};

/// A training loss over a batch of `tokens` rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// Mean squared error `L = (1/(n·m)) Σ (y − t)²` against a target of the output's shape.
    Mse(Mat<f32>),
    /// Cross-entropy of `softmax(y)` against one class index per row, averaged over rows:
    /// `L = −(1/n) Σᵢ log softmax(yᵢ)[cᵢ]`.
    CrossEntropy(Vec<usize>),
}

impl Loss {
    /// `(L, ∂L/∂y)`, accumulated in `f64`.
    ///
    /// # Errors
    /// [`crate::LayerError::Shape`] for a target of the wrong shape or a class index out of range.
    pub fn value_and_grad(&self, y: MatRef<'_, f32>) -> Result<(f64, Mat<f32>)> {
        let (n, m) = (y.nrows(), y.ncols());
        match self {
            Self::Mse(t) => {
                if t.nrows() != n || t.ncols() != m {
                    return Err(shape(
                        "MSE target",
                        format!("[{n}, {m}]"),
                        format!("[{}, {}]", t.nrows(), t.ncols()),
                    ));
                }
                let scale = 1.0 / (n * m).max(1) as f64;
                // The squares are summed in eight interleaved partial sums (one chain of 262 144
                // additions was 1.4% of a 64 × 4096 training step), combined at the end.
                let mut acc = [0.0f64; 8];
                let mut g = Mat::<f32>::zeros(n, m);
                for j in 0..m {
                    let (yc, tc) = (y.col(j).try_as_col_major(), t.col(j).try_as_col_major());
                    if let (Some(yc), Some(tc)) = (yc, tc)
                        && let Some(gc) = g.col_mut(j).try_as_col_major_mut()
                    {
                        mse_column(
                            yc.as_slice(),
                            tc.as_slice(),
                            scale,
                            &mut acc,
                            gc.as_slice_mut(),
                        );
                        continue;
                    }
                    for i in 0..n {
                        let d = f64::from(y[(i, j)]) - f64::from(t[(i, j)]);
                        acc[i % 8] += d * d;
                        g[(i, j)] = (2.0 * d * scale) as f32;
                    }
                }
                let loss: f64 = acc.iter().sum();
                Ok((loss * scale, g))
            }
            Self::CrossEntropy(labels) => {
                if labels.len() != n || labels.iter().any(|&c| c >= m) {
                    return Err(shape(
                        "cross-entropy labels",
                        format!("{n} labels in 0..{m}"),
                        format!("{} labels", labels.len()),
                    ));
                }
                let mut g = Mat::<f32>::zeros(n, m);
                let mut loss = 0.0f64;
                for i in 0..n {
                    let mx = (0..m)
                        .map(|j| f64::from(y[(i, j)]))
                        .fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = (0..m).map(|j| (f64::from(y[(i, j)]) - mx).exp()).sum();
                    loss -= f64::from(y[(i, labels[i])]) - mx - z.ln();
                    for j in 0..m {
                        let p = (f64::from(y[(i, j)]) - mx).exp() / z;
                        g[(i, j)] =
                            ((p - if j == labels[i] { 1.0 } else { 0.0 }) / n as f64) as f32;
                    }
                }
                Ok((loss / n.max(1) as f64, g))
            }
        }
    }
}

/// One contiguous column of the MSE: element `k` of every full group of eight adds `(y − t)²`
/// to `acc[k mod 8]`, the tail's element `full + l` to `acc[l]` (the order of the strided
/// path), and `g = 2·(y − t)·scale` is written, all in `f64`. Dispatched to the widest vectors
/// the CPU has (the same bits: no fused multiply-add): the scalar loop was 0.4 ms of a
/// 64 × 4096 training step.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn mse_column(y: &[f32], t: &[f32], scale: f64, acc: &mut [f64; 8], g: &mut [f32]) {
    let term = |y: f32, t: f32, acc: &mut f64, g: &mut f32| {
        let d = f64::from(y) - f64::from(t);
        *acc += d * d;
        *g = (2.0 * d * scale) as f32;
    };
    let (y8, y_tail) = y.as_chunks::<8>();
    let (t8, t_tail) = t.as_chunks::<8>();
    let (g8, g_tail) = g.as_chunks_mut::<8>();
    for ((y, t), g) in y8.iter().zip(t8).zip(g8) {
        for l in 0..8 {
            term(y[l], t[l], &mut acc[l], &mut g[l]);
        }
    }
    for (l, ((&y, &t), g)) in y_tail.iter().zip(t_tail).zip(g_tail).enumerate() {
        term(y, t, &mut acc[l], g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_gradients() {
        let y = faer::mat![[1.0f32, 2.0], [0.5, -1.0]];
        let (l, g) = Loss::Mse(Mat::zeros(2, 2))
            .value_and_grad(y.as_ref())
            .unwrap();
        assert!((l - 6.25 / 4.0).abs() < 1e-12 && (g[(0, 1)] - 1.0).abs() < 1e-7);
        // A strided output (a transposed view) gives the gradient of its owned copy.
        let wide = Mat::<f32>::from_fn(19, 5, |i, j| (i * 5 + j) as f32 * 0.1 - 2.0);
        let target = Mat::<f32>::from_fn(5, 19, |i, j| (i + 2 * j) as f32 * 0.05);
        let mse = Loss::Mse(target);
        let (lv, gv) = mse.value_and_grad(wide.transpose()).unwrap();
        let (lo, go) = mse
            .value_and_grad(wide.transpose().to_owned().as_ref())
            .unwrap();
        assert!((lv - lo).abs() <= 1e-12 * lo && gv == go);
        // Columns long enough for the vector body (21 rows: two groups of eight and a tail):
        // the contiguous kernel gives the bits of the strided path, and the value is the mean.
        let tall = Mat::<f32>::from_fn(6, 21, |i, j| (i * 21 + j) as f32 * 0.07 - 3.0);
        let target = Mat::<f32>::from_fn(21, 6, |i, j| (i + 3 * j) as f32 * 0.02);
        let mse = Loss::Mse(target.clone());
        let (lv, gv) = mse.value_and_grad(tall.transpose()).unwrap();
        let (lo, go) = mse
            .value_and_grad(tall.transpose().to_owned().as_ref())
            .unwrap();
        assert!(lv.to_bits() == lo.to_bits() && gv == go);
        let direct: f64 = (0..21)
            .flat_map(|i| (0..6).map(move |j| (i, j)))
            .map(|(i, j)| (f64::from(tall[(j, i)]) - f64::from(target[(i, j)])).powi(2))
            .sum::<f64>()
            / (21.0 * 6.0);
        assert!((lo - direct).abs() <= 1e-12 * direct);
        let ce = Loss::CrossEntropy(vec![1, 0]);
        let (l, g) = ce.value_and_grad(y.as_ref()).unwrap();
        let h = 1e-3f32;
        let mut p = y.clone();
        p[(1, 1)] += h;
        let mut m = y.clone();
        m[(1, 1)] -= h;
        let fd = (ce.value_and_grad(p.as_ref()).unwrap().0
            - ce.value_and_grad(m.as_ref()).unwrap().0)
            / (2.0 * f64::from(h));
        assert!((fd - f64::from(g[(1, 1)])).abs() < 1e-4 && l > 0.0);
        assert!(
            Loss::CrossEntropy(vec![2, 0])
                .value_and_grad(y.as_ref())
                .is_err()
        );
    }
}
