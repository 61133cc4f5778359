//! A checkpoint's `config.json` through `QuantizationConfig::from_json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oftq_aqlm::QuantizationConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = QuantizationConfig::from_json(&json, std::path::Path::new("config.json"));
});
