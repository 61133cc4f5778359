//! Golden cases produced by aqlm 1.1.7: every case's decoded weight must match
//! `weight_dequant` bit for bit, and a load → save round trip must reproduce the tensors.
//!
//! Reads `$OFTQ_GOLDEN_DIR`, else `<workspace>/../shared/golden`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test file
use std::path::{Path, PathBuf};

use oftq_aqlm::{AqlmCheckpoint, Kernel};
use safetensors::{Dtype, SafeTensors};

fn golden_dir() -> PathBuf {
    match std::env::var_os("OFTQ_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

fn case_dirs() -> Vec<PathBuf> {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read golden folder {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    cases
}

fn f32_tensor(st: &SafeTensors<'_>, name: &str, file: &Path) -> (Vec<usize>, Vec<f32>) {
    let v = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: {name}: {e}", file.display()));
    assert_eq!(
        v.dtype(),
        Dtype::F32,
        "{}: {name} must be F32",
        file.display()
    );
    let data = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v.shape().to_vec(), data)
}

#[test]
fn golden_cases_decode_bit_exactly_and_round_trip() {
    let cases = case_dirs();
    let mut io_cases = 0;
    for case in &cases {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap())
                .unwrap();
        let module = meta["module"].as_str().expect("case.json: module");
        let ckpt = AqlmCheckpoint::load(&case.join("model"))
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let layer = ckpt.layer(module).unwrap();
        let a = &meta["aqlm"];
        let s = layer.scheme();
        assert_eq!(
            (
                layer.in_features() as u64,
                layer.out_features() as u64,
                s.in_group_size as u64,
                s.out_group_size as u64,
                s.num_codebooks as u64,
                u64::from(s.nbits)
            ),
            (
                a["in_f"].as_u64().unwrap(),
                a["out_f"].as_u64().unwrap(),
                a["ig"].as_u64().unwrap(),
                a["og"].as_u64().unwrap(),
                a["m"].as_u64().unwrap(),
                a["nbits"].as_u64().unwrap()
            ),
            "{}: layer shape vs case.json",
            case.display()
        );

        // Decoded weight: bit for bit.
        let io_path = case.join("io.safetensors");
        let io_bytes = std::fs::read(&io_path).unwrap();
        let io = SafeTensors::deserialize(&io_bytes).unwrap();
        let (shape, want) = f32_tensor(&io, "weight_dequant", &io_path);
        assert_eq!(shape, [layer.out_features(), layer.in_features()]);
        let w = layer.decode();
        let mut mismatches = 0;
        for r in 0..shape[0] {
            for c in 0..shape[1] {
                if w[(r, c)].to_bits() != want[r * shape[1] + c].to_bits() {
                    mismatches += 1;
                }
            }
        }
        assert_eq!(
            mismatches,
            0,
            "{}: decoded weight differs in {mismatches} entries",
            case.display()
        );
        io_cases += 1;

        // Every kernel on the case's input agrees with decode-then-matmul.
        let (xs, x) = f32_tensor(&io, "x", &io_path);
        let n_in = *xs.last().unwrap();
        let tokens = x.len() / n_in;
        let x = faer::Mat::from_fn(tokens, n_in, |t, k| x[t * n_in + k]);
        let reference = layer.forward_with(x.as_ref(), Kernel::Reference).unwrap();
        for kernel in Kernel::ALL {
            let y = layer.forward_with(x.as_ref(), kernel).unwrap();
            let e = (&y - &reference).norm_l2() / reference.norm_l2();
            assert!(
                e < 1e-6,
                "{}: {kernel:?} forward rel err {e}",
                case.display()
            );
        }

        // Load → save → load: same tensors byte for byte (dtypes and code packing kept).
        let tmp = tempfile::tempdir().unwrap();
        ckpt.save(tmp.path()).unwrap();
        let orig_bytes = std::fs::read(case.join("model/model.safetensors")).unwrap();
        let orig = SafeTensors::deserialize(&orig_bytes).unwrap();
        let new_bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
        let new = SafeTensors::deserialize(&new_bytes).unwrap();
        let mut names: Vec<_> = orig.names();
        names.sort();
        let mut new_names: Vec<_> = new.names();
        new_names.sort();
        assert_eq!(names, new_names, "{}", case.display());
        for n in names {
            let (a, b) = (orig.tensor(n).unwrap(), new.tensor(n).unwrap());
            assert_eq!(a.dtype(), b.dtype(), "{}: {n}", case.display());
            assert_eq!(a.shape(), b.shape(), "{}: {n}", case.display());
            assert_eq!(a.data(), b.data(), "{}: {n}", case.display());
        }
        let again = AqlmCheckpoint::load(tmp.path()).unwrap();
        assert_eq!(again.config(), ckpt.config());
        assert_eq!(again.layer(module).unwrap().decode(), w);
    }
    assert!(
        io_cases > 0,
        "no golden case folders found in {}",
        golden_dir().display()
    );
    println!("golden decode: {io_cases} AQLM cases bit-exact");
}
