//! Malformed checkpoint folders must give typed errors naming the file or tensor, never panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test file

use std::path::Path;

use oftq_aqlm::checkpoint::{Dtype, RawTensor};
use oftq_aqlm::{AqlmCheckpoint, AqlmError, AqlmLayer, AqlmScheme, QuantizationConfig};

const CONFIG: &str = r#"{"quantization_config": {"quant_method": "aqlm", "nbits_per_codebook": 6,
  "num_codebooks": 2, "in_group_size": 4, "out_group_size": 1,
  "linear_weights_not_to_quantize": ["norm.weight"]}}"#;

/// A valid layer "proj": 2x6, ig 4, in 8 (Ig 2), out 3.
fn tensors() -> Vec<(String, RawTensor)> {
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cb: Vec<f32> = (0..2 * 64 * 4).map(|i| (i % 7) as f32 - 3.0).collect();
    vec![
        (
            "proj.codes".into(),
            RawTensor {
                dtype: Dtype::I8,
                shape: vec![3, 2, 2],
                data: [0i8, 1, -32, 31, 5, -1, 7, 8, 9, 10, -11, 12]
                    .iter()
                    .map(|&c| c as u8)
                    .collect(),
            },
        ),
        (
            "proj.codebooks".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![2, 64, 1, 4],
                data: f32s(&cb),
            },
        ),
        (
            "proj.scales".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![3, 1, 1, 1],
                data: f32s(&[1.0, 2.0, 0.5]),
            },
        ),
        (
            "proj.bias".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![3],
                data: f32s(&[1.0; 3]),
            },
        ),
        (
            "norm.weight".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![2],
                data: f32s(&[1.0; 2]),
            },
        ),
    ]
}

fn write(dir: &Path, config: &str, tensors: &[(String, RawTensor)]) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

fn with(f: impl FnOnce(&mut Vec<(String, RawTensor)>)) -> AqlmError {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors();
    f(&mut t);
    write(dir.path(), CONFIG, &t);
    AqlmCheckpoint::load(dir.path()).unwrap_err()
}

fn get<'a>(t: &'a mut [(String, RawTensor)], name: &str) -> &'a mut RawTensor {
    &mut t.iter_mut().find(|(n, _)| n == name).unwrap().1
}

fn assert_tensor_error(e: AqlmError, tensor: &str) {
    match &e {
        AqlmError::Tensor { tensor: t, .. } => assert_eq!(t, tensor, "{e}"),
        _ => panic!("expected a tensor error naming {tensor}, got {e:?}"),
    }
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn valid_file_loads_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), CONFIG, &tensors());
    let c = AqlmCheckpoint::load(dir.path()).unwrap();
    let l = c.layer("proj").unwrap();
    assert_eq!((l.in_features(), l.out_features()), (8, 3));
    assert_eq!(&l.codes()[..4], &[0, 1, 32, 31]); // −32 stored → 32 for 6 bits
    assert_eq!(c.tensors().len(), 1);
    assert_eq!(c.config().linear_weights_not_to_quantize, ["norm.weight"]);
    let err = c.layer("nope").unwrap_err();
    assert!(
        matches!(&err, AqlmError::UnknownLayer { name, available } if name == "nope" && !available.is_empty())
    );
    assert!(err.to_string().contains("AQLM layers: ["), "{err}");
    let out = tempfile::tempdir().unwrap();
    c.save(out.path()).unwrap();
    let back = AqlmCheckpoint::load(out.path()).unwrap();
    assert_eq!(back.layer("proj").unwrap().decode(), l.decode());
    assert_eq!(back.tensors(), c.tensors());
}

#[test]
fn permuted_codes_are_detected_when_unambiguous() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), CONFIG, &tensors());
    let want = AqlmCheckpoint::load(dir.path())
        .unwrap()
        .layer("proj")
        .unwrap()
        .decode();
    let mut t = tensors();
    let codes = get(&mut t, "proj.codes");
    let mut perm = vec![0u8; 12];
    for o in 0..3 {
        for j in 0..2 {
            for m in 0..2 {
                perm[(j * 3 + o) * 2 + m] = codes.data[(o * 2 + j) * 2 + m];
            }
        }
    }
    codes.data = perm;
    codes.shape = vec![2, 3, 2];
    write(dir.path(), CONFIG, &t);
    let got = AqlmCheckpoint::load(dir.path())
        .unwrap()
        .layer("proj")
        .unwrap()
        .decode();
    assert_eq!(got, want);
}

