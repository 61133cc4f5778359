//! Helpers shared by the integration tests.

use oftq_llm::oftq_candle::candle_core::Tensor;

/// `max |a − b|` over all elements (`f32` tensors of one shape); panics otherwise.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
