//! The candle golden harness (fixed interface, `shared/DESIGN.md`):
//! `cargo test --release -p oftq-candle --test golden`.
//!
//! Every case folder of `$OFTQ_GOLDEN_DIR` (else `../shared/golden`) — an HF AQLM layer, PEFT
//! adapter folders and the inputs/outputs torch + PEFT 0.21.2 + aqlm 1.1.7 computed — is loaded
//! through oftq-layer's public loaders, turned into an oftq-candle module, and run forward and
//! backward by candle's own `backward()`. Tolerances are the golden README's (relative Frobenius):
//! `y` 1e-5, `grad_x` and every `grad.<adapter>` 1e-4, COFT-projected weights 1e-6; and the candle
//! results equal oftq-layer's own forward/backward to 1e-6.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oftq_candle::candle_core::{DType, Device, Module, Tensor, Var};
use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::faer::Mat;
use oftq_candle::layer::load_aqlm_oft;
use oftq_candle::{AqlmOftLinear, var_name};

const Y_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-4;
const PROJECTED_TOL: f64 = 1e-6;
/// candle module against oftq-layer's own forward/backward.
const SAME_TOL: f64 = 1e-6;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn golden_dir() -> PathBuf {
    match std::env::var_os("OFTQ_GOLDEN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

/// `‖a − b‖_F / ‖b‖_F` in f64 (NaN or a shape mismatch count as infinite).
fn rel_err(a: &Tensor, b: &Tensor) -> Res<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?;
    if a.dims() != b.dims() {
        return Ok(f64::INFINITY);
    }
    let diff = a.sub(&b)?.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let nb = b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let e = if nb > 0.0 { diff / nb } else { diff };
    Ok(if e.is_nan() { f64::INFINITY } else { e })
}

fn ensure(what: &str, err: f64, tol: f64) -> Res<()> {
    if err <= tol {
        Ok(())
    } else {
        Err(format!("{what}: relative error {err:.3e} > {tol:.0e}").into())
    }
}

fn mat_tensor(m: &Mat<f32>) -> Res<Tensor> {
    let v: Vec<f32> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    Ok(Tensor::from_vec(v, (m.nrows(), m.ncols()), &Device::Cpu)?)
}

fn tensor_mat(t: &Tensor) -> Res<Mat<f32>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

fn check_case(dir: &Path) -> Res<()> {
    let case_path = dir.join("case.json");
    let case: oftq_candle::layer::serde_json::Value =
        oftq_candle::layer::serde_json::from_str(&std::fs::read_to_string(&case_path)?)?;
    let field = |k: &str| {
        case.get(k)
            .ok_or_else(|| format!("{}: no field {k:?}", case_path.display()))
    };
    let module = field("module")?
        .as_str()
        .ok_or("module is not a string")?
        .to_string();
    let names: Vec<String> = field("active_adapters")?
        .as_array()
        .ok_or("active_adapters is not a list")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or("adapter name is not a string")
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(format!("{}: active_adapters is empty", case_path.display()).into());
    }
    let dirs = field("adapter_dirs")?;
    let mut adapters = Vec::new();
    for n in &names {
        let rel = dirs
            .get(n)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{}: no adapter_dirs entry for {n:?}", case_path.display()))?;
        adapters.push((n.clone(), dir.join(rel)));
    }

    // The public loaders, then the candle module built from the oftq-layer object.
    let layer = load_aqlm_oft(&dir.join("model"), &module, &adapters)?;
    let varmap = VarMap::new();
    let m = AqlmOftLinear::from_layer(&layer, &module, &varmap)?;
    let io: HashMap<String, Tensor> =
        oftq_candle::candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)?;
    let get = |k: &str| {
        io.get(k)
            .cloned()
            .ok_or_else(|| format!("{}: io.safetensors has no tensor {k:?}", dir.display()))
    };

    // candle forward and backward (loss = Σ y ⊙ grad_y).
    let x = Var::from_tensor(&get("x")?.to_dtype(DType::F32)?)?;
    let gy = get("grad_y")?.to_dtype(DType::F32)?;
    let y = m.forward(x.as_tensor())?;
    let grads = y.mul(&gy)?.sum_all()?.backward()?;
    let what = |k: &str| format!("{}: {k}", dir.display());
    ensure(&what("y"), rel_err(&y, &get("y")?)?, Y_TOL)?;
    let gx = grads.get(x.as_tensor()).ok_or("no gradient for x")?;
    ensure(&what("grad_x"), rel_err(gx, &get("grad_x")?)?, GRAD_TOL)?;
    let var_of = |n: &str| -> Res<Tensor> {
        let vars = varmap.data().lock().map_err(|_| "poisoned VarMap")?;
        Ok(vars
            .get(&var_name(&module, n))
            .ok_or_else(|| format!("no Var for adapter {n}"))?
            .as_tensor()
            .clone())
    };
    for n in &names {
        let g = grads
            .get(&var_of(n)?)
            .ok_or("no gradient for an adapter")?
            .clone();
        ensure(
            &what(&format!("grad.{n}")),
            rel_err(&g, &get(&format!("grad.{n}"))?)?,
            GRAD_TOL,
        )?;
    }

    // The same computation in oftq-layer, on the flattened tokens.
    let (in_f, out_f) = (
        *x.dims().last().ok_or("x is a scalar")?,
        gy.dims()[gy.rank() - 1],
    );
    let x2 = tensor_mat(&x.as_tensor().reshape(((), in_f))?)?;
    let (y_ref, cache) = layer.forward_cached(x2.as_ref(), None)?;
    let g_ref = layer.backward(&cache, tensor_mat(&gy.reshape(((), out_f))?)?.as_ref())?;
    ensure(
        &what("y vs oftq-layer"),
        rel_err(&y, &mat_tensor(&y_ref)?)?,
        SAME_TOL,
    )?;
    ensure(
        &what("grad_x vs oftq-layer"),
        rel_err(gx, &mat_tensor(&g_ref.input)?)?,
        SAME_TOL,
    )?;
    for (n, g) in &g_ref.adapters {
        let ours = grads
            .get(&var_of(n)?)
            .ok_or("no gradient for an adapter")?
            .clone();
        ensure(
            &what(&format!("grad.{n} vs oftq-layer")),
            rel_err(&ours, &mat_tensor(g)?)?,
            SAME_TOL,
        )?;
    }

    // COFT: the parameters after the projection PEFT's forward writes back.
    for n in &names {
        if let Some(p) = io.get(&format!("projected.{n}")) {
            let a = m.adapter(n).ok_or("adapter missing")?;
            a.project_coft()?;
            ensure(
                &what(&format!("projected.{n}")),
                rel_err(a.var().as_tensor(), p)?,
                PROJECTED_TOL,
            )?;
        }
    }
    Ok(())
}

#[test]
fn golden() {
    let dir = golden_dir();
    let mut cases: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("case.json").is_file())
            .collect(),
        Err(e) => panic!("cannot read the golden folder {}: {e}", dir.display()),
    };
    cases.sort();
    if cases.is_empty() && !dir.join("rotations.safetensors").is_file() {
        panic!(
            "{} holds neither a layer case folder nor rotations.safetensors",
            dir.display()
        );
    }
    for case in &cases {
        if let Err(e) = check_case(case) {
            panic!("candle golden check failed in {}: {e}", case.display());
        }
    }
    // Straight to stdout, so the line shows although the harness captures `println!`.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "candle golden: {} layer cases checked", cases.len());
    let _ = out.flush();
}
