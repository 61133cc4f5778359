//! `rotations.safetensors`: the orthogonal parameterizations alone, in f64.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use faer::Mat;
use oftq_ortho::{
    BlockRotation, CayleyConvention, CoftRadius, Parameterization, RotationSpec, n_elements,
    project_coft, skew_from_packed,
};
use serde::Deserialize;

use super::{ROTATION_TOL, ensure};
use crate::error::GoldenError;
use crate::tensors::{Tensor, TensorFile, max_abs_diff};

#[derive(Debug, Deserialize)]
struct IndexEntry {
    key: String,
    block_size: usize,
    r: usize,
}

/// What one tensor name asks to check.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Weight,
    Skew,
    Rotation(Parameterization),
    Coft(f64),
    Module(Parameterization, String),
}

fn parse_mode(s: &str) -> Option<Parameterization> {
    if s == "exact" {
        return Some(Parameterization::Exact(CayleyConvention::Peft));
    }
    let t: usize = s.strip_prefix("neumann")?.parse().ok()?;
    Some(Parameterization::peft(true, t))
}

fn parse_item(suffix: &str) -> Option<Item> {
    match suffix {
        "weight" => return Some(Item::Weight),
        "skew" => return Some(Item::Skew),
        _ => {}
    }
    if let Some(e) = suffix.strip_prefix("coft_eps") {
        return e
            .parse()
            .ok()
            .filter(|e: &f64| e.is_finite())
            .map(Item::Coft);
    }
    if let Some(p) = parse_mode(suffix) {
        return Some(Item::Rotation(p));
    }
    let (mode, field) = suffix.split_once('.')?;
    let p = parse_mode(mode)?;
    ["x", "y", "grad_y", "grad_x", "grad_weight"]
        .contains(&field)
        .then(|| Item::Module(p, field.to_string()))
}

/// Checks every key of a `rotations.safetensors` file; returns the number of keys checked.
///
/// Every tensor must belong to a key of the metadata `index` and have a recognised suffix
/// (`weight`, `skew`, `exact`, `neumann<k>`, `coft_eps<e>`, `<mode>.{x,y,grad_y,grad_x,grad_weight}`);
/// anything else is an error, so a new kind of entry can never be skipped silently.
///
/// # Errors
/// The first unreadable or mismatching tensor.
pub fn check_rotations(path: &Path) -> Result<usize, GoldenError> {
    let file = TensorFile::read(path)?;
    let malformed = |why: String| GoldenError::Malformed {
        path: path.into(),
        why,
    };
    let index_json = file
        .metadata
        .get("index")
        .ok_or_else(|| malformed("metadata has no `index`".into()))?;
    let index: Vec<IndexEntry> =
        serde_json::from_str(index_json).map_err(|e| malformed(format!("metadata index: {e}")))?;
    if index.is_empty() {
        return Err(malformed("metadata index lists no keys".into()));
    }
    // Assign every tensor to the longest key that prefixes it.
    let mut items: BTreeMap<&str, Vec<(Item, &Tensor, &str)>> = BTreeMap::new();
    for (name, tensor) in &file.tensors {
        let owner = index
            .iter()
            .filter_map(|e| {
                name.strip_prefix(e.key.as_str())?
                    .strip_prefix('.')
                    .map(|s| (e, s))
            })
            .max_by_key(|(e, _)| e.key.len());
        let (entry, suffix) =
            owner.ok_or_else(|| malformed(format!("tensor {name} belongs to no index key")))?;
        let item = parse_item(suffix)
            .ok_or_else(|| malformed(format!("tensor {name}: unknown entry `{suffix}`")))?;
        items
            .entry(entry.key.as_str())
            .or_default()
            .push((item, tensor, name.as_str()));
    }
    let mut seen = BTreeSet::new();
    for entry in &index {
        if !seen.insert(entry.key.as_str()) {
            return Err(malformed(format!("index lists key {} twice", entry.key)));
        }
        let list = items.remove(entry.key.as_str()).unwrap_or_default();
        check_key(path, entry, &list)?;
    }
    Ok(index.len())
}