#[test]
fn bad_tensors_are_named() {
    assert_tensor_error(
        with(|t| t.retain(|(n, _)| n != "proj.codebooks")),
        "proj.codebooks",
    );
    assert_tensor_error(
        with(|t| t.retain(|(n, _)| n != "proj.scales")),
        "proj.scales",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codebooks");
            c.shape = vec![2, 64, 2, 2];
        }),
        "proj.codebooks",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codebooks");
            c.dtype = Dtype::I32;
        }),
        "proj.codebooks",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codes");
            c.data[3] = 100; // not a 6-bit code in either packing
        }),
        "proj.codes",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codes");
            c.dtype = Dtype::U8;
        }),
        "proj.codes",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codes");
            c.shape = vec![3, 4, 1];
        }),
        "proj.codes",
    );
    assert_tensor_error(
        with(|t| {
            let c = get(t, "proj.codes");
            c.shape = vec![6, 2, 1];
        }),
        "proj.codes",
    );
    assert_tensor_error(
        with(|t| {
            let s = get(t, "proj.scales");
            s.shape = vec![1, 3, 1, 1];
        }),
        "proj.scales",
    );
    assert_tensor_error(
        with(|t| {
            let b = get(t, "proj.bias");
            b.shape = vec![1, 3];
        }),
        "proj.bias",
    );
    assert_tensor_error(
        with(|t| {
            let b = get(t, "proj.bias");
            b.shape = vec![2];
            b.data.truncate(8);
        }),
        "proj.bias",
    );
}

#[test]
fn config_problems_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        AqlmCheckpoint::load(dir.path()),
        Err(AqlmError::Io { .. })
    ));
    write(dir.path(), "{not json", &tensors());
    assert!(matches!(
        AqlmCheckpoint::load(dir.path()),
        Err(AqlmError::Config { .. })
    ));
    write(
        dir.path(),
        r#"{"quantization_config": {"quant_method": "awq"}}"#,
        &tensors(),
    );
    assert!(matches!(
        AqlmCheckpoint::load(dir.path()),
        Err(AqlmError::Config { .. })
    ));
    // Config says 8 bits but the codebooks hold 64 entries.
    write(
        dir.path(),
        &CONFIG.replace("\"nbits_per_codebook\": 6", "\"nbits_per_codebook\": 8"),
        &tensors(),
    );
    assert_tensor_error(
        AqlmCheckpoint::load(dir.path()).unwrap_err(),
        "proj.codebooks",
    );
    // 16-bit codes cannot be int8.
    let cfg16 = CONFIG.replace("\"nbits_per_codebook\": 6", "\"nbits_per_codebook\": 16");
    let mut t = tensors();
    get(&mut t, "proj.codebooks").shape = vec![1, 65536, 1, 4];
    get(&mut t, "proj.codebooks").data = vec![0; 65536 * 4 * 4];
    write(
        dir.path(),
        &cfg16.replace("\"num_codebooks\": 2", "\"num_codebooks\": 1"),
        &t,
    );
    let e = AqlmCheckpoint::load(dir.path()).unwrap_err();
    assert!(matches!(e, AqlmError::Tensor { .. }), "{e}");
    // Missing weights file.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(
        AqlmCheckpoint::load(dir.path()),
        Err(AqlmError::Io { .. })
    ));
}

#[test]
fn corrupt_containers_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), CONFIG, &tensors());
    let path = dir.path().join("model.safetensors");
    let good = std::fs::read(&path).unwrap();

    // A header length far beyond the file: refused before reading or allocating.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&path, &huge).unwrap();
    let e = AqlmCheckpoint::load(dir.path()).unwrap_err();
    assert!(matches!(e, AqlmError::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("header claims"), "{e}");

    // Too short for the length prefix.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    assert!(matches!(
        AqlmCheckpoint::load(dir.path()),
        Err(AqlmError::Safetensors { .. })
    ));

    // Every truncation and many single-byte corruptions: an error or a valid load, never a panic.
    for len in (0..good.len()).step_by(5) {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(
            AqlmCheckpoint::load(dir.path()).is_err(),
            "truncated to {len} bytes loaded"
        );
    }
    for pos in (0..good.len()).step_by(7) {
        for v in [0u8, 0xff, b'9'] {
            let mut bad = good.clone();
            bad[pos] = v;
            std::fs::write(&path, &bad).unwrap();
            let _ = AqlmCheckpoint::load(dir.path());
        }
    }
}

#[test]
fn new_checkpoint_rejects_mismatched_layers_and_tensors() {
    let scheme = AqlmScheme::new(1, 2, 2, 1).unwrap();
    let mut c = AqlmCheckpoint::new(QuantizationConfig::new(scheme));
    let other = AqlmScheme::new(1, 3, 2, 1).unwrap();
    let l = AqlmLayer::new(2, 1, other, vec![0], vec![0.0; 16], vec![1.0], None).unwrap();
    assert!(matches!(
        c.insert_layer("a", l),
        Err(AqlmError::InvalidScheme(_))
    ));
    let bad = RawTensor {
        dtype: Dtype::F32,
        shape: vec![3],
        data: vec![0; 8],
    };
    assert!(matches!(
        c.insert_tensor("t", bad),
        Err(AqlmError::Shape { .. })
    ));
    let ok = RawTensor {
        dtype: Dtype::F16,
        shape: vec![3],
        data: vec![0; 6],
    };
    c.insert_tensor("a.weight", ok).unwrap();
    let l = AqlmLayer::new(2, 1, scheme, vec![0], vec![0.0; 8], vec![1.0], None).unwrap();
    assert!(matches!(
        c.insert_layer("a", l),
        Err(AqlmError::Shape { .. })
    ));
}
