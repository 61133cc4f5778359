//! End-to-end tests of the `oftq` binary on the golden cases (`$OFTQ_GOLDEN_DIR`, default
//! `<workspace>/../shared/golden`) and on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test file

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    match std::env::var_os("OFTQ_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

/// A golden layer case: its folder and parsed `case.json`.
struct Case {
    dir: PathBuf,
    json: Value,
}

impl Case {
    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }
    fn module(&self) -> &str {
        self.json["module"].as_str().unwrap()
    }
    fn model(&self) -> PathBuf {
        self.dir.join("model")
    }
    fn io(&self) -> PathBuf {
        self.dir.join("io.safetensors")
    }
    /// `(name, folder)` of the active adapters, in application order.
    fn adapters(&self) -> Vec<(String, PathBuf)> {
        self.json["active_adapters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let n = n.as_str().unwrap();
                let rel = self.json["adapter_dirs"][n].as_str().unwrap();
                (n.to_string(), self.dir.join(rel))
            })
            .collect()
    }
}

fn cases() -> Vec<Case> {
    let root = golden_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("golden folder {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no golden case folders in {}",
        root.display()
    );
    dirs.into_iter()
        .map(|dir| {
            let json =
                serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap())
                    .unwrap();
            Case { dir, json }
        })
        .collect()
}

fn oftq(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oftq"))
        .args(args)
        .output()
        .unwrap()
}

fn forward(model: &Path, module: &str, adapters: &[String], input: &Path, output: &Path) -> Output {
    let args = forward_args(model, module, adapters, input, output);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    oftq(&refs)
}

/// A tensor as f64 with its shape and dtype.
#[derive(Debug, Clone)]
struct T {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn read_all(path: &Path) -> (HashMap<String, T>, Option<HashMap<String, String>>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let b = v.data();
        let data: Vec<f64> = match v.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f64::from(half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()))
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => continue,
        };
        out.insert(
            name,
            T {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data,
            },
        );
    }
    (out, meta.metadata().clone())
}

fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
}

fn rel_err(got: &T, want: &T, what: &str) -> f64 {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.data.iter().zip(&want.data) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn forward_reproduces_every_golden_case() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    for case in &cases {
        let name = case.name();
        let adapters: Vec<String> = case
            .adapters()
            .iter()
            .map(|(n, d)| format!("{n}={}", d.display()))
            .collect();
        let out_path = tmp.path().join(format!("{name}.safetensors"));
        let out = forward(
            &case.model(),
            case.module(),
            &adapters,
            &case.io(),
            &out_path,
        );
        assert_ok(&out, &name);
        let (want, _) = read_all(&case.io());
        let (got, meta) = read_all(&out_path);
        assert_eq!(
            meta.unwrap().get("format").map(String::as_str),
            Some("pt"),
            "{name}: metadata"
        );
        let mut expected = vec![("y".to_string(), 1e-5), ("grad_x".to_string(), 1e-4)];
        for (a, _) in case.adapters() {
            expected.push((format!("grad.{a}"), 1e-4));
        }
        assert_eq!(
            got.len(),
            expected.len(),
            "{name}: tensors written: {:?}",
            got.keys()
        );
        for (key, tol) in expected {
            let g = &got[&key];
            assert_eq!(g.dtype, Dtype::F32, "{name}: {key} dtype");
            let e = rel_err(g, &want[&key], &format!("{name}: {key}"));
            assert!(e <= tol, "{name}: {key} relative error {e:.3e} > {tol:e}");
            println!("{name}: {key} relative Frobenius error {e:.2e}");
        }
    }
    println!("forward: {} golden cases reproduced", cases.len());
}

