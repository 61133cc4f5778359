//! Adapter/base mismatches are refused at load time (`load_aqlm_oft`, `OftAdapter::with_weight`)
//! with errors that name the file and the geometry — never at forward. Also: the strict
//! Neumann-divergence policy on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use faer::Mat;
use oftq_aqlm::{AqlmCheckpoint, QuantizationConfig};
use oftq_layer::{
    LayerError, LoadOptions, OftAdapter, OftConfig, load_adapter, load_aqlm_oft,
    load_aqlm_oft_with, save_adapter,
};
use oftq_ortho::{DivergencePolicy, OrthoError};
use safetensors::Dtype;

use crate::aqlm_layer;

/// A checkpoint folder with one 2x8 layer `proj` of `in_f` inputs.
fn model(dir: &Path, in_f: usize) -> PathBuf {
    let layer = aqlm_layer("2x8", in_f, 32, true, in_f as u64);
    let mut ckpt = AqlmCheckpoint::new(QuantizationConfig::new(layer.scheme()));
    ckpt.insert_layer("proj", layer).unwrap();
    let out = dir.join(format!("model{in_f}"));
    ckpt.save(&out).unwrap();
    out
}

fn config(block: usize) -> OftConfig {
    OftConfig {
        oft_block_size: block,
        target_modules: Some(oftq_layer::TargetModules::List(vec!["proj".into()])),
        ..OftConfig::default()
    }
}

/// An adapter folder with `proj`'s weight of shape `[rows, cols]` (small finite values).
fn adapter(dir: &Path, name: &str, cfg: &OftConfig, rows: usize, cols: usize) -> PathBuf {
    let w = Mat::<f32>::from_fn(rows, cols, |i, j| ((i * cols + j) % 7) as f32 * 1e-3);
    let weights = BTreeMap::from([("proj".to_string(), w.as_ref())]);
    save_adapter(&dir.join(name), "default", cfg, &weights).unwrap()
}

fn load_err(model: &Path, adapter: &Path) -> String {
    let e = load_aqlm_oft(model, "proj", &[("default".into(), adapter.to_path_buf())]).unwrap_err();
    e.to_string()
}

#[test]
fn shape_mismatches_fail_at_load_naming_file_and_geometry() {
    let tmp = tempfile::tempdir().unwrap();
    let m128 = model(tmp.path(), 128);
    let m256 = model(tmp.path(), 256);

    // Sanity: the matching adapter loads and runs.
    let good = adapter(tmp.path(), "good", &config(32), 4, 496);
    let l = load_aqlm_oft(&m128, "proj", &[("default".into(), good.clone())]).unwrap();
    l.forward(Mat::<f32>::zeros(2, 128).as_ref()).unwrap();

    // Wrong in_features: an adapter for 128 inputs (4 blocks of 32) on a 256-input layer.
    let e = load_err(&m256, &good);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("[8, 496]") && e.contains("[4, 496]"),
        "{e}"
    );
    assert!(e.contains("in_features 256"), "{e}");

    // n_elements that is not b(b−1)/2 for the configured block size (10 = block size 5).
    let e = load_err(&m128, &adapter(tmp.path(), "b5", &config(32), 4, 10));
    assert!(
        e.contains("block size 5") && e.contains("block size 32"),
        "{e}"
    );
    // n_elements that is no triangular number at all.
    let e = load_err(&m128, &adapter(tmp.path(), "tri", &config(32), 4, 7));
    assert!(e.contains("no block size"), "{e}");

    // A block size that does not divide in_features: PEFT adjusts 24 → 16 for 128 inputs (the
    // nearest divisor, ties down), so a weight with 24-blocks (276 elements) no longer fits.
    let e = load_err(&m128, &adapter(tmp.path(), "b24", &config(24), 5, 276));
    assert!(
        e.contains("block size 16") && e.contains("block size 24"),
        "{e}"
    );
    // Same with `r` that does not divide: r = 3 → 2 blocks of 64 (ties down).
    let r3 = OftConfig {
        r: 3,
        oft_block_size: 0,
        ..config(0)
    };
    let e = load_err(&m128, &adapter(tmp.path(), "r3", &r3, 3, 861));
    assert!(
        e.contains("[2, 2016]") && e.contains("block size 42"),
        "{e}"
    );
    // Wrong number of blocks (rows), and block_share expecting one row.
    let e = load_err(&m128, &adapter(tmp.path(), "rows", &config(32), 3, 496));
    assert!(e.contains("[4, 496]") && e.contains("[3, 496]"), "{e}");
    let share = OftConfig {
        block_share: true,
        ..config(32)
    };
    let e = load_err(&m128, &adapter(tmp.path(), "share", &share, 4, 496));
    assert!(e.contains("[1, 496]"), "{e}");

    // Missing tensors: no weight for the module, missing AQLM companion, unknown module.
    let other = {
        let w = Mat::<f32>::zeros(4, 496);
        let weights = BTreeMap::from([("other".to_string(), w.as_ref())]);
        save_adapter(&tmp.path().join("other"), "default", &config(32), &weights).unwrap()
    };
    let e = load_err(&m128, &other);
    assert!(
        e.contains("no oft_R.weight for module \"proj\"") && e.contains("other"),
        "{e}"
    );
    let e = load_aqlm_oft(&m128, "missing.proj", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.proj"), "{e}");
    let stripped = tmp.path().join("stripped");
    let ckpt_bytes = std::fs::read(m128.join("model.safetensors")).unwrap();
    std::fs::create_dir_all(&stripped).unwrap();
    std::fs::copy(m128.join("config.json"), stripped.join("config.json")).unwrap();
    std::fs::write(
        stripped.join("model.safetensors"),
        drop_tensor(&ckpt_bytes, "proj.scales"),
    )
    .unwrap();
    let e = load_aqlm_oft(&stripped, "proj", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("proj.scales") && e.contains("missing"), "{e}");

    // Wrong dtype and rank of the adapter tensor.
    let bad_dtype = raw_adapter(tmp.path(), "i32", Dtype::I32, &[4, 496]);
    let e = load_err(&m128, &bad_dtype);
    assert!(
        e.contains("unsupported dtype") && e.contains("oft_R.weight"),
        "{e}"
    );
    let rank3 = raw_adapter(tmp.path(), "rank3", Dtype::F32, &[4, 1, 496]);
    let e = load_err(&m128, &rank3);
    assert!(e.contains("2 dimensions"), "{e}");
}

