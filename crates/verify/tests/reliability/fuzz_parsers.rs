//! ≥ 10,000 mutated files per run through every parser of outside data: AQLM checkpoint folders
//! (`config.json` + `model.safetensors`), PEFT adapter folders (`adapter_config.json` +
//! `adapter_model.safetensors`, key layouts included), `adapter_config.json` text alone, and
//! safetensors files of one kind fed where the other is expected. Every input must give `Ok` or
//! a typed error; panics are caught with `catch_unwind`, counted, and their inputs kept.
//!
//! `OFTQ_FUZZ_INPUTS` (default 10,240) and `OFTQ_FUZZ_SEED` (default 9) set the run.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use faer::Mat;
use oftq_aqlm::{AqlmCheckpoint, AqlmLayer, Kernel};
use oftq_layer::peft_io::parse_config;
use oftq_layer::{OftAdapter, OftLinear, add_peft_adapter, load_adapter, load_aqlm_oft};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::mutate::{mutate_json_text, mutate_safetensors};
use crate::{SeedCase, seed_cases};

thread_local! {
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
    static FUZZING: RefCell<bool> = const { RefCell::new(false) };
}

/// The last panic message of any other thread while a fuzz input runs (a panic inside a rayon
/// job happens on a worker thread, then propagates to the fuzzing thread).
static OTHER_THREAD_PANIC: Mutex<Option<String>> = Mutex::new(None);
static FUZZ_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Installs (once) a panic hook that records panics of fuzzing threads silently and forwards
/// every other panic to the default hook (recording it too while an input runs).
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FUZZING.with(|f| *f.borrow()) {
                let msg = format!("{info}");
                CAUGHT.with(|c| *c.borrow_mut() = Some(msg));
            } else {
                if FUZZ_ACTIVE.load(Ordering::SeqCst)
                    && let Ok(mut m) = OTHER_THREAD_PANIC.lock()
                {
                    *m = Some(format!("{info}"));
                }
                default(info);
            }
        }));
    });
}

/// Largest model file used as a seed (bigger layers only slow the run down).
const MAX_SEED_BYTES: u64 = 256 * 1024;
/// Largest layer (in × out) that is also run forward/backward after a successful load.
const MAX_RUN_ELEMS: usize = 1 << 16;

#[derive(Default)]
struct Tally {
    inputs: usize,
    ok: usize,
    errors: usize,
    panics: Vec<(String, String, PathBuf)>,
    per_target: [usize; 5],
}

struct Seeds {
    /// (config.json, model.safetensors) bytes of small checkpoints.
    models: Vec<(Vec<u8>, Vec<u8>)>,
    /// (adapter_config.json, adapter_model.safetensors) with the index of the base in `bases`.
    adapters: Vec<(Vec<u8>, Vec<u8>, usize)>,
    /// Unmutated base layers (module name, layer, model folder).
    bases: Vec<(String, AqlmLayer, PathBuf)>,
}

fn seeds(cases: &[SeedCase]) -> Seeds {
    let mut s = Seeds {
        models: Vec::new(),
        adapters: Vec::new(),
        bases: Vec::new(),
    };
    for c in cases {
        let ckpt = AqlmCheckpoint::load(&c.model).unwrap();
        let base = ckpt.layer(&c.module).unwrap().clone();
        let bi = s.bases.len();
        s.bases.push((c.module.clone(), base, c.model.clone()));
        if c.model_bytes <= MAX_SEED_BYTES {
            s.models.push((
                std::fs::read(c.model.join("config.json")).unwrap(),
                std::fs::read(c.model.join("model.safetensors")).unwrap(),
            ));
        }
        for (_, dir) in &c.adapters {
            s.adapters.push((
                std::fs::read(dir.join("adapter_config.json")).unwrap(),
                std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
                bi,
            ));
        }
    }
    assert!(!s.models.is_empty() && !s.adapters.is_empty(), "no seeds");
    s
}

