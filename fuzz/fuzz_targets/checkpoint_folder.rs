//! AQLM checkpoint folder: `config.json` + `model.safetensors` through `AqlmCheckpoint::load`,
//! then every loaded (small) layer forward and backward with every kernel, and a re-save.
#![no_main]

mod common;

use faer::Mat;
use libfuzzer_sys::fuzz_target;
use oftq_aqlm::{AqlmCheckpoint, Kernel};

fuzz_target!(|data: &[u8]| {
    let Some((config, weights)) = common::split(data) else {
        return;
    };
    let dir = common::tempdir();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    let Ok(ckpt) = AqlmCheckpoint::load(dir.path()) else {
        return;
    };
    for layer in ckpt.layers().values() {
        if layer.in_features().saturating_mul(layer.out_features()) > 1 << 16 {
            continue;
        }
        let x = Mat::<f32>::from_fn(3, layer.in_features(), |t, f| (t + f) as f32 / 7.0);
        for k in [
            Kernel::Lut,
            Kernel::DecodeDot,
            Kernel::TiledGemm,
            Kernel::Reference,
        ] {
            if let Ok(y) = layer.forward_with(x.as_ref(), k) {
                let _ = layer.backward_input_with(y.as_ref(), k);
            }
        }
    }
    let _ = ckpt.save(&dir.path().join("resaved"));
});