/// `bytes` (a safetensors file) without tensor `name`.
fn drop_tensor(bytes: &[u8], name: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    safetensors::serialize(kept, None).unwrap()
}

/// An adapter folder whose single tensor has the given dtype and shape (zeros).
fn raw_adapter(dir: &Path, name: &str, dtype: Dtype, shape: &[usize]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let n: usize = shape.iter().product();
    let data = vec![0u8; n * dtype.bitsize() / 8];
    let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), &data).unwrap();
    let bytes =
        safetensors::serialize([("base_model.model.proj.oft_R.weight", view)], None).unwrap();
    std::fs::write(out.join("adapter_model.safetensors"), bytes).unwrap();
    let cfg = serde_json::to_string(&config(32)).unwrap();
    std::fs::write(out.join("adapter_config.json"), cfg).unwrap();
    out
}

#[test]
fn strict_divergence_policy_refuses_a_divergent_adapter_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    // Entries of 0.5 in a 32-block: ‖Q‖₂ far above 1, so the Neumann series cannot converge.
    let w = Mat::<f32>::from_fn(4, 496, |_, j| if j % 2 == 0 { 0.5 } else { -0.5 });
    let weights = BTreeMap::from([("proj".to_string(), w.as_ref())]);
    let dir = save_adapter(tmp.path(), "default", &config(32), &weights).unwrap();
    let file = load_adapter(&dir).unwrap();
    let weight = file.weights["proj"].clone();

    // Default policy (warn): loads.
    assert!(OftAdapter::with_weight(&file.config, 128, weight.clone()).is_ok());
    // Strict: a typed error naming the block and the bound.
    let mut strict = file.config.clone();
    strict.oftq.divergence = DivergencePolicy::Error;
    let e = OftAdapter::with_weight(&strict, 128, weight.clone()).unwrap_err();
    assert!(
        matches!(e, LayerError::Ortho(OrthoError::NeumannDivergence { block: 0, bound }) if bound >= 1.0),
        "{e:?}"
    );
    // Exact Cayley has no series to diverge.
    let exact = OftConfig {
        use_cayley_neumann: false,
        ..strict
    };
    assert!(OftAdapter::with_weight(&exact, 128, weight).is_ok());

    // Through the checkpoint loader: the file cannot say "strict", the caller can.
    let model = model(tmp.path(), 128);
    let adapters = [("default".to_string(), dir.clone())];
    assert!(load_aqlm_oft(&model, "proj", &adapters).is_ok());
    let strict = LoadOptions {
        divergence: DivergencePolicy::Error,
    };
    let e = load_aqlm_oft_with(&model, "proj", &adapters, strict).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("adapter_model.safetensors") && text.contains("does not converge"),
        "{text}"
    );
}

