//! PEFT adapter folder: `adapter_config.json` + `adapter_model.safetensors` through
//! `load_adapter`, then every weight built as an adapter (`OftAdapter::with_weight`) on a layer
//! of matching width, and a rotation forward.
#![no_main]

mod common;

use faer::Mat;
use libfuzzer_sys::fuzz_target;
use oftq_layer::{OftAdapter, load_adapter};

fuzz_target!(|data: &[u8]| {
    let Some((config, weights)) = common::split(data) else {
        return;
    };
    let dir = common::tempdir();
    std::fs::write(dir.path().join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), weights).unwrap();
    let Ok(file) = load_adapter(dir.path()) else {
        return;
    };
    for w in file.weights.values() {
        // Widths the weight could belong to: 128 (the golden cases) and one block per row.
        for in_features in [128usize, 64, 4096] {
            if let Ok(a) = OftAdapter::with_weight(&file.config, in_features, w.clone()) {
                let x = Mat::<f32>::from_fn(2, in_features, |t, f| (t + f) as f32 / 9.0);
                let _ = a.rotation().forward(x.as_ref());
            }
        }
    }
});