#[test]
fn forward_without_adapters_is_the_plain_quantized_layer() {
    let tmp = tempfile::tempdir().unwrap();
    for case in &cases() {
        let name = case.name();
        let (io, _) = read_all(&case.io());
        let x = &io["x"];
        let w = &io["weight_dequant"];
        let (out_f, in_f) = (w.shape[0], w.shape[1]);
        let (model, _) = read_all(&case.model().join("model.safetensors"));
        let bias = model.get(&format!("{}.bias", case.module()));
        // Only x in the input: only y comes out.
        let input = tmp.path().join(format!("{name}.x.safetensors"));
        write(
            &input,
            &[("x", Dtype::F32, x.shape.clone(), f32_bytes(&x.data))],
        );
        let out_path = tmp.path().join(format!("{name}.y.safetensors"));
        assert_ok(
            &forward(&case.model(), case.module(), &[], &input, &out_path),
            &name,
        );
        let (got, _) = read_all(&out_path);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["y"], "{name}");
        let tokens = x.data.len() / in_f;
        let mut y = Vec::with_capacity(tokens * out_f);
        for t in 0..tokens {
            for o in 0..out_f {
                let mut s = bias.map_or(0.0, |b| b.data[o]);
                for k in 0..in_f {
                    s += x.data[t * in_f + k] * w.data[o * in_f + k];
                }
                y.push(s);
            }
        }
        let mut shape = x.shape.clone();
        *shape.last_mut().unwrap() = out_f;
        let want = T {
            dtype: Dtype::F64,
            shape,
            data: y,
        };
        let e = rel_err(&got["y"], &want, &name);
        assert!(e <= 1e-5, "{name}: plain layer relative error {e:.3e}");
    }
}