/// `num_cayley_neumann_terms` is not validated by PEFT; oftq caps it at `MAX_NEUMANN_TERMS`, so an
/// absurd value in `adapter_config.json` gives a typed error, not a panic or a huge allocation.
#[test]
fn absurd_neumann_term_count_is_a_typed_error() {
    let text = format!(
        r#"{{"peft_type": "OFT", "r": 0, "oft_block_size": 4, "use_cayley_neumann": true, "num_cayley_neumann_terms": {}}}"#,
        i64::MAX
    );
    let err =
        oftq_layer::peft_io::parse_config(&text, Path::new("adapter_config.json")).unwrap_err();
    assert!(
        err.to_string().contains("num_cayley_neumann_terms"),
        "{err}"
    );
    // The same config built in code is refused when the adapter is made.
    let c = OftConfig {
        oft_block_size: 4,
        num_cayley_neumann_terms: i64::MAX,
        ..OftConfig::default()
    };
    let built = std::panic::catch_unwind(|| {
        OftAdapter::new(&c, 16, 0)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(
        matches!(built, Ok(Err(_))),
        "expected a typed error, got {built:?}"
    );
}

/// Header fields claiming absurd sizes are refused from the header alone: a header length past
/// the end of the file, and tensors whose shape needs more bytes than the file has.
#[test]
fn absurd_sizes_in_headers_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path(), 128);
    let a = adapter(tmp.path(), "a", &config(32), 4, 496);
    let model_st = std::fs::read(m.join("model.safetensors")).unwrap();
    let adapter_st = std::fs::read(a.join("adapter_model.safetensors")).unwrap();

    let with_header = |st: &[u8], edit: &dyn Fn(&mut serde_json::Value)| {
        let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
        let mut h: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
        edit(&mut h);
        let hb = serde_json::to_vec(&h).unwrap();
        let mut out = (hb.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&hb);
        out.extend_from_slice(&st[8 + n..]);
        out
    };
    let huge_shape = |key: &'static str| {
        move |h: &mut serde_json::Value| {
            h[key]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 20])
        }
    };
    let huge_offsets = |key: &'static str| {
        move |h: &mut serde_json::Value| {
            h[key]["data_offsets"] = serde_json::json!([0, u64::MAX / 2])
        }
    };
    let mut long_len = model_st.clone();
    long_len[..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());

    let model_inputs = [
        long_len,
        with_header(&model_st, &huge_shape("proj.codes")),
        with_header(&model_st, &huge_offsets("proj.codebooks")),
    ];
    for (i, st) in model_inputs.iter().enumerate() {
        std::fs::write(m.join("model.safetensors"), st).unwrap();
        let e = AqlmCheckpoint::load(&m).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "model input {i}: {e}");
    }
    let key = "base_model.model.proj.oft_R.weight";
    let mut long_len = adapter_st.clone();
    long_len[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let adapter_inputs = [
        long_len,
        with_header(&adapter_st, &huge_shape(key)),
        with_header(&adapter_st, &huge_offsets(key)),
    ];
    for (i, st) in adapter_inputs.iter().enumerate() {
        std::fs::write(a.join("adapter_model.safetensors"), st).unwrap();
        let e = load_adapter(&a).unwrap_err().to_string();
        assert!(
            e.contains("adapter_model.safetensors"),
            "adapter input {i}: {e}"
        );
    }
}

/// Zero-token batches and wrong widths through every kernel and the OFT layer: empty outputs or
/// typed errors.
#[test]
fn empty_and_misshaped_inputs_give_empty_outputs_or_typed_errors() {
    use oftq_aqlm::Kernel;
    let layer = aqlm_layer("2x8", 64, 16, true, 3);
    for k in [
        Kernel::Lut,
        Kernel::DecodeDot,
        Kernel::TiledGemm,
        Kernel::Reference,
    ] {
        let y = layer
            .forward_with(Mat::<f32>::zeros(0, 64).as_ref(), k)
            .unwrap();
        assert_eq!((y.nrows(), y.ncols()), (0, 16), "{k:?}");
        let dx = layer
            .backward_input_with(Mat::<f32>::zeros(0, 16).as_ref(), k)
            .unwrap();
        assert_eq!((dx.nrows(), dx.ncols()), (0, 64), "{k:?}");
        assert!(
            layer
                .forward_with(Mat::<f32>::zeros(2, 63).as_ref(), k)
                .is_err()
        );
        assert!(
            layer
                .backward_input_with(Mat::<f32>::zeros(2, 17).as_ref(), k)
                .is_err()
        );
    }
    let oft = oftq_layer::AqlmOftLinear::with_adapter(layer, "default", &config(16)).unwrap();
    let (y, cache) = oft
        .forward_cached(Mat::<f32>::zeros(0, 64).as_ref(), None)
        .unwrap();
    let g = oft.backward(&cache, y.as_ref()).unwrap();
    assert_eq!(g.input.nrows(), 0);
    assert!(oft.forward(Mat::<f32>::zeros(1, 65).as_ref()).is_err());
    assert!(
        oft.backward(&cache, Mat::<f32>::zeros(1, 16).as_ref())
            .is_err()
    );
}
