//! The candle modules against oftq-layer's: dropout, adapter order and switches, dtypes, dense
//! bases, files, training with a candle optimizer, and errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{aqlm, mat, rel_max, tensor};
use oftq_candle::candle_core::{DType, Device, Module, Tensor, Var};
use oftq_candle::candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use oftq_candle::layer::faer::Mat;
use oftq_candle::layer::rand::SeedableRng;
use oftq_candle::layer::rand::rngs::StdRng;
use oftq_candle::layer::{DenseLinear, OftConfig, OftLinear};
use oftq_candle::{AqlmLinear, AqlmOftLinear, DenseOftLinear, save_adapter, var_name};

fn config(b: usize) -> OftConfig {
    OftConfig {
        oft_block_size: b,
        init_weights: false,
        ..OftConfig::default()
    }
}

/// An oftq-layer module with two adapters, and its candle twin.
fn pair(
    c1: &OftConfig,
    c2: &OftConfig,
) -> (oftq_candle::layer::AqlmOftLinear, AqlmOftLinear, VarMap) {
    let mut layer = OftLinear::with_adapter(aqlm(64, 24, "2x8", 5), "a", c1).unwrap();
    layer.add_adapter("b", c2).unwrap();
    let varmap = VarMap::new();
    let m = AqlmOftLinear::from_layer(&layer, "blk.proj", &varmap).unwrap();
    (layer, m, varmap)
}

#[test]
fn module_dropout_in_training_mode_matches_oftq_layer() {
    let c = OftConfig {
        module_dropout: 0.5,
        ..config(8)
    };
    let (layer, m, _) = pair(&c, &config(16));
    let x = tensor(6, 64, 1);
    let xm = mat(&x);
    // Inference: no dropout.
    let y0 = layer.forward(xm.as_ref()).unwrap();
    assert!(rel_max(&mat(&m.forward(&x).unwrap()), &y0) < 1e-6);
    // Training: the same masks from the same seed, outputs and gradients as oftq-layer's.
    for seed in [3, 4] {
        m.seed(seed);
        let xv = Var::from_tensor(&x).unwrap();
        let y = m.forward_t(xv.as_tensor(), true).unwrap();
        let (y_ref, cache) = layer
            .forward_cached(xm.as_ref(), Some(&mut StdRng::seed_from_u64(seed)))
            .unwrap();
        assert!(rel_max(&mat(&y), &y_ref) < 1e-6);
        assert!(rel_max(&y_ref, &y0) > 1e-3, "dropout changed nothing");
        let dy = tensor(6, 24, 2);
        let grads = y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = layer.backward(&cache, mat(&dy).as_ref()).unwrap();
        assert!(rel_max(&mat(grads.get(xv.as_tensor()).unwrap()), &g_ref.input) < 1e-6);
        for (name, g) in &g_ref.adapters {
            let var = m.adapter(name).unwrap().var();
            assert!(rel_max(&mat(grads.get(var.as_tensor()).unwrap()), g) < 1e-6);
        }
    }
    // set_training switches Module::forward.
    m.set_training(true);
    m.seed(3);
    let y_train = m.forward(&x).unwrap();
    m.set_training(false);
    assert!(rel_max(&mat(&y_train), &y0) > 1e-3);
    assert!(rel_max(&mat(&m.forward(&x).unwrap()), &y0) < 1e-6);
}

#[test]
fn adapter_order_enable_and_leading_dims() {
    let (mut layer, mut m, _) = pair(&config(8), &config(16));
    let x3 = Tensor::from_vec(common::uniform(2 * 3 * 64, 9), (2, 3, 64), &Device::Cpu).unwrap();
    let x2 = x3.reshape((6, 64)).unwrap();
    let check = |m: &AqlmOftLinear, layer: &oftq_candle::layer::AqlmOftLinear| {
        let y3 = m.forward(&x3).unwrap();
        assert_eq!(y3.dims(), &[2, 3, 24]);
        let y_ref = layer.forward(mat(&x2).as_ref()).unwrap();
        assert!(rel_max(&mat(&y3.reshape((6, 24)).unwrap()), &y_ref) < 1e-6);
        y_ref
    };
    let ab = check(&m, &layer);
    m.set_adapters(&["b", "a"]).unwrap();
    layer.set_adapters(&["b", "a"]).unwrap();
    let ba = check(&m, &layer);
    assert!(
        rel_max(&ab, &ba) > 1e-4,
        "the order of two rotations matters"
    );
    m.enable_adapters(false);
    layer.enable_adapters(false);
    let base = check(&m, &layer);
    let plain = AqlmLinear::new(layer.base().clone());
    assert_eq!(mat(&plain.forward(&x2).unwrap()), base);
    assert!(m.set_adapters(&["c"]).is_err());
    assert_eq!(m.active_adapters(), ["b", "a"]);
    // to_layer round-trips the state.
    let back = m.to_layer().unwrap();
    assert_eq!(back.active_adapters(), ["b", "a"]);
    assert!(!back.adapters_enabled());
}

