//! Structure-aware mutations of safetensors files and JSON configs, driven by a seeded RNG.
//!
//! Safetensors: byte flips (biased to the header), truncations, header-length edits, appended
//! garbage, and edits of the header JSON — dtype strings, shapes, `data_offsets`, tensor keys
//! (PEFT key layouts), dropped or duplicated entries, metadata. JSON configs: value swaps and
//! replacements with hostile values, deleted/added keys, text truncation and byte flips.

use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// Hostile JSON values used for field edits. Integers stay ≤ 256 or are extreme (rejected or
/// overflowing); mid-sized counts such as 2^31 would only test the machine's memory.
pub(crate) fn hostile_value(rng: &mut StdRng) -> Value {
    if rng.random_bool(0.05) {
        return json!(i64::MAX);
    }
    let pool = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(4),
        json!(5),
        json!(7),
        json!(8),
        json!(16),
        json!(17),
        json!(33),
        json!(64),
        json!(255),
        json!(256),
        json!(0.5),
        json!(-0.0),
        json!(1.0e300),
        json!(-1.0e300),
        json!(1.0e-300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("x"),
        json!("aqlm"),
        json!("OFT"),
        json!("2x8"),
        json!("none"),
        json!("all"),
        json!("NaN"),
        json!([]),
        json!([1, 2]),
        json!(["proj"]),
        json!({}),
        json!({"a": 1}),
    ];
    pool[rng.random_range(0..pool.len())].clone()
}

