//! `adapter_config.json` text through `parse_config`, then `OftAdapter::new` on a few widths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oftq_layer::OftAdapter;
use oftq_layer::peft_io::parse_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = parse_config(text, std::path::Path::new("adapter_config.json")) else {
        return;
    };
    for in_features in [1usize, 7, 128, 4096] {
        let _ = OftAdapter::new(&config, in_features, 0);
    }
});
