//! NaN/∞ is stopped where it would spread silently: adapter files, merges (`safe_merge`) and
//! training steps (the model keeps its last good adapters).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use faer::Mat;
use oftq_layer::train::{Activation, AdamW, Loss, LrSchedule, Sequential, Trainer};
use oftq_layer::{
    DenseLinear, DenseOftLinear, LayerError, Module, OftAdapter, OftConfig, OftLinear, dispatch,
    load_adapter,
};
use oftq_ortho::DivergencePolicy;

use crate::aqlm_layer;

fn cfg(block: usize) -> OftConfig {
    OftConfig {
        oft_block_size: block,
        init_weights: false,
        ..OftConfig::default()
    }
}

fn bits(m: faer::MatRef<'_, f32>) -> Vec<u32> {
    (0..m.ncols())
        .flat_map(|j| (0..m.nrows()).map(move |i| m[(i, j)].to_bits()))
        .collect()
}

#[test]
fn non_finite_adapter_parameters_are_refused_at_load() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = Mat::<f32>::zeros(4, 6);
        w[(2, 3)] = bad;
        let e = OftAdapter::with_weight(&cfg(4), 16, w.clone()).unwrap_err();
        assert!(
            e.to_string().contains("non-finite") || e.to_string().contains("NaN"),
            "{e}"
        );
        // Also with COFT (the projection must not turn NaN into a finite-looking value).
        let c = OftConfig {
            coft: true,
            ..cfg(4)
        };
        assert!(OftAdapter::with_weight(&c, 16, w.clone()).is_err());
        // And from a file: save_adapter refuses to write it, so write the file by hand.
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..4)
            .flat_map(|i| (0..6).map(move |j| (i, j)))
            .flat_map(|(i, j)| w[(i, j)].to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 6], &data)
            .unwrap();
        let st =
            safetensors::serialize([("base_model.model.proj.oft_R.weight", view)], None).unwrap();
        std::fs::write(tmp.path().join("adapter_model.safetensors"), st).unwrap();
        std::fs::write(
            tmp.path().join("adapter_config.json"),
            serde_json::to_string(&cfg(4)).unwrap(),
        )
        .unwrap();
        let mut layer = OftLinear::new(aqlm_layer("2x8", 16, 8, false, 1));
        let e =
            oftq_layer::add_peft_adapter(&mut layer, "proj", "default", tmp.path()).unwrap_err();
        assert!(e.to_string().contains("adapter_model.safetensors"), "{e}");
        assert!(
            load_adapter(tmp.path()).is_ok(),
            "the container itself is fine"
        );
    }
}

#[test]
fn safe_merge_refuses_overflowing_weights_and_leaves_the_layer_unchanged() {
    // Finite but huge base weights: a 45° rotation of (3e38, 3e38) has an entry 3e38·√2 = ∞ in f32.
    let w = Mat::<f32>::from_fn(4, 8, |_, _| 3.0e38);
    let base = DenseLinear::new(w, None, false).unwrap();
    let mut layer: DenseOftLinear = OftLinear::new(base);
    let exact = OftConfig {
        use_cayley_neumann: false,
        ..cfg(2)
    };
    let mut a = OftAdapter::new(&exact, 8, 0).unwrap();
    a.set_weight(Mat::from_fn(4, 1, |_, _| 0.414_213_57))
        .unwrap(); // tan(22.5°)
    layer.insert_adapter("default", a).unwrap();
    let before = bits(layer.base().weight());
    for safe in [true, false] {
        let e = layer.merge(None, safe).unwrap_err();
        assert!(matches!(e, LayerError::NonFinite(_)), "{e:?}");
        assert_eq!(
            bits(layer.base().weight()),
            before,
            "layer changed by a failed merge"
        );
        assert!(layer.merged_adapters().is_empty());
    }
}

fn model() -> Sequential {
    let c = OftConfig {
        module_dropout: 0.0,
        ..cfg(8)
    };
    let mut l1 = Module::Aqlm(aqlm_layer("2x8", 32, 16, true, 3));
    let mut l2 = Module::Dense(
        DenseLinear::new(
            Mat::from_fn(4, 16, |i, j| ((i * 16 + j) as f32 * 0.37).sin()),
            None,
            false,
        )
        .unwrap(),
    );
    dispatch(&mut l1, "default", &c).unwrap();
    dispatch(&mut l2, "default", &c).unwrap();
    Sequential::new()
        .push("l1", l1, Activation::Gelu)
        .push("l2", l2, Activation::Identity)
}