/// All (path, value) slots of a JSON tree, objects and arrays included.
fn slots(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                path.push(k.clone());
                out.push(path.clone());
                slots(c, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(i.to_string());
                out.push(path.clone());
                slots(c, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(p)?,
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One random edit of a JSON value: replace a slot, delete a key, swap two slots, add a key.
pub(crate) fn edit_json(v: &mut Value, rng: &mut StdRng) {
    let mut all = Vec::new();
    slots(v, &mut Vec::new(), &mut all);
    if all.is_empty() {
        *v = hostile_value(rng);
        return;
    }
    let target = all[rng.random_range(0..all.len())].clone();
    match rng.random_range(0..10) {
        0..=5 => {
            if let Some(s) = get_mut(v, &target) {
                *s = hostile_value(rng);
            }
        }
        6 => {
            let (last, parent) = target.split_last().unwrap();
            match get_mut(v, parent) {
                Some(Value::Object(m)) => {
                    m.remove(last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < a.len()
                    {
                        a.remove(i);
                    }
                }
                _ => {}
            }
        }
        7 | 8 => {
            // Swap two values (config value swaps).
            let other = all[rng.random_range(0..all.len())].clone();
            let a = get_mut(v, &target).cloned();
            let b = get_mut(v, &other).cloned();
            if let (Some(a), Some(b)) = (a, b) {
                // One path may be a prefix of the other; then the second write lands in the
                // replaced tree or nowhere, which is fine for fuzzing.
                if let Some(s) = get_mut(v, &target) {
                    *s = b;
                }
                if let Some(s) = get_mut(v, &other) {
                    *s = a;
                }
            }
        }
        _ => {
            let (_, parent) = target.split_last().unwrap();
            if let Some(Value::Object(m)) = get_mut(v, parent) {
                let key = [
                    "extra",
                    "r",
                    "oft_block_size",
                    "nbits_per_codebook",
                    "in_group_size",
                ][rng.random_range(0..5)];
                m.insert(key.to_string(), hostile_value(rng));
            }
        }
    }
}

/// Byte-level damage of any text or binary: flip, overwrite, truncate, insert, append.
pub(crate) fn damage_bytes(b: &mut Vec<u8>, rng: &mut StdRng, focus: usize) {
    if b.is_empty() {
        b.push(rng.random());
        return;
    }
    // Positions concentrate on the first `focus` bytes (a header) most of the time.
    let pos = |rng: &mut StdRng, len: usize| {
        if focus > 0 && focus < len && rng.random_bool(0.7) {
            rng.random_range(0..focus)
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..6) {
        0 => {
            let p = pos(rng, b.len());
            b[p] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let p = pos(rng, b.len());
            b[p] = rng.random();
        }
        2 => {
            let p = pos(rng, b.len());
            b.truncate(p);
        }
        3 => {
            let p = pos(rng, b.len());
            let s = [
                b'"', b'{', b'}', b'[', b']', b',', b':', b'0', b'9', b'-', 0xff, 0,
            ][rng.random_range(0..12)];
            b.insert(p, s);
        }
        4 => {
            let p = pos(rng, b.len());
            let n = rng.random_range(1..=8.min(b.len() - p));
            b.drain(p..p + n);
        }
        _ => {
            let n = rng.random_range(1..64);
            b.extend((0..n).map(|_| rng.random::<u8>()));
        }
    }
}

/// Mutates a JSON config file: mostly structured edits (which keep it parseable and reach the
/// validation code), sometimes raw text damage.
pub(crate) fn mutate_json_text(text: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = text.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        if rng.random_bool(0.8)
            && let Ok(mut v) = serde_json::from_slice::<Value>(&out)
        {
            edit_json(&mut v, rng);
            out = serde_json::to_vec_pretty(&v).unwrap();
            continue;
        }
        let len = out.len();
        damage_bytes(&mut out, rng, len);
    }
    out
}

/// Splits a safetensors file into its header JSON and data section, if the frame is intact.
fn split(st: &[u8]) -> Option<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(st.get(..8)?.try_into().ok()?) as usize;
    let header = st.get(8..8usize.checked_add(n)?)?;
    let v = serde_json::from_slice(header).ok()?;
    Some((v, st[8 + n..].to_vec()))
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

const DTYPES: [&str; 16] = [
    "F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F4", "XYZ",
];

/// One structured edit of a safetensors header (dtype, shape, data_offsets, key, entries).
fn edit_header(h: &mut Value, data_len: usize, rng: &mut StdRng) {
    let Some(map) = h.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if keys.is_empty() {
        return;
    }
    let key = keys[rng.random_range(0..keys.len())].clone();
    let choice = rng.random_range(0..9);
    // Entries already replaced by a non-object (an earlier edit) only take key-level edits.
    if choice <= 4 && !map[&key].is_object() {
        return;
    }
    match choice {
        0 => {
            map[&key]["dtype"] = if rng.random_bool(0.9) {
                json!(DTYPES[rng.random_range(0..DTYPES.len())])
            } else {
                hostile_value(rng)
            };
        }
        1 | 2 => {
            let shape = map[&key]["shape"].as_array().cloned().unwrap_or_default();
            let mut s: Vec<Value> = shape;
            match rng.random_range(0..7) {
                0 => s.push(json!(rng.random_range(0..4u64))),
                1 => {
                    if !s.is_empty() {
                        let i = rng.random_range(0..s.len());
                        s.remove(i);
                    }
                }
                2 => s.reverse(),
                3 => {
                    if !s.is_empty() {
                        let i = rng.random_range(0..s.len());
                        s[i] = json!(0);
                    }
                }
                4 => {
                    if !s.is_empty() {
                        let i = rng.random_range(0..s.len());
                        let big = [u64::MAX, 1 << 62, 1 << 40, u32::MAX as u64 + 1, 1 << 20];
                        s[i] = json!(big[rng.random_range(0..big.len())]);
                    }
                }
                5 => {
                    if !s.is_empty() {
                        let i = rng.random_range(0..s.len());
                        let d = s[i].as_u64().unwrap_or(1);
                        s[i] = json!(if rng.random_bool(0.5) {
                            d.saturating_mul(2)
                        } else {
                            d / 2
                        });
                    }
                }
                _ => {
                    if !s.is_empty() {
                        let i = rng.random_range(0..s.len());
                        s[i] = hostile_value(rng);
                    }
                }
            }
            map[&key]["shape"] = Value::Array(s);
        }
        3 | 4 => {
            let offs = map[&key]["data_offsets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut o: Vec<u64> = offs.iter().filter_map(Value::as_u64).collect();
            if o.len() != 2 {
                o = vec![0, 0];
            }
            match rng.random_range(0..6) {
                0 => o.swap(0, 1),
                1 => o[1] = data_len as u64 + rng.random_range(1..1000u64),
                2 => o[rng.random_range(0..2)] = u64::MAX,
                3 => {
                    let d = rng.random_range(1..16u64);
                    o[1] = o[1].saturating_sub(d);
                }
                4 => {
                    let d = rng.random_range(1..16u64);
                    o[0] = o[0].saturating_add(d);
                    o[1] = o[1].saturating_add(d);
                }
                _ => o[0] = rng.random_range(0..=o[1]),
            }
            map[&key]["data_offsets"] = json!(o);
        }
        5 => {
            // PEFT key layouts and AQLM companion names.
            let edits: [fn(&str) -> String; 8] = [
                |k| k.replace(".oft_R.", ".oft_r."),
                |k| k.replacen("base_model.model.", "", 1),
                |k| k.replace(".weight", ".bias"),
                |k| format!("{k}.extra"),
                |k| k.replace(".codes", ".codez"),
                |k| k.replace(".codebooks", ".scales"),
                |k| k.replace("proj", "other"),
                |_| String::new(),
            ];
            let new = edits[rng.random_range(0..edits.len())](&key);
            if let Some(v) = map.remove(&key) {
                map.insert(new, v);
            }
        }
        6 => {
            map.remove(&key);
        }
        7 => {
            let v = map[&key].clone();
            map.insert(format!("{key}.copy"), v);
        }
        _ => {
            let m = rng.random_range(0..3);
            map.insert(
                "__metadata__".into(),
                [json!({"format": "pt"}), json!({"format": 1}), json!([1])][m].clone(),
            );
        }
    }
}

/// Mutates a safetensors file with 1–3 stacked edits.
pub(crate) fn mutate_safetensors(st: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = st.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let header_end = split(&out)
            .map(|_| 8 + u64::from_le_bytes(out[..8].try_into().unwrap()) as usize)
            .unwrap_or(out.len().min(256));
        match rng.random_range(0..10) {
            0..=4 => {
                if let Some((mut h, data)) = split(&out) {
                    edit_header(&mut h, data.len(), rng);
                    out = join(&h, &data);
                } else {
                    damage_bytes(&mut out, rng, header_end);
                }
            }
            5 => {
                // Header-length edits.
                if out.len() >= 8 {
                    let n = u64::from_le_bytes(out[..8].try_into().unwrap());
                    let new = match rng.random_range(0..5) {
                        0 => n.wrapping_add(rng.random_range(1..9)),
                        1 => n.saturating_sub(rng.random_range(1..9)),
                        2 => u64::MAX,
                        3 => 100_000_001,
                        _ => out.len() as u64,
                    };
                    out[..8].copy_from_slice(&new.to_le_bytes());
                }
            }
            6 => {
                let p = rng.random_range(0..=out.len());
                out.truncate(p);
            }
            _ => damage_bytes(&mut out, rng, header_end),
        }
    }
    out
}