fn write(dir: &Path, files: &[(&str, &[u8])]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Runs a loaded layer forward and backward with every kernel (small layers only).
fn exercise_aqlm(layer: &AqlmLayer, i: usize) -> Result<(), String> {
    if layer.in_features().saturating_mul(layer.out_features()) > MAX_RUN_ELEMS {
        return Ok(());
    }
    let k = [
        Kernel::Lut,
        Kernel::DecodeDot,
        Kernel::TiledGemm,
        Kernel::Reference,
    ][i % 4];
    let x = Mat::<f32>::from_fn(2, layer.in_features(), |t, f| ((t + f) % 5) as f32 - 2.0);
    let y = layer
        .forward_with(x.as_ref(), k)
        .map_err(|e| e.to_string())?;
    layer
        .backward_input_with(y.as_ref(), k)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// One input of target `t`. `Ok(true)` = accepted, `Ok(false)` = typed error.
fn one_input(t: usize, i: usize, seeds: &Seeds, rng: &mut StdRng, dir: &Path) -> bool {
    match t {
        // Checkpoint folder: mutate config.json or model.safetensors, load, run.
        0 => {
            let (cfg, st) = &seeds.models[rng.random_range(0..seeds.models.len())];
            let (cfg, st) = if rng.random_bool(0.3) {
                (mutate_json_text(cfg, rng), st.clone())
            } else {
                (cfg.clone(), mutate_safetensors(st, rng))
            };
            write(dir, &[("config.json", &cfg), ("model.safetensors", &st)]);
            match AqlmCheckpoint::load(dir) {
                Ok(ckpt) => {
                    for layer in ckpt.layers().values() {
                        let _ = exercise_aqlm(layer, i);
                    }
                    if i.is_multiple_of(16) {
                        let _ = ckpt.save(&dir.join("resaved"));
                    }
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }
        // Adapter folder on its (unmutated) base: load_adapter + add_peft_adapter, then run.
        1 => {
            let (cfg, st, bi) = &seeds.adapters[rng.random_range(0..seeds.adapters.len())];
            let (cfg, st) = if rng.random_bool(0.35) {
                (mutate_json_text(cfg, rng), st.clone())
            } else {
                (cfg.clone(), mutate_safetensors(st, rng))
            };
            write(
                dir,
                &[
                    ("adapter_config.json", &cfg),
                    ("adapter_model.safetensors", &st),
                ],
            );
            let (module, base, model_dir) = &seeds.bases[*bi];
            if load_adapter(dir).is_err() {
                return false;
            }
            let loaded = if i.is_multiple_of(8) {
                // The full path, checkpoint included.
                load_aqlm_oft(model_dir, module, &[("default".into(), dir.to_path_buf())])
            } else {
                let mut l = OftLinear::new(base.clone());
                add_peft_adapter(&mut l, module, "default", dir).map(|()| l)
            };
            match loaded {
                Ok(l) => {
                    let x = Mat::<f32>::from_fn(2, base.in_features(), |t, f| {
                        ((t * 3 + f) % 7) as f32 / 7.0
                    });
                    if let Ok((y, cache)) = l.forward_cached(x.as_ref(), None) {
                        let _ = l.backward(&cache, y.as_ref());
                    }
                    true
                }
                Err(e) => {
                    let _ = e.to_string();
                    false
                }
            }
        }
        // adapter_config.json alone (in memory), then an adapter built from it on the base.
        2 => {
            let (cfg, _, bi) = &seeds.adapters[rng.random_range(0..seeds.adapters.len())];
            let text = mutate_json_text(cfg, rng);
            // Kept on disk only so that a panicking input can be copied out.
            write(dir, &[("adapter_config.json", &text)]);
            let text = String::from_utf8_lossy(&text);
            match parse_config(&text, Path::new("adapter_config.json")) {
                Ok(c) => {
                    let inf = seeds.bases[*bi].1.in_features();
                    OftAdapter::new(&c, inf, i as u64).is_ok()
                }
                Err(_) => false,
            }
        }
        // Cross-fed safetensors: an adapter file as model weights and a model file as adapter
        // weights (valid containers with the wrong contents), lightly mutated half of the time.
        3 => {
            let (acfg, ast, _) = &seeds.adapters[rng.random_range(0..seeds.adapters.len())];
            let (mcfg, mst) = &seeds.models[rng.random_range(0..seeds.models.len())];
            let mut a = ast.clone();
            let mut m = mst.clone();
            if rng.random_bool(0.5) {
                a = mutate_safetensors(&a, rng);
                m = mutate_safetensors(&m, rng);
            }
            write(dir, &[("config.json", mcfg), ("model.safetensors", &a)]);
            let r1 = AqlmCheckpoint::load(dir).is_ok();
            let adir = dir.join("adapter");
            write(
                &adir,
                &[
                    ("adapter_config.json", acfg),
                    ("adapter_model.safetensors", &m),
                ],
            );
            let r2 = load_adapter(&adir).is_ok();
            r1 || r2
        }
        // Missing or empty files and folders.
        _ => {
            let (cfg, st) = &seeds.models[rng.random_range(0..seeds.models.len())];
            let fresh = dir.join(format!("missing{}", i % 4));
            let _ = std::fs::remove_dir_all(&fresh);
            std::fs::create_dir_all(&fresh).unwrap();
            match i % 4 {
                0 => write(&fresh, &[("config.json", cfg)]),
                1 => write(&fresh, &[("model.safetensors", st)]),
                2 => write(&fresh, &[("config.json", b""), ("model.safetensors", b"")]),
                _ => write(
                    &fresh,
                    &[
                        ("adapter_config.json", b"{}"),
                        ("adapter_model.safetensors", b""),
                    ],
                ),
            }
            AqlmCheckpoint::load(&fresh).is_ok() | load_adapter(&fresh).is_ok()
        }
    }
}

#[test]
fn ten_thousand_mutated_files_never_panic() {
    install_hook();
    let n: usize = std::env::var("OFTQ_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_240);
    let seed: u64 = std::env::var("OFTQ_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let cases = seed_cases();
    let seeds = seeds(&cases);
    // A RAM-backed folder when there is one: the run writes ~20,000 small files.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-panics");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let start = std::time::Instant::now();
    for i in 0..n {
        // Target mix: checkpoint 35 %, adapter folder 35 %, adapter_config.json 20 %, cross-fed
        // safetensors 9 %, missing files 1 %.
        let t = match i % 100 {
            0..35 => 0,
            35..70 => 1,
            70..90 => 2,
            90..99 => 3,
            _ => 4,
        };
        let dir = tmp.path().join(format!("t{t}"));
        // Each input gets its own RNG so a panic can be replayed from (seed, i) alone.
        let mut input_rng =
            StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let _ = rng.random::<u64>();
        if let Ok(mut m) = OTHER_THREAD_PANIC.lock() {
            *m = None;
        }
        FUZZING.with(|f| *f.borrow_mut() = true);
        FUZZ_ACTIVE.store(true, Ordering::SeqCst);
        let r = catch_unwind(AssertUnwindSafe(|| {
            one_input(t, i, &seeds, &mut input_rng, &dir)
        }));
        FUZZ_ACTIVE.store(false, Ordering::SeqCst);
        FUZZING.with(|f| *f.borrow_mut() = false);
        tally.inputs += 1;
        tally.per_target[t] += 1;
        match r {
            Ok(true) => tally.ok += 1,
            Ok(false) => tally.errors += 1,
            Err(_) => {
                let msg = CAUGHT
                    .with(|c| c.borrow_mut().take())
                    .or_else(|| OTHER_THREAD_PANIC.lock().ok().and_then(|mut m| m.take()))
                    .unwrap_or_default();
                let saved = keep.join(format!("seed{seed}-input{i}-target{t}"));
                let _ = std::fs::remove_dir_all(&saved);
                copy_dir(&dir, &saved);
                tally
                    .panics
                    .push((format!("input {i} (target {t})"), msg, saved));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz: {} inputs in {secs:.1} s (checkpoint {}, adapter folder {}, adapter_config {}, cross-fed {}, missing {}): \
         {} loaded, {} typed errors, {} panics",
        tally.inputs,
        tally.per_target[0],
        tally.per_target[1],
        tally.per_target[2],
        tally.per_target[3],
        tally.per_target[4],
        tally.ok,
        tally.errors,
        tally.panics.len()
    );
    for (what, msg, saved) in &tally.panics {
        println!("PANIC {what}: {msg}\n  input kept in {}", saved.display());
    }
    assert!(
        tally.inputs >= 10_000 || n < 10_000,
        "only {} inputs",
        tally.inputs
    );
    assert!(
        tally.panics.is_empty(),
        "{} panics (see output)",
        tally.panics.len()
    );
    // The mutations must reach past the container checks: some inputs load, most do not.
    assert!(
        tally.ok > n / 50 && tally.errors > n / 4,
        "poor mutation mix: {} ok, {} errors",
        tally.ok,
        tally.errors
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    if let Ok(rd) = std::fs::read_dir(from) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                copy_dir(&p, &to.join(e.file_name()));
            } else {
                let _ = std::fs::copy(&p, to.join(e.file_name()));
            }
        }
    }
}

mod shrinking {
    //! The same parsers under proptest's own strategies (byte overwrites, a truncation and a
    //! header-length edit of the seed files), so a panic would be shrunk to a minimal edit list.
    //! Complements the seeded mutation run above (which counts panics instead of stopping).

    use std::path::Path;

    use oftq_aqlm::AqlmCheckpoint;
    use oftq_layer::load_adapter;
    use proptest::prelude::*;

    use crate::seed_cases;

    fn apply(
        seed: &[u8],
        edits: &[(usize, u8)],
        cut: Option<usize>,
        len_delta: Option<i64>,
    ) -> Vec<u8> {
        let mut b = seed.to_vec();
        // Edits land in the first 512 bytes (header) with index % 512, else anywhere.
        for &(pos, byte) in edits {
            let n = b.len();
            let p = if pos % 2 == 0 {
                (pos / 2) % n.min(512)
            } else {
                (pos / 2) % n
            };
            b[p] = byte;
        }
        if let Some(d) = len_delta {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap());
            b[..8].copy_from_slice(&n.wrapping_add_signed(d).to_le_bytes());
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]
        #[test]
        fn byte_edits_of_seed_files_give_typed_errors(
            case in 0usize..64,
            model_side in any::<bool>(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in prop::option::weighted(0.2, any::<usize>()),
            len_delta in prop::option::weighted(0.2, -64i64..64),
        ) {
            let cases = seed_cases();
            let c = &cases[case % cases.len()];
            let tmp = tempfile::tempdir_in(if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).unwrap();
            if model_side && c.model_bytes <= super::MAX_SEED_BYTES {
                let seed = std::fs::read(c.model.join("model.safetensors")).unwrap();
                std::fs::copy(c.model.join("config.json"), tmp.path().join("config.json")).unwrap();
                std::fs::write(tmp.path().join("model.safetensors"), apply(&seed, &edits, cut, len_delta)).unwrap();
                let _ = AqlmCheckpoint::load(tmp.path()).map_err(|e| e.to_string());
            } else {
                let dir = &c.adapters[0].1;
                let seed = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
                std::fs::copy(dir.join("adapter_config.json"), tmp.path().join("adapter_config.json")).unwrap();
                std::fs::write(tmp.path().join("adapter_model.safetensors"), apply(&seed, &edits, cut, len_delta)).unwrap();
                let _ = load_adapter(tmp.path()).map_err(|e| e.to_string());
            }
        }
    }
}
