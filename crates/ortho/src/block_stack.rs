//! [`BlockStack`]: equally shaped matrices side by side in one allocation.

use faer::{Mat, MatRef};

use crate::real::Real;

/// `len` matrices of the same shape `rows × width`, stored side by side as the column ranges of
/// one column-major `rows × len·width` matrix: item `i` is columns `i·width .. (i+1)·width`.
///
/// [`BlockRotation`](crate::BlockRotation) keeps its rotation blocks this way: one allocation
/// for all of them instead of one per block (an aligned allocation and free cost about as much as
/// a third of a `32 × 32` Cayley transform here).
///
/// ```
/// use faer::Mat;
/// use oftq_ortho::BlockStack;
/// let stack = BlockStack::from_blocks(&[Mat::<f64>::identity(2, 2), Mat::zeros(2, 2)]).unwrap();
/// assert_eq!((stack.len(), stack.nrows(), stack.ncols()), (2, 2, 2));
/// assert_eq!(stack.get(0).unwrap()[(1, 1)], 1.0);
/// assert!(stack.iter().nth(1).unwrap().norm_max() == 0.0);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStack<T: Real> {
    data: Mat<T>,
    len: usize,
    width: usize,
}

impl<T: Real> BlockStack<T> {
    /// Wraps `data` (`rows × len·width`) as `len` items of `rows × width`; `None` if the column
    /// count is not `len·width`.
    pub fn new(data: Mat<T>, len: usize, width: usize) -> Option<Self> {
        (len.checked_mul(width) == Some(data.ncols())).then_some(Self { data, len, width })
    }

    /// [`new`](Self::new) for a `data` known to have `len·width` columns.
    pub(crate) fn from_parts(data: Mat<T>, len: usize, width: usize) -> Self {
        debug_assert_eq!(data.ncols(), len * width);
        Self { data, len, width }
    }

    /// Copies equally shaped matrices into one stack; `None` if their shapes differ.
    pub fn from_blocks(blocks: &[Mat<T>]) -> Option<Self> {
        let (rows, width) = blocks.first().map_or((0, 0), |m| (m.nrows(), m.ncols()));
        if blocks
            .iter()
            .any(|m| m.nrows() != rows || m.ncols() != width)
        {
            return None;
        }
        let data = Mat::from_fn(rows, blocks.len() * width, |i, c| {
            blocks[c / width][(i, c % width)]
        });
        Self::new(data, blocks.len(), width)
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of every item.
    pub fn nrows(&self) -> usize {
        self.data.nrows()
    }

    /// Columns of every item.
    pub fn ncols(&self) -> usize {
        self.width
    }

    /// Item `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<MatRef<'_, T>> {
        (i < self.len).then(|| self.block(i))
    }

    /// Item `i` (the caller guarantees `i < len`).
    pub(crate) fn block(&self, i: usize) -> MatRef<'_, T> {
        self.data.as_ref().subcols(i * self.width, self.width)
    }

    /// The items in order.
    pub fn iter(&self) -> Blocks<'_, T> {
        Blocks {
            stack: self,
            range: 0..self.len,
        }
    }

    /// All items side by side: the `rows × len·width` matrix.
    pub fn as_mat(&self) -> MatRef<'_, T> {
        self.data.as_ref()
    }

    /// The items as separate matrices.
    pub fn to_vec(&self) -> Vec<Mat<T>> {
        self.iter().map(|m| m.to_owned()).collect()
    }
}

impl<'a, T: Real> IntoIterator for &'a BlockStack<T> {
    type Item = MatRef<'a, T>;
    type IntoIter = Blocks<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the items of a [`BlockStack`], from [`BlockStack::iter`].
#[derive(Debug, Clone)]
pub struct Blocks<'a, T: Real> {
    stack: &'a BlockStack<T>,
    range: std::ops::Range<usize>,
}

impl<'a, T: Real> Iterator for Blocks<'a, T> {
    type Item = MatRef<'a, T>;

    fn next(&mut self) -> Option<Self::Item> {
        self.range.next().map(|i| self.stack.block(i))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl<T: Real> DoubleEndedIterator for Blocks<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|i| self.stack.block(i))
    }
}

impl<T: Real> ExactSizeIterator for Blocks<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_column_ranges() {
        let blocks: Vec<Mat<f32>> = (0..3)
            .map(|k| Mat::from_fn(2, 4, |i, j| (k * 100 + i * 10 + j) as f32))
            .collect();
        let stack = BlockStack::from_blocks(&blocks).unwrap();
        assert_eq!((stack.len(), stack.nrows(), stack.ncols()), (3, 2, 4));
        assert_eq!(stack.to_vec(), blocks);
        assert_eq!(stack.as_mat().ncols(), 12);
        assert!(stack.get(3).is_none());
        for (a, b) in (&stack).into_iter().zip(&blocks) {
            assert_eq!(a, b.as_ref());
        }
        assert!(BlockStack::from_blocks(&[Mat::<f32>::zeros(2, 2), Mat::zeros(2, 3)]).is_none());
        assert!(BlockStack::new(Mat::<f32>::zeros(2, 5), 2, 2).is_none());
        let empty = BlockStack::<f64>::from_blocks(&[]).unwrap();
        assert!(empty.is_empty() && empty.iter().next().is_none());
    }
}