#[test]
fn forward_accepts_other_float_dtypes_and_a_default_adapter_name() {
    // x as F64 and F16 (upcast exactly): same y as the plain F32 run to f32 rounding.
    let tmp = tempfile::tempdir().unwrap();
    let case = cases()
        .into_iter()
        .find(|c| c.adapters().len() == 1)
        .unwrap();
    let (io, _) = read_all(&case.io());
    let x = &io["x"];
    let xh: Vec<f64> = x
        .data
        .iter()
        .map(|&v| f64::from(half::f16::from_f64(v).to_f32()))
        .collect();
    let dir = &case.adapters()[0].1;
    let run = |name: &str, dtype: Dtype, bytes: Vec<u8>| {
        let input = tmp.path().join(format!("{name}.in.safetensors"));
        write(&input, &[("x", dtype, x.shape.clone(), bytes)]);
        let out = tmp.path().join(format!("{name}.out.safetensors"));
        let adapter = vec![dir.display().to_string()]; // no NAME=: "default"
        assert_ok(
            &forward(&case.model(), case.module(), &adapter, &input, &out),
            name,
        );
        read_all(&out).0.remove("y").unwrap()
    };
    let y32 = run("f32", Dtype::F32, f32_bytes(&xh));
    let y16 = run(
        "f16",
        Dtype::F16,
        xh.iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
    );
    let y64 = run(
        "f64",
        Dtype::F64,
        xh.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    assert_eq!(y16.data, y32.data);
    assert_eq!(y64.data, y32.data);
}

fn inspect(path: &Path) -> String {
    let out = oftq(&["inspect".as_ref(), path.as_os_str()]);
    assert_ok(&out, &path.display().to_string());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn inspect_describes_each_kind() {
    for case in &cases() {
        let a = &case.json["aqlm"];
        let model = inspect(&case.model());
        let scheme = format!("scheme: {}x{}", a["m"], a["nbits"]);
        assert!(model.contains(&scheme), "{model}");
        assert!(model.contains("bits/parameter"), "{model}");
        let layer = format!("{}: [out {}, in {}]", case.module(), a["out_f"], a["in_f"]);
        assert!(model.contains(&layer), "{model}");

        for (_, dir) in case.adapters() {
            let text = inspect(&dir);
            assert!(text.starts_with("PEFT OFT adapter"), "{text}");
            assert!(text.contains("oft_R.weight ["), "{text}");
            assert!(text.contains("peft_version: "), "{text}");
            assert!(text.contains("trainable parameters: "), "{text}");
        }
        if case.adapters().len() > 1 {
            // The parent folder of several named adapters describes each of them.
            let parent = case.adapters()[0].1.parent().unwrap().to_path_buf();
            let text = inspect(&parent);
            assert_eq!(
                text.matches("PEFT OFT adapter").count(),
                case.adapters().len(),
                "{text}"
            );
        }

        let io = inspect(&case.io());
        assert!(io.starts_with("safetensors file"), "{io}");
        let x_shape: Vec<u64> = case.json["x_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(io.contains(&format!("  x: F32 {x_shape:?}")), "{io}");
    }
}

/// Runs `oftq` expecting failure: one `error: …` line that mentions `needle`.
fn assert_one_line_error(args: &[&std::ffi::OsStr], needle: &str) -> String {
    let out = oftq(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
    err
}

fn forward_args(
    model: &Path,
    module: &str,
    adapters: &[String],
    input: &Path,
    output: &Path,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "forward".into(),
        "--model".into(),
        model.into(),
        "--module".into(),
        module.into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
    ];
    for a in adapters {
        args.push("--adapter".into());
        args.push(a.into());
    }
    args
}

fn fails(args: Vec<std::ffi::OsString>, needle: &str) -> String {
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    assert_one_line_error(&refs, needle)
}

#[test]
fn bad_input_gives_one_line_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let case = cases().into_iter().next().unwrap();
    let out = tmp.path().join("out.safetensors");
    let m = case.module().to_string();

    // Missing input file.
    let missing = tmp.path().join("missing.safetensors");
    fails(
        forward_args(&case.model(), &m, &[], &missing, &out),
        "missing.safetensors",
    );
    // Missing model folder.
    let nomodel = tmp.path().join("no-model");
    fails(
        forward_args(&nomodel, &m, &[], &case.io(), &out),
        "no-model",
    );
    // Unknown module: names the weights file and the module.
    let e = fails(
        forward_args(&case.model(), "no.such.module", &[], &case.io(), &out),
        "model.safetensors",
    );
    assert!(e.contains("no.such.module"), "{e}");
    // Malformed safetensors input.
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    fails(
        forward_args(&case.model(), &m, &[], &garbage, &out),
        "garbage.safetensors",
    );
    // Truncated safetensors input.
    let bytes = std::fs::read(case.io()).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        forward_args(&case.model(), &m, &[], &cut, &out),
        "cut.safetensors",
    );
    // Input without x.
    let nox = tmp.path().join("nox.safetensors");
    write(&nox, &[("z", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
    fails(
        forward_args(&case.model(), &m, &[], &nox, &out),
        "nox.safetensors",
    );
    // x with the wrong number of features.
    let in_f = case.json["aqlm"]["in_f"].as_u64().unwrap() as usize;
    let wrong = tmp.path().join("wrong-x.safetensors");
    write(
        &wrong,
        &[(
            "x",
            Dtype::F32,
            vec![2, in_f + 1],
            f32_bytes(&vec![0.5; 2 * (in_f + 1)]),
        )],
    );
    fails(
        forward_args(&case.model(), &m, &[], &wrong, &out),
        "wrong-x.safetensors",
    );
    // grad_y with the wrong shape.
    let out_f = case.json["aqlm"]["out_f"].as_u64().unwrap() as usize;
    let badg = tmp.path().join("bad-grad.safetensors");
    write(
        &badg,
        &[
            (
                "x",
                Dtype::F32,
                vec![2, in_f],
                f32_bytes(&vec![0.5; 2 * in_f]),
            ),
            (
                "grad_y",
                Dtype::F32,
                vec![3, out_f],
                f32_bytes(&vec![1.0; 3 * out_f]),
            ),
        ],
    );
    fails(
        forward_args(&case.model(), &m, &[], &badg, &out),
        "bad-grad.safetensors",
    );
    // x of an integer dtype.
    let ints = tmp.path().join("int-x.safetensors");
    write(
        &ints,
        &[("x", Dtype::I32, vec![1, in_f], vec![0; 4 * in_f])],
    );
    fails(
        forward_args(&case.model(), &m, &[], &ints, &out),
        "int-x.safetensors",
    );
    assert!(!out.exists(), "no output may be written on failure");
}

#[test]
fn adapter_for_another_in_features_is_refused_naming_its_file() {
    // An adapter made for a layer twice as wide: the case's own adapter config, with twice the blocks.
    let tmp = tempfile::tempdir().unwrap();
    let case = cases()
        .into_iter()
        .find(|c| {
            c.adapters().iter().any(|(_, d)| {
                let cfg: Value = serde_json::from_str(
                    &std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
                )
                .unwrap();
                cfg["block_share"] == Value::Bool(false) && cfg["r"] == 0
            })
        })
        .expect("a golden case with an unshared adapter given by block size");
    let (_, src) = case
        .adapters()
        .into_iter()
        .find(|(_, d)| {
            let cfg: Value = serde_json::from_str(
                &std::fs::read_to_string(d.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            cfg["block_share"] == Value::Bool(false) && cfg["r"] == 0
        })
        .unwrap();
    let wide = tmp.path().join("wide-adapter");
    std::fs::create_dir(&wide).unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        wide.join("adapter_config.json"),
    )
    .unwrap();
    let (weights, _) = read_all(&src.join("adapter_model.safetensors"));
    let key = format!("base_model.model.{}.oft_R.weight", case.module());
    let w = &weights[&key];
    let mut data = w.data.clone();
    data.extend_from_slice(&w.data);
    write(
        &wide.join("adapter_model.safetensors"),
        &[(
            &key,
            Dtype::F32,
            vec![w.shape[0] * 2, w.shape[1]],
            f32_bytes(&data),
        )],
    );
    let out = tmp.path().join("out.safetensors");
    let adapter = vec![format!("wide={}", wide.display())];
    let e = fails(
        forward_args(&case.model(), case.module(), &adapter, &case.io(), &out),
        "wide-adapter",
    );
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // An adapter folder that does not exist.
    let none = vec![tmp.path().join("no-adapter").display().to_string()];
    fails(
        forward_args(&case.model(), case.module(), &none, &case.io(), &out),
        "no-adapter",
    );
    // The same name twice.
    let twice = vec![
        format!("a={}", src.display()),
        format!("a={}", src.display()),
    ];
    fails(
        forward_args(&case.model(), case.module(), &twice, &case.io(), &out),
        "\"a\"",
    );
}

#[test]
fn inspect_errors_and_unwired_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    assert_one_line_error(&["inspect".as_ref(), empty.as_os_str()], "empty-dir");
    let missing = tmp.path().join("nothing-here");
    assert_one_line_error(&["inspect".as_ref(), missing.as_os_str()], "nothing-here");
    let garbage = tmp.path().join("garbage.bin");
    std::fs::write(&garbage, b"12345678").unwrap();
    assert_one_line_error(&["inspect".as_ref(), garbage.as_os_str()], "garbage.bin");
    // A model folder whose weights are not safetensors.
    let model = tmp.path().join("bad-model");
    std::fs::create_dir(&model).unwrap();
    let case = cases().into_iter().next().unwrap();
    std::fs::copy(case.model().join("config.json"), model.join("config.json")).unwrap();
    std::fs::write(model.join("model.safetensors"), b"junk").unwrap();
    assert_one_line_error(&["inspect".as_ref(), model.as_os_str()], "bad-model");

    // The other commands on bad input: one line naming the problem.
    let missing = tmp.path().join("missing-weights.safetensors");
    let outdir = tmp.path().join("q");
    assert_one_line_error(
        &[
            "quantize".as_ref(),
            "--input".as_ref(),
            missing.as_os_str(),
            "--output".as_ref(),
            outdir.as_os_str(),
            "--scheme".as_ref(),
            "2x8".as_ref(),
        ],
        "missing-weights.safetensors",
    );
    assert_one_line_error(
        &[
            "quantize".as_ref(),
            "--input".as_ref(),
            garbage.as_os_str(),
            "--output".as_ref(),
            outdir.as_os_str(),
            "--scheme".as_ref(),
            "2by8".as_ref(),
        ],
        "2by8",
    );
    let nomodel = tmp.path().join("no-model-here");
    assert_one_line_error(
        &[
            "train".as_ref(),
            "--model".as_ref(),
            nomodel.as_os_str(),
            "--target-modules".as_ref(),
            "proj".as_ref(),
            "--data".as_ref(),
            garbage.as_os_str(),
            "--out".as_ref(),
            outdir.as_os_str(),
        ],
        "no-model-here",
    );
    assert_one_line_error(
        &["demo".as_ref(), "--dims".as_ref(), "64".as_ref()],
        "--dims",
    );
    // A usage error is one line too.
    assert_one_line_error(&["forward".as_ref()], "--model");
}

#[test]
fn quiet_suppresses_the_summary_and_unwritable_output_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let case = cases().into_iter().next().unwrap();
    let out = tmp.path().join("y.safetensors");
    let mut args = forward_args(&case.model(), case.module(), &[], &case.io(), &out);
    let loud = oftq(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_ok(&loud, "loud");
    assert!(String::from_utf8_lossy(&loud.stderr).starts_with("wrote y "));
    args.insert(0, "--quiet".into());
    let quiet = oftq(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_ok(&quiet, "quiet");
    assert!(quiet.stderr.is_empty() && quiet.stdout.is_empty());
    let nodir = tmp.path().join("no-such-dir/y.safetensors");
    fails(
        forward_args(&case.model(), case.module(), &[], &case.io(), &nodir),
        "no-such-dir",
    );
}
