//! Bit-exact decoding of an [`AqlmLayer`] to a dense weight (`aqlm.md` §1.1).
//!
//! Rule (aqlm's `_dequantize_weight` on the `f32` CPU path): for every tile,
//! `acc: f32 = 0; for m ascending { acc += codebooks[m][code] }; w = acc · scale`.

use faer::Mat;

use crate::layer::AqlmLayer;
use crate::storage::FloatDtype;

impl AqlmLayer {
    /// Sum of the selected codebook entries of tile `(o, j)` without the scale:
    /// `out[a·ig + b] = Σ_{m ascending} codebooks[m][codes[o][j][m]][a][b]` (f32, from 0).
    #[inline]
    pub(crate) fn group_sum(&self, o: usize, j: usize, out: &mut [f32]) {
        let s = &self.scheme;
        let (m, k, g) = (s.num_codebooks, s.codebook_size(), s.group_len());
        let codes = &self.codes[(o * self.in_groups() + j) * m..][..m];
        out.fill(0.0);
        for (mm, &c) in codes.iter().enumerate() {
            let entry = &self.codebooks[(mm * k + usize::from(c)) * g..][..g];
            for (d, &e) in out.iter_mut().zip(entry) {
                *d += e;
            }
        }
    }

    /// [`AqlmLayer::group_sum`] for tiles of exactly `G = og·ig` values, returned by value.
    #[inline(always)]
    pub(crate) fn group_sum_fixed<const G: usize>(&self, o: usize, j: usize) -> [f32; G] {
        let m = self.scheme.num_codebooks;
        let k = self.scheme.codebook_size();
        let codes = &self.codes[(o * self.in_groups() + j) * m..][..m];
        let (cb, _) = self.codebooks.as_chunks::<G>();
        let mut out = [0f32; G];
        for (mm, &c) in codes.iter().enumerate() {
            let e = &cb[mm * k + usize::from(c)];
            for b in 0..G {
                out[b] += e[b];
            }
        }
        out
    }

    /// Decodes output groups `o0..o1` into `out`, row-major `[(o1−o0)·og, in_features]`.
    pub(crate) fn decode_rows_into(&self, o0: usize, o1: usize, out: &mut [f32]) {
        let s = &self.scheme;
        let (og, ig, i) = (s.out_group_size, s.in_group_size, self.in_features);
        if og == 1 && ig == 8 {
            for o in o0..o1 {
                let scale = self.scales[o];
                let (row, _) = out[(o - o0) * i..][..i].as_chunks_mut::<8>();
                for (j, d) in row.iter_mut().enumerate() {
                    let tile = self.group_sum_fixed::<8>(o, j);
                    for b in 0..8 {
                        d[b] = tile[b] * scale;
                    }
                }
            }
            return;
        }
        let mut tile = vec![0f32; s.group_len()];
        for o in o0..o1 {
            let scale = self.scales[o];
            for j in 0..self.in_groups() {
                self.group_sum(o, j, &mut tile);
                for a in 0..og {
                    let row = &mut out[((o - o0) * og + a) * i + j * ig..][..ig];
                    for (d, &v) in row.iter_mut().zip(&tile[a * ig..(a + 1) * ig]) {
                        *d = v * scale;
                    }
                }
            }
        }
    }

    /// Decodes input groups `j0..j1` (all rows) into `out`, row-major
    /// `[out_features, (j1−j0)·ig]`.
    pub(crate) fn decode_cols_into(&self, j0: usize, j1: usize, out: &mut [f32]) {
        let s = &self.scheme;
        let (og, ig) = (s.out_group_size, s.in_group_size);
        let width = (j1 - j0) * ig;
        if og == 1 && ig == 8 {
            for o in 0..self.out_groups() {
                let scale = self.scales[o];
                let (row, _) = out[o * width..][..width].as_chunks_mut::<8>();
                for (d, j) in row.iter_mut().zip(j0..j1) {
                    let tile = self.group_sum_fixed::<8>(o, j);
                    for b in 0..8 {
                        d[b] = tile[b] * scale;
                    }
                }
            }
            return;
        }
        let mut tile = vec![0f32; s.group_len()];
        for o in 0..self.out_groups() {
            let scale = self.scales[o];
            for j in j0..j1 {
                self.group_sum(o, j, &mut tile);
                for a in 0..og {
                    let row = &mut out[(o * og + a) * width + (j - j0) * ig..][..ig];
                    for (d, &v) in row.iter_mut().zip(&tile[a * ig..(a + 1) * ig]) {
                        *d = v * scale;
                    }
                }
            }
        }
    }

    /// The dense weight `W [out_features, in_features]` in `f32`, bit for bit what aqlm's
    /// `_dequantize_weight` gives on the `f32` path (HF on CPU): `W = fl(fl(Σ_m cb_m) · s)`.
    pub fn decode(&self) -> Mat<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let mut buf = vec![0f32; o * i];
        self.decode_rows_into(0, self.out_groups(), &mut buf);
        Mat::from_fn(o, i, |r, c| buf[r * i + c])
    }

    /// The dense weight as aqlm computes it when the model dtype is `dtype` (e.g. an `f16`
    /// model on GPU): the codebook sum is accumulated in `f32`, rounded to `dtype`, multiplied
    /// by the scale in `f32` and rounded to `dtype` again (`aqlm.md` §1.1). For
    /// [`FloatDtype::F32`] this equals [`AqlmLayer::decode`].
    pub fn decode_in_dtype(&self, dtype: FloatDtype) -> Mat<f32> {
        let s = &self.scheme;
        let (og, ig) = (s.out_group_size, s.in_group_size);
        let mut tile = vec![0f32; s.group_len()];
        let mut w = Mat::<f32>::zeros(self.out_features, self.in_features);
        for o in 0..self.out_groups() {
            let scale = dtype.round(self.scales[o]);
            for j in 0..self.in_groups() {
                self.group_sum(o, j, &mut tile);
                for a in 0..og {
                    for b in 0..ig {
                        let v = dtype.round(tile[a * ig + b]);
                        w[(o * og + a, j * ig + b)] = dtype.round(v * scale);
                    }
                }
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use crate::{AqlmLayer, AqlmScheme};

    #[test]
    fn decodes_out_group_layout() {
        // og = 2, ig = 1, one codebook of 1 bit: entry c is the 2×1 tile [c+1, −(c+1)].
        let s = AqlmScheme::new(1, 1, 1, 2).unwrap();
        let cb = vec![1.0, -1.0, 2.0, -2.0];
        let layer = AqlmLayer::new(2, 2, s, vec![0, 1], cb, vec![3.0], None).unwrap();
        let w = layer.decode();
        assert_eq!(
            [w[(0, 0)], w[(1, 0)], w[(0, 1)], w[(1, 1)]],
            [3.0, -3.0, 6.0, -6.0]
        );
        let f16 = layer.decode_in_dtype(crate::FloatDtype::F16);
        assert_eq!(f16, w);
    }
}