#[test]
fn half_precision_inputs_and_bad_inputs() {
    let (_, m, _) = pair(&config(8), &config(8));
    let x = tensor(4, 64, 3);
    let y = m.forward(&x).unwrap();
    for dt in [DType::F16, DType::BF16] {
        let yh = m.forward(&x.to_dtype(dt).unwrap()).unwrap();
        assert_eq!(yh.dtype(), dt);
        let tol = if dt == DType::F16 { 1e-2 } else { 5e-2 };
        assert!(rel_max(&mat(&yh), &mat(&y)) < tol);
    }
    let e = m.forward(&x.to_dtype(DType::F64).unwrap()).unwrap_err();
    assert!(e.to_string().contains("f32, f16 or bf16"), "{e}");
    let e = m.forward(&tensor(4, 63, 3)).unwrap_err();
    assert!(e.to_string().contains("[..., 64]"), "{e}");
    let e = m
        .forward(&Tensor::zeros((), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("[..., 64]"), "{e}");
    // Non-contiguous inputs are fine (made contiguous).
    let xt = tensor(64, 4, 3).t().unwrap();
    let yt = m.forward(&xt).unwrap();
    assert_eq!(
        mat(&yt),
        mat(&m.forward(&xt.contiguous().unwrap()).unwrap())
    );
    // A NaN parameter is an error, not a panic.
    let var = m.adapter("a").unwrap().var();
    var.set(&Tensor::full(f32::NAN, var.dims(), &Device::Cpu).unwrap())
        .unwrap();
    assert!(m.forward(&x).is_err());
}

#[test]
fn dense_base_matches_oftq_layer() {
    let w = Mat::from_fn(10, 32, |i, j| ((i * 32 + j) as f32 * 0.37).sin() / 6.0);
    let base =
        DenseLinear::new(w, Some((0..10).map(|i| i as f32 / 10.0).collect()), false).unwrap();
    let layer = OftLinear::with_adapter(base, "default", &config(8)).unwrap();
    let varmap = VarMap::new();
    let m = DenseOftLinear::from_layer(&layer, "fc", &varmap).unwrap();
    let x = Var::from_tensor(&tensor(3, 32, 4)).unwrap();
    let y = m.forward(x.as_tensor()).unwrap();
    let (y_ref, cache) = layer
        .forward_cached(mat(x.as_tensor()).as_ref(), None)
        .unwrap();
    assert!(rel_max(&mat(&y), &y_ref) < 1e-6);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g_ref = layer.backward(&cache, Mat::ones(3, 10).as_ref()).unwrap();
    assert!(rel_max(&mat(grads.get(x.as_tensor()).unwrap()), &g_ref.input) < 1e-6);
    // Merged adapters cannot be turned into Vars.
    let mut merged = layer.clone();
    merged.merge(None, false).unwrap();
    let e = DenseOftLinear::from_layer(&merged, "fc2", &varmap).unwrap_err();
    assert!(e.to_string().contains("unmerge"), "{e}");
}

#[test]
fn varmap_names_and_duplicates() {
    let (_, m, varmap) = pair(&config(8), &config(16));
    let names: std::collections::BTreeSet<String> =
        varmap.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(
        names,
        [var_name("blk.proj", "a"), var_name("blk.proj", "b")]
            .into_iter()
            .collect()
    );
    assert_eq!(
        var_name("blk.proj", "a"),
        "base_model.model.blk.proj.oft_R.a.weight"
    );
    // The same module registered twice in one VarMap is refused.
    let layer = m.to_layer().unwrap();
    let e = AqlmOftLinear::from_layer(&layer, "blk.proj", &varmap).unwrap_err();
    assert!(e.to_string().contains("already has a variable"), "{e}");
    let mut m2 = AqlmOftLinear::new(aqlm(64, 24, "2x8", 5), "other");
    m2.add_adapter("a", &config(8), &varmap).unwrap();
    assert!(m2.add_adapter("a", &config(8), &varmap).is_err());
    // add_adapter initialises exactly as oftq-layer's.
    let l = OftLinear::with_adapter(aqlm(64, 24, "2x8", 5), "a", &config(8)).unwrap();
    assert_eq!(
        m2.adapter("a").unwrap().weight().unwrap(),
        l.adapter("a").unwrap().weight()
    );
}

/// Trains with candle's AdamW (COFT projected after every step), then saves: the files equal, byte
/// for byte, what oftq-layer writes for the same values, and load back to the same outputs.
#[test]
fn train_with_adamw_then_save_like_oftq_layer() {
    let coft = OftConfig {
        coft: true,
        eps: 0.3,
        ..config(8)
    };
    let varmap = VarMap::new();
    let mut m = AqlmOftLinear::new(aqlm(64, 24, "2x8", 5), "proj");
    m.add_adapter("default", &coft, &varmap).unwrap();
    let x = tensor(16, 64, 7);
    let target = tensor(16, 24, 8).affine(0.1, 0.0).unwrap();
    let loss = || {
        m.forward(&x)
            .unwrap()
            .sub(&target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 5e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let first = loss().to_scalar::<f32>().unwrap();
    for _ in 0..20 {
        opt.backward_step(&loss()).unwrap();
        m.project_coft().unwrap();
    }
    let last = loss().to_scalar::<f32>().unwrap();
    assert!(last < 0.9 * first, "{first} → {last}");
    // Projected: every block within the PEFT radius eps/√r.
    let a = m.adapter("default").unwrap();
    let w = a.weight().unwrap();
    let radius = 0.3 / (w.nrows() as f32).sqrt();
    for i in 0..w.nrows() {
        // Frobenius norm of Q = U − Uᵀ is √2 times that of the packed row.
        let q_norm = (2.0f32).sqrt() * w.row(i).norm_l2();
        assert!(
            q_norm <= radius * (1.0 + 1e-5),
            "block {i}: {q_norm} > {radius}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = save_adapter(
        &dir.path().join("candle"),
        "default",
        &coft,
        m.adapter("default"),
    )
    .unwrap();
    let weights = [("proj".to_string(), w.as_ref())].into_iter().collect();
    let theirs =
        oftq_candle::layer::save_adapter(&dir.path().join("layer"), "default", &coft, &weights)
            .unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(
            std::fs::read(ours.join(f)).unwrap(),
            std::fs::read(theirs.join(f)).unwrap(),
            "{f}"
        );
    }
    let mut back = OftLinear::new(m.base().clone());
    oftq_candle::layer::add_peft_adapter(&mut back, "proj", "default", &ours).unwrap();
    let y = m.forward(&x).unwrap();
    assert!(rel_max(&back.forward(mat(&x).as_ref()).unwrap(), &mat(&y)) < 1e-6);
    // Saving refuses mixed names and empty sets.
    assert!(save_adapter(dir.path(), "other", &coft, m.adapter("default")).is_err());
    assert!(save_adapter(dir.path(), "default", &coft, None).is_err());
}

/// One adapter runs as one op (rotation and base together); the same adapter through the rotation
/// op followed by the frozen base gives the same values and gradients.
#[test]
fn fused_single_adapter_equals_rotation_then_base() {
    let varmap = VarMap::new();
    let mut m = AqlmOftLinear::new(aqlm(64, 24, "2x8", 5), "p");
    m.add_adapter("a", &config(8), &varmap).unwrap();
    let x = Var::from_tensor(&tensor(5, 64, 3)).unwrap();
    let fused = m.forward(x.as_tensor()).unwrap();
    let a = m.adapter("a").unwrap();
    let spec = *a.spec();
    let rotated = oftq_candle::rotate(x.as_tensor(), a.var().as_tensor(), &spec).unwrap();
    let chained = AqlmLinear::new(m.base().clone()).forward(&rotated).unwrap();
    assert!(rel_max(&mat(&fused), &mat(&chained)) < 1e-6);
    let dy = tensor(5, 24, 9);
    let gf = fused
        .mul(&dy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gc = chained
        .mul(&dy)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for t in [x.as_tensor(), a.var().as_tensor()] {
        assert!(rel_max(&mat(gf.get(t).unwrap()), &mat(gc.get(t).unwrap())) < 1e-6);
    }
}

/// Frozen adapters record no graph and use the values they were frozen with.
#[test]
fn frozen_adapters_record_nothing() {
    let (_, mut m, _) = pair(&config(8), &config(16));
    let x = Var::from_tensor(&tensor(4, 64, 3)).unwrap();
    let y0 = m.forward(x.as_tensor()).unwrap();
    m.set_trainable(false).unwrap();
    assert!(!m.adapter("a").unwrap().is_trainable());
    let y1 = m.forward(x.as_tensor()).unwrap();
    assert_eq!(mat(&y0), mat(&y1));
    let grads = y1.sum_all().unwrap().backward().unwrap();
    assert!(
        grads
            .get(m.adapter("a").unwrap().var().as_tensor())
            .is_none()
    );
    assert!(grads.get(x.as_tensor()).is_some());
    // A change to the Var shows once the adapter is frozen again.
    let var = m.adapter("a").unwrap().var().clone();
    var.set(&var.as_tensor().affine(2.0, 0.0).unwrap()).unwrap();
    assert_eq!(mat(&m.forward(x.as_tensor()).unwrap()), mat(&y1));
    m.set_trainable(true).unwrap();
    assert!(rel_max(&mat(&m.forward(x.as_tensor()).unwrap()), &mat(&y1)) > 1e-4);
}