fn snapshot(t: &Trainer) -> Vec<Vec<u32>> {
    t.model
        .adapters()
        .iter()
        .map(|(_, a)| bits(a.weight()))
        .collect()
}

#[test]
fn a_non_finite_training_step_errors_and_keeps_the_last_good_adapters() {
    let mut t = Trainer::new(model(), AdamW::new(1e-2), LrSchedule::Constant, 0);
    let x = Mat::<f32>::from_fn(6, 32, |i, j| ((i * 32 + j) as f32 * 0.11).cos());
    let loss = Loss::CrossEntropy(vec![0, 1, 2, 3, 0, 1]);
    t.step(x.as_ref(), &loss, 0, 10).unwrap();
    let good = snapshot(&t);
    let steps = t.optimizer.steps();

    // Inputs that overflow: the loss is ∞/NaN.
    let huge = Mat::<f32>::from_fn(6, 32, |_, _| 3.0e38);
    let e = t.step(huge.as_ref(), &loss, 1, 10).unwrap_err();
    assert!(matches!(e, LayerError::NonFinite(_)), "{e:?}");
    // NaN in the input.
    let mut nan = x.clone();
    nan[(3, 5)] = f32::NAN;
    assert!(t.step(nan.as_ref(), &loss, 1, 10).is_err());
    // A NaN target for MSE.
    let target = Mat::<f32>::from_fn(6, 4, |i, _| if i == 2 { f32::NAN } else { 0.0 });
    assert!(t.step(x.as_ref(), &Loss::Mse(target), 1, 10).is_err());
    assert_eq!(snapshot(&t), good, "a failed step changed the adapters");
    assert_eq!(
        t.optimizer.steps(),
        steps,
        "a failed step advanced the optimizer"
    );

    // Through fit: the error stops training, the adapters are those of the last good step.
    let mut t2 = Trainer::new(model(), AdamW::new(1e-2), LrSchedule::Constant, 0);
    let mut after_step1 = None;
    let r = t2.fit(
        3,
        |s| Ok((if s == 2 { huge.clone() } else { x.clone() }, loss.clone())),
        |st| {
            if st.step == 1 {
                after_step1 = Some(());
            }
            ControlFlow::Continue(())
        },
    );
    assert!(matches!(r, Err(LayerError::NonFinite(_))));
    assert!(after_step1.is_some());
    let mut t3 = Trainer::new(model(), AdamW::new(1e-2), LrSchedule::Constant, 0);
    t3.fit(
        2,
        |_| Ok((x.clone(), loss.clone())),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(
        snapshot(&t2),
        snapshot(&t3),
        "fit kept other than the last good adapters"
    );
}

#[test]
fn strict_divergence_during_training_stops_and_keeps_the_last_good_adapters() {
    let c = OftConfig {
        module_dropout: 0.0,
        init_weights: true,
        ..cfg(8)
    };
    let mut base = Module::Dense(
        DenseLinear::new(
            Mat::from_fn(4, 16, |i, j| ((i * 16 + j) as f32 * 0.37).sin()),
            None,
            false,
        )
        .unwrap(),
    );
    let mut strict = c.clone();
    strict.oftq.divergence = DivergencePolicy::Error;
    dispatch(&mut base, "default", &strict).unwrap();
    let model = Sequential::new().push("l", base, Activation::Identity);
    // A huge learning rate and no clipping: one step pushes ‖Q‖₂ past 1.
    let mut t = Trainer::new(model, AdamW::new(5.0), LrSchedule::Constant, 0);
    t.clip = None;
    let x = Mat::<f32>::from_fn(5, 16, |i, j| ((i * 16 + j) as f32 * 0.21).sin());
    let before = snapshot(&t);
    let e = t
        .step(x.as_ref(), &Loss::CrossEntropy(vec![0, 1, 2, 3, 0]), 0, 1)
        .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("neumann") || e.to_string().contains("diverg"),
        "{e}"
    );
    assert_eq!(snapshot(&t), before);
    let _ = BTreeMap::<u8, u8>::new();
}