fn check_key(
    path: &Path,
    e: &IndexEntry,
    list: &[(Item, &Tensor, &str)],
) -> Result<(), GoldenError> {
    let malformed = |why: String| GoldenError::Malformed {
        path: path.into(),
        why,
    };
    let ortho = |what: String| move |source| GoldenError::Ortho { what, source };
    let (b, r) = (e.block_size, e.r);
    let weight = list
        .iter()
        .find(|(i, ..)| *i == Item::Weight)
        .map(|(_, t, _)| *t)
        .ok_or_else(|| malformed(format!("key {}: missing {}.weight", e.key, e.key)))?;
    if weight.shape != [r, n_elements(b)] {
        return Err(malformed(format!(
            "{}.weight has shape {:?}, expected [{r}, {}]",
            e.key,
            weight.shape,
            n_elements(b)
        )));
    }
    let w = weight.to_mat();
    let spec_for = |p| {
        RotationSpec::builder(r * b, b)
            .parameterization(p)
            .build()
            .map_err(ortho(format!("key {}", e.key)))
    };
    let mut modules: BTreeMap<String, (Parameterization, BTreeMap<String, &Tensor>)> =
        BTreeMap::new();
    for (item, t, name) in list {
        let what = || format!("{}: {name}", path.display());
        let expect_shape = |shape: &[usize]| {
            if t.shape == shape {
                Ok(())
            } else {
                Err(malformed(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.shape
                )))
            }
        };
        match item {
            Item::Weight => {}
            Item::Skew => {
                expect_shape(&[r, b, b])?;
                let mut err = 0.0f64;
                for k in 0..r {
                    let row: Vec<f64> = (0..w.ncols()).map(|c| w[(k, c)]).collect();
                    let q = skew_from_packed(&row, b).map_err(ortho(what()))?;
                    err = err.max(max_abs_diff(
                        q.as_ref(),
                        t.block(k).unwrap_or_else(|| Mat::zeros(0, 0)).as_ref(),
                    ));
                }
                ensure(what, err, ROTATION_TOL)?;
            }
            Item::Rotation(p) => {
                expect_shape(&[r, b, b])?;
                let rot =
                    BlockRotation::build(&spec_for(*p)?, w.as_ref()).map_err(ortho(what()))?;
                let mut err = 0.0f64;
                for (k, blk) in rot.blocks().iter().enumerate() {
                    err = err.max(max_abs_diff(
                        blk.as_ref(),
                        t.block(k).unwrap_or_else(|| Mat::zeros(0, 0)).as_ref(),
                    ));
                }
                ensure(what, err, ROTATION_TOL)?;
            }
            Item::Coft(eps) => {
                expect_shape(&[r, n_elements(b)])?;
                let mut projected = w.clone();
                project_coft(projected.as_mut(), CoftRadius::peft(*eps, r))
                    .map_err(ortho(what()))?;
                ensure(
                    what,
                    max_abs_diff(projected.as_ref(), t.to_mat().as_ref()),
                    ROTATION_TOL,
                )?;
            }
            Item::Module(p, field) => {
                let mode = name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
                let slot = modules.entry(mode).or_insert_with(|| (*p, BTreeMap::new()));
                slot.1.insert(field.clone(), *t);
            }
        }
    }
    for (mode, (p, fields)) in modules {
        let get = |f: &str| {
            fields
                .get(f)
                .map(|t| t.to_mat())
                .ok_or_else(|| malformed(format!("{mode}: missing .{f}")))
        };
        let (x, y, gy, gx, gw) = (
            get("x")?,
            get("y")?,
            get("grad_y")?,
            get("grad_x")?,
            get("grad_weight")?,
        );
        let what = |f: &str| format!("{}: {mode}.{f}", path.display());
        let rot = BlockRotation::build(&spec_for(p)?, w.as_ref()).map_err(ortho(what("x")))?;
        let y_ours = rot.forward(x.as_ref()).map_err(ortho(what("y")))?;
        ensure(
            || what("y"),
            max_abs_diff(y_ours.as_ref(), y.as_ref()),
            ROTATION_TOL,
        )?;
        let g = rot
            .backward(x.as_ref(), gy.as_ref())
            .map_err(ortho(what("grad_x")))?;
        ensure(
            || what("grad_x"),
            max_abs_diff(g.input.as_ref(), gx.as_ref()),
            ROTATION_TOL,
        )?;
        ensure(
            || what("grad_weight"),
            max_abs_diff(g.params.as_ref(), gw.as_ref()),
            ROTATION_TOL,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_grammar() {
        assert_eq!(parse_item("weight"), Some(Item::Weight));
        assert_eq!(parse_item("coft_eps0.05"), Some(Item::Coft(0.05)));
        assert_eq!(
            parse_item("neumann7"),
            Some(Item::Rotation(Parameterization::peft(true, 7)))
        );
        assert!(
            matches!(parse_item("neumann5.grad_weight"), Some(Item::Module(_, f)) if f == "grad_weight")
        );
        assert_eq!(parse_item("neumann5.z"), None);
        assert_eq!(parse_item("cayley"), None);
        assert_eq!(parse_item("coft_epsNaN"), None);
    }

    #[test]
    fn empty_mat_default_is_mismatch() {
        let m: Mat<f64> = Mat::zeros(0, 0);
        assert!(max_abs_diff(m.as_ref(), Mat::<f64>::zeros(1, 1).as_ref()).is_infinite());
    }
}
