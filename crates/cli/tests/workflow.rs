//! End-to-end: the demo at a reduced size (files reload and reproduce the outputs), `quantize`
//! then `train` then `forward` on a checkpoint made here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use faer::Mat;
use oftq_aqlm::AqlmCheckpoint;
use oftq_layer::dispatch::Module;
use oftq_layer::train::{Activation, Sequential};
use oftq_layer::{OftAdapter, OftLinear, load_adapter};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn oftq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oftq"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path, name: &str) -> Mat<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Mat::from_fn(r, c, |i, j| v[i * c + j])
}

fn write(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.to_string(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn demo_at_reduced_size_trains_and_writes_loadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = oftq(&[
        "--quiet",
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--dims",
        "64,128,32",
        "--steps",
        "150",
        "--batch",
        "128",
        "--rounds",
        "3",
        "--block-size",
        "16",
        "--seed",
        "3",
    ]);
    ok(&o);
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "report.md",
        "loss.png",
        "eval.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("loss after") && report.contains("floor"));
    // Reload the model and the adapter from disk and reproduce the outputs.
    let ckpt = AqlmCheckpoint::load(&out.join("model")).unwrap();
    let adapter = load_adapter(&out.join("adapter")).unwrap();
    let names: Vec<String> = ckpt.layers().keys().cloned().collect();
    assert_eq!(names.len(), 2);
    let mut seq = Sequential::new();
    for (i, name) in names.iter().enumerate() {
        let base = ckpt.layer(name).unwrap().clone();
        let mut layer = OftLinear::new(base);
        let w = adapter.weights[name].clone();
        let a = OftAdapter::with_weight(&adapter.config, layer.base().in_features(), w).unwrap();
        layer.insert_adapter("default", a).unwrap();
        let act = if i + 1 == names.len() {
            Activation::Identity
        } else {
            Activation::Gelu
        };
        seq = seq.push(name, Module::OftAqlm(layer), act);
    }
    let x = read(&out.join("eval.safetensors"), "x");
    let y = read(&out.join("eval.safetensors"), "y");
    let y2 = seq.forward(x.as_ref()).unwrap();
    assert!(
        (&y2 - &y).norm_max() <= 1e-6 * (1.0 + y.norm_max()),
        "reloaded model differs"
    );
    // A failing run (impossible target: 1 step) exits non-zero with one line.
    let o = oftq(&[
        "--quiet",
        "demo",
        "--out",
        tmp.path().join("d2").to_str().unwrap(),
        "--dims",
        "32,16",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--block-size",
        "8",
    ]);
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
}

#[test]
fn quantize_train_forward_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, i) = (32usize, 64usize);
    let w: Vec<f32> = (0..o * i)
        .map(|k| ((k * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.2)
        .collect();
    let bias: Vec<f32> = (0..o).map(|k| k as f32 / 100.0).collect();
    let dense = tmp.path().join("dense.safetensors");
    write(
        &dense,
        &[
            ("enc.proj.weight", vec![o, i], w),
            ("enc.proj.bias", vec![o], bias),
            ("norm.weight", vec![i], vec![1.0; i]),
        ],
    );
    let model = tmp.path().join("model");
    ok(&oftq(&[
        "--quiet",
        "quantize",
        "--input",
        dense.to_str().unwrap(),
        "--output",
        model.to_str().unwrap(),
        "--scheme",
        "2x8",
        "--rounds",
        "3",
    ]));
    let ckpt = AqlmCheckpoint::load(&model).unwrap();
    let layer = ckpt.layer("enc.proj").unwrap();
    assert!(layer.bias().is_some());
    assert!(ckpt.tensors().contains_key("norm.weight"));

    // Targets from a planted adapter; train must fit them.
    let cfg = oftq_layer::OftConfig {
        oft_block_size: 16,
        init_weights: false,
        ..oftq_layer::OftConfig::default()
    };
    let mut teacher = OftLinear::new(layer.clone());
    let mut a = OftAdapter::new(&cfg, i, 5).unwrap();
    a.set_weight(a.weight().to_owned() * faer::Scale(0.3))
        .unwrap();
    teacher.insert_adapter("default", a).unwrap();
    let x = Mat::<f32>::from_fn(96, i, |t, f| ((t * i + f) as f32 * 0.37).sin());
    let y = teacher.forward(x.as_ref()).unwrap();
    let flat = |m: &Mat<f32>| {
        (0..m.nrows())
            .flat_map(|r| (0..m.ncols()).map(move |c| (r, c)))
            .map(|(r, c)| m[(r, c)])
            .collect::<Vec<_>>()
    };
    let data = tmp.path().join("data.safetensors");
    write(
        &data,
        &[("x", vec![96, i], flat(&x)), ("y", vec![96, o], flat(&y))],
    );
    let adapter = tmp.path().join("adapter");
    let t = oftq(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--target-modules",
        "proj",
        "--data",
        data.to_str().unwrap(),
        "--out",
        adapter.to_str().unwrap(),
        "--block-size",
        "16",
        "--steps",
        "120",
        "--lr",
        "0.01",
    ]);
    ok(&t);
    let text = String::from_utf8_lossy(&t.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("enc.proj: loss"))
        .unwrap();
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums[1] < 0.1 * nums[0], "{line}");

    // The trained adapter runs through `oftq forward`.
    let io = tmp.path().join("io.safetensors");
    write(&io, &[("x", vec![96, i], flat(&x))]);
    let yout = tmp.path().join("y.safetensors");
    ok(&oftq(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--module",
        "enc.proj",
        "--adapter",
        adapter.to_str().unwrap(),
        "--input",
        io.to_str().unwrap(),
        "--output",
        yout.to_str().unwrap(),
    ]));
    let y2 = read(&yout, "y");
    let rel = (&y2 - &y).norm_l2() / y.norm_l2();
    assert!(
        rel < 0.2,
        "trained adapter output far from the target: {rel}"
    );
}
