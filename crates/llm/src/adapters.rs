//! PEFT OFT adapter folders on a whole model: loading one onto the AQLM projections.

use std::path::Path;

use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::{OftAdapter, load_adapter};

use crate::error::{LlmError, Result};
use crate::model::{Llama, Projection};

impl Llama {
    /// Loads the PEFT OFT adapter folder `dir` (what [`crate::distill::finetune`] or PEFT's
    /// `save_pretrained` writes) as adapter `name` onto every AQLM projection it has parameters
    /// for (keys `base_model.model.<module path>.oft_R.weight`), read once for the whole model.
    /// The adapters are frozen (see [`oftq_candle::OftLinear::set_trainable`]): forward passes
    /// record no graph, as inference wants. Returns the number of projections adapted.
    ///
    /// # Errors
    /// An unreadable folder; an adapter with a tensor for a module this model does not have, for a
    /// dense projection, or with a shape that does not fit (an adapter for another model); an
    /// adapter that adapts nothing here.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<usize> {
        let file = load_adapter(dir)?;
        let weights_path = dir.join(oftq_candle::layer::peft_io::WEIGHTS_FILE);
        let varmap = VarMap::new();
        let mut used = 0;
        let mut modules: Vec<String> = Vec::new();
        for b in self.blocks_mut() {
            for p in b.projections_mut() {
                match p {
                    Projection::Quantized(m) => {
                        let module = m.module().to_string();
                        if let Some(w) = file.weights.get(&module) {
                            let a = OftAdapter::with_weight(
                                &file.config,
                                m.base().in_features(),
                                w.clone(),
                            )
                            .map_err(|e| {
                                LlmError::malformed(
                                    &weights_path,
                                    format!("{module}: {e} (an adapter for another model?)"),
                                )
                            })?;
                            m.insert_adapter(name, &a, &varmap)?;
                            used += 1;
                            m.set_trainable(false)?;
                        }
                        modules.push(module);
                    }
                    Projection::Dense(_) => {}
                }
            }
        }
        if let Some(extra) = file.weights.keys().find(|k| !modules.contains(k)) {
            return Err(LlmError::malformed(
                &weights_path,
                format!(
                    "adapter has parameters for {extra}, which is not an AQLM projection of {} (an adapter for another model?)",
                    self.source().display()
                ),
            ));
        }
        if used == 0 {
            return Err(LlmError::malformed(
                &weights_path,
                "the adapter adapts no projection of this model",
            ));
        }
        Ok(used)
    }
}
