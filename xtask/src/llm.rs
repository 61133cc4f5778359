//! `cargo xtask llm`: the real-LLM results (`docs/llm.md`, `docs/llm/results.json`), produced by
//! running the pipeline end to end with the `oftq` binary and, beside it in the same run, the
//! Python reference (`../shared/anchors/ref_llm.py`: transformers, aqlm, PEFT).
//!
//! Stages: fetch SmolLM2-135M; the source's perplexity and first-window logits (oftq and
//! transformers); for each scheme (2x8, 4x8): quantize data-free, quantize calibrated, distil OFT
//! adapters, evaluate all three; generation speed; transformers + aqlm (+ PEFT) on the 2-bit
//! folder and adapter. Held-out text: `/usr/share/common-licenses/GPL-3` (never calibration or
//! training data: those are sampled from the source model). Models and folders go under
//! `<target dir>/xtask-llm/` (not committed); a stage whose output exists is not rerun.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::machine::Machine;
use crate::{fsutil, process};

/// Options of `cargo xtask llm`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// AQLM schemes to run (2x8 is 2 bits per weight, 4x8 is 4).
    #[arg(long, value_delimiter = ',', default_value = "2x8,4x8")]
    schemes: Vec<String>,
    /// Fine-tuning steps per scheme.
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Held-out evaluation text.
    #[arg(long, default_value = "/usr/share/common-licenses/GPL-3")]
    text: PathBuf,
    /// Tokens of the text evaluated (windows of 512).
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Skip the Python reference (it needs ../shared/anchors/setup.sh's environment).
    #[arg(long)]
    no_python: bool,
    /// Rerun every stage even when its output exists.
    #[arg(long)]
    fresh: bool,
}

/// Runs a command, returns (seconds, stdout, stderr); fails with both streams on error.
fn run_timed(cmd: &mut Command) -> Result<(f64, String, String)> {
    let what = process::describe(cmd);
    eprintln!("xtask llm: {what}");
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{se}{so}", out.status);
    }
    Ok((secs, so, se))
}

/// The last line of `s` that parses as a JSON object.
fn last_json(s: &str) -> Result<Value> {
    s.lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        })
        .with_context(|| format!("no JSON object in the output:\n{s}"))
}

/// The maximum resident set size in bytes that GNU time's `-f %M` wrote on the last line of
/// `stderr`, if it did.
fn gnu_time_peak(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("maxrss_kb=")?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Wraps `cmd` in GNU time (when present) to measure its peak memory.
fn with_peak(program: &Path, args: &[String]) -> Command {
    let time = Path::new("/usr/bin/time");
    if time.is_file() {
        let mut c = Command::new(time);
        c.arg("-f").arg("maxrss_kb=%M").arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

struct Ctx {
    oftq: PathBuf,
    work: PathBuf,
    text: PathBuf,
    max_tokens: usize,
    fresh: bool,
    /// The commit of this run, recorded in every stage summary it writes.
    commit: String,
    results: BTreeMap<String, Value>,
}

impl Ctx {
    fn oftq(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.oftq);
        c.arg("llm").args(args);
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// `oftq llm eval --json` of `model` (with `adapter`) on the text.
    fn eval(
        &mut self,
        key: &str,
        model: &Path,
        adapter: Option<&Path>,
        max_tokens: usize,
        logits: Option<&Path>,
    ) -> Result<Value> {
        let mut args: Vec<String> = vec![
            "eval".into(),
            "--model".into(),
            model.display().to_string(),
            "--text".into(),
            self.text.display().to_string(),
            "--max-tokens".into(),
            max_tokens.to_string(),
            "--json".into(),
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter".into(), a.display().to_string()]);
        }
        if let Some(l) = logits {
            args.extend(["--logits-out".into(), l.display().to_string()]);
        }
        let mut c = Command::new(&self.oftq);
        c.arg("llm").args(&args[..]);
        let (_, so, _) = run_timed(&mut c)?;
        let v = last_json(&so)?;
        self.results.insert(key.into(), v.clone());
        Ok(v)
    }

    /// Runs a stage producing folder `out` unless it exists (and `--fresh` is off); returns its
    /// JSON summary (kept in `<out>.json`).
    fn stage(&mut self, key: &str, out: &Path, mut cmd: Command) -> Result<Value> {
        let summary = out.with_extension("json");
        if !self.fresh && out.is_dir() && summary.is_file() {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
            // Reported as reused, with the commit that produced it when the summary records one.
            let from = v.get("commit").and_then(Value::as_str).map_or_else(
                || "an earlier commit".to_string(),
                |c| format!("commit {c}"),
            );
            let reused = format!(
                "reused from an earlier run of this command at {from} (its output existed; \
                 `--fresh` reruns it), so its times were measured with that code"
            );
            let mut shown = v.clone();
            shown["note"] = json!(match v.get("note").and_then(Value::as_str) {
                Some(note) => format!("{note}; {reused}"),
                None => reused,
            });
            self.results.insert(key.into(), shown);
            return Ok(v);
        }
        if out.exists() {
            std::fs::remove_dir_all(out)?;
        }
        let (secs, so, _) = run_timed(&mut cmd)?;
        let mut v = last_json(&so)?;
        v["wall_s"] = json!(secs);
        v["commit"] = json!(self.commit);
        fsutil::write_atomic(&summary, v.to_string().as_bytes())?;
        self.results.insert(key.into(), v.clone());
        Ok(v)
    }
}

/// Relative Frobenius error between the `logits` tensors of two safetensors files, and whether
/// their `input_ids` agree.
fn compare_logits(a: &Path, b: &Path) -> Result<(f64, bool)> {
    let read = |p: &Path| -> Result<(Vec<f32>, Vec<i64>)> {
        let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let l = st.tensor("logits")?;
        let i = st.tensor("input_ids")?;
        let f: Vec<f32> = l
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let ids: Vec<i64> = i
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((f, ids))
    };
    let ((la, ia), (lb, ib)) = (read(a)?, read(b)?);
    if la.len() != lb.len() {
        return Ok((f64::INFINITY, ia == ib));
    }
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in la.iter().zip(&lb) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    Ok(((d / n.max(f64::MIN_POSITIVE)).sqrt(), ia == ib))
}

/// Runs everything and writes the report.
pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    if !opts.text.is_file() {
        bail!("{}: the held-out text is missing", opts.text.display());
    }
    let machine = Machine::probe(root);
    process::run(process::cargo(root).args(["build", "--release", "-p", "oftq-cli"]))?;
    let meta = process::metadata(root)?;
    let target = meta.target_directory.clone();
    let mut ctx = Ctx {
        oftq: target.join("release/oftq"),
        work: target.join("xtask-llm"),
        text: opts.text.clone(),
        max_tokens: opts.max_tokens,
        fresh: opts.fresh,
        commit: machine.commit.clone(),
        results: BTreeMap::new(),
    };
    std::fs::create_dir_all(&ctx.work)?;
    let (_, so, _) = run_timed(&mut ctx.oftq(&["fetch"]))?;
    let gguf = PathBuf::from(so.trim());

    // The source model, oftq and transformers.
    let ours_logits = ctx.path("source-oftq-logits.safetensors");
    ctx.eval("source", &gguf, None, ctx.max_tokens, Some(&ours_logits))?;
    let reference = if opts.no_python {
        None
    } else {
        crate::python::Reference::locate(root, std::env::var_os("OFTQ_REF").map(PathBuf::from)).ok()
    };
    let ref_llm = root
        .parent()
        .unwrap_or(root)
        .join("shared/anchors/ref_llm.py");
    if let Some(r) = &reference {
        let ref_logits = ctx.path("source-ref-logits.safetensors");
        let args: Vec<String> = [
            ref_llm.display().to_string(),
            "--model".into(),
            gguf.display().to_string(),
            "--text".into(),
            ctx.text.display().to_string(),
            "--max-tokens".into(),
            ctx.max_tokens.to_string(),
            "--logits-out".into(),
            ref_logits.display().to_string(),
            "--generate".into(),
            "64".into(),
            "--train-steps".into(),
            "6".into(),
            "--threads".into(),
            "2".into(),
        ]
        .into();
        let (secs, so, se) = run_timed(&mut with_peak(&r.python, &args))?;
        let mut v = last_json(&so)?;
        v["peak_rss_bytes"] = json!(gnu_time_peak(&se));
        v["wall_s"] = json!(secs);
        let (err, same_ids) = compare_logits(&ours_logits, &ref_logits)?;
        v["logits_rel_err_vs_oftq"] = json!(err);
        v["same_input_ids"] = json!(same_ids);
        ctx.results.insert("python.source".into(), v);
    }
    // Generation with the source (for reference).
    let gen_args = |model: &Path, adapter: Option<&Path>| {
        let mut a = vec![
            "generate".to_string(),
            "--model".into(),
            model.display().to_string(),
        ];
        if let Some(ad) = adapter {
            a.extend(["--adapter".into(), ad.display().to_string()]);
        }
        a.extend([
            "--prompt".into(),
            "The GNU General Public License is".into(),
            "--max-tokens".into(),
            "64".into(),
        ]);
        a
    };

    for scheme in &opts.schemes {
        let free = ctx.path(&format!("{scheme}-data-free"));
        let cal = ctx.path(&format!("{scheme}-calibrated"));
        let adapter = ctx.path(&format!("{scheme}-oft"));
        let gguf_s = gguf.display().to_string();
        let mut q = ctx.oftq(&[
            "quantize",
            "--model",
            &gguf_s,
            "--scheme",
            scheme,
            "--data-free",
            "--json",
            "--out",
        ]);
        q.arg(&free);
        ctx.stage(&format!("{scheme}.quantize.data_free"), &free, q)?;
        let mut q = ctx.oftq(&[
            "quantize", "--model", &gguf_s, "--scheme", scheme, "--json", "--out",
        ]);
        q.arg(&cal);
        ctx.stage(&format!("{scheme}.quantize.calibrated"), &cal, q)?;
        let steps = opts.steps.to_string();
        let mut f = ctx.oftq(&[
            "finetune",
            "--teacher",
            &gguf_s,
            "--steps",
            &steps,
            "--json",
            "--model",
        ]);
        f.arg(&cal).arg("--out").arg(&adapter);
        ctx.stage(&format!("{scheme}.finetune"), &adapter, f)?;
        ctx.eval(
            &format!("{scheme}.data_free"),
            &free,
            None,
            ctx.max_tokens,
            None,
        )?;
        ctx.eval(
            &format!("{scheme}.calibrated"),
            &cal,
            None,
            ctx.max_tokens,
            None,
        )?;
        ctx.eval(
            &format!("{scheme}.oft"),
            &cal,
            Some(&adapter),
            ctx.max_tokens,
            None,
        )?;
        // Generation, batch 1: the 2-bit model alone and with its adapters.
        for (key, ad) in [
            ("generate", None),
            ("oft.generate", Some(adapter.as_path())),
        ] {
            let mut g = ctx.oftq(&[]);
            g.args(gen_args(&cal, ad));
            let (_, _, se) = run_timed(&mut g)?;
            // "64 tokens, 25.0 tokens/s (prompt 0.08 s)"
            let tps = se.lines().find_map(|l| {
                let (_, rest) = l.split_once(" tokens, ")?;
                rest.split_once(" tokens/s")?.0.parse::<f64>().ok()
            });
            ctx.results
                .insert(format!("{scheme}.{key}"), json!({"tokens_per_s": tps}));
        }
    }

    // transformers + aqlm (+ PEFT) on the first 2-bit folder and its adapter: one window of 512.
    if let (Some(r), Some(scheme)) = (&reference, opts.schemes.first()) {
        let (cal, adapter) = (
            ctx.path(&format!("{scheme}-calibrated")),
            ctx.path(&format!("{scheme}-oft")),
        );
        ctx.eval(&format!("{scheme}.calibrated.512"), &cal, None, 512, None)?;
        ctx.eval(
            &format!("{scheme}.oft.512"),
            &cal,
            Some(&adapter),
            512,
            None,
        )?;
        for (key, ad) in [("calibrated", None), ("oft", Some(&adapter))] {
            let mut args: Vec<String> = vec![
                ref_llm.display().to_string(),
                "--model".into(),
                cal.display().to_string(),
                "--text".into(),
                ctx.text.display().to_string(),
                "--max-tokens".into(),
                "512".into(),
                "--threads".into(),
                "2".into(),
            ];
            if let Some(a) = ad {
                args.extend(["--adapter".into(), a.display().to_string()]);
            }
            // aqlm's numba kernel races on more than one thread (wrong outputs): one thread.
            let mut c = Command::new(&r.python);
            c.args(&args).env("NUMBA_NUM_THREADS", "1");
            let (secs, so, _) = run_timed(&mut c)?;
            let mut v = last_json(&so)?;
            v["wall_s"] = json!(secs);
            ctx.results.insert(format!("python.{scheme}.{key}.512"), v);
        }
    }

    let results = Value::Object(ctx.results.clone().into_iter().collect());
    let dir = root.join("docs/llm");
    std::fs::create_dir_all(&dir)?;
    fsutil::write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    let md = report(&machine, opts, &ctx.results);
    fsutil::write_atomic(&root.join("docs/llm.md"), md.as_bytes())?;
    eprintln!("xtask llm: wrote docs/llm.md and docs/llm/results.json");
    Ok(())
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn mib(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |b| format!("{:.0} MiB", b / 1_048_576.0))
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

/// The markdown report.
fn report(machine: &Machine, opts: &Options, r: &BTreeMap<String, Value>) -> String {
    let get = |k: &str, f: &str| num(r.get(k).and_then(|v| v.get(f)));
    let ppl = |k: &str| get(k, "perplexity");
    let src = ppl("source");
    let gap = |k: &str| Some(ppl(k)?.ln() - src?.ln());
    let mut s = String::new();
    s.push_str(&format!(
        "# SmolLM2-135M quantized with AQLM ({}), recovered with OFT, on this CPU\n\n",
        opts.schemes.join(", ")
    ));
    s.push_str(&format!(
        "Generated by `cargo xtask llm` ({}). {}.\n\n",
        opts.schemes.join(", "),
        machine.line()
    ));
    s.push_str(&format!(
        "Held-out text: `{}`, first {} tokens, windows of 512 (the first token of each window is not scored). \
         Calibration and training text is sampled from the source model itself; the evaluation text is never part of it. \
         The source is the GGUF file dequantized to f32 (`oftq llm fetch`).\n\n",
        opts.text.display(),
        opts.max_tokens
    ));
    s.push_str("## Perplexity\n\n| model | perplexity | log-perplexity gap to the source | gap closed |\n|---|---|---|---|\n");
    s.push_str(&format!("| source (oftq) | {} | 0 | |\n", fmt(src, 3)));
    if let Some(p) = get("python.source", "perplexity") {
        s.push_str(&format!("| source (transformers) | {p:.3} | | |\n"));
    }
    for scheme in &opts.schemes {
        let (f, c, o) = (
            format!("{scheme}.data_free"),
            format!("{scheme}.calibrated"),
            format!("{scheme}.oft"),
        );
        s.push_str(&format!(
            "| {scheme} data-free | {} | {} | |\n",
            fmt(ppl(&f), 1),
            fmt(gap(&f), 3)
        ));
        let closed_cal = gap(&f).zip(gap(&c)).map(|(a, b)| 100.0 * (1.0 - b / a));
        s.push_str(&format!(
            "| {scheme} calibrated | {} | {} | {} % of the data-free gap |\n",
            fmt(ppl(&c), 2),
            fmt(gap(&c), 3),
            fmt(closed_cal, 1)
        ));
        let closed_oft = gap(&c).zip(gap(&o)).map(|(a, b)| 100.0 * (1.0 - b / a));
        s.push_str(&format!(
            "| {scheme} calibrated + OFT | {} | {} | {} % of the calibrated gap |\n",
            fmt(ppl(&o), 2),
            fmt(gap(&o), 3),
            fmt(closed_oft, 1)
        ));
    }
    let first = opts.schemes.first().cloned().unwrap_or_default();
    s.push_str("\n## Time and memory\n\n| work | oftq | Python reference (same machine, same run) |\n|---|---|---|\n");
    s.push_str(&format!(
        "| forward of 512 tokens, source | {} s | {} s (transformers) |\n",
        fmt(get("source", "forward_s"), 2),
        fmt(get("python.source", "forward_s"), 2)
    ));
    s.push_str(&format!(
        "| forward of 512 tokens, {first} folder | {} s | {} s (transformers + aqlm, 1 numba thread) |\n",
        fmt(get(&format!("{first}.calibrated.512"), "forward_s"), 2),
        fmt(get(&format!("python.{first}.calibrated.512"), "forward_s"), 1)
    ));
    // Every scheme's generation speed, alone and with its adapters.
    let generation: Vec<String> = opts
        .schemes
        .iter()
        .map(|sc| {
            format!(
                "{} tokens/s ({sc}), {} tokens/s ({sc} + OFT)",
                fmt(get(&format!("{sc}.generate"), "tokens_per_s"), 1),
                fmt(get(&format!("{sc}.oft.generate"), "tokens_per_s"), 1)
            )
        })
        .collect();
    s.push_str(&format!(
        "| generation, batch 1 | {} | {} tokens/s (transformers, source) |\n",
        generation.join("; "),
        fmt(get("python.source", "generate_tokens_per_s"), 1)
    ));
    s.push_str(&format!(
        "| OFT training step, 512 tokens | {} s ({first}, distillation) | {} s (PEFT on the dense source) |\n",
        fmt(get(&format!("{first}.finetune"), "median_step_s"), 2),
        fmt(get("python.source", "train_step_s"), 2)
    ));
    s.push_str(&format!(
        "| peak memory while training | {} | {} (whole process) |\n",
        mib(get(&format!("{first}.finetune"), "train_peak_rss_bytes")),
        mib(get("python.source", "peak_rss_bytes"))
    ));
    for scheme in &opts.schemes {
        s.push_str(&format!(
            "| {scheme}: quantize data-free / calibrated / finetune | {} s / {} s / {} s | |\n",
            fmt(get(&format!("{scheme}.quantize.data_free"), "seconds"), 0),
            fmt(get(&format!("{scheme}.quantize.calibrated"), "seconds"), 0),
            fmt(get(&format!("{scheme}.finetune"), "seconds"), 0)
        ));
    }
    // The held-out selection of each distillation (absent in summaries of older runs).
    let selection: Vec<String> = opts
        .schemes
        .iter()
        .filter_map(|scheme| {
            let v = r
                .get(&format!("{scheme}.finetune"))?
                .get("validation")?
                .as_array()?;
            let kl = |x: &Value| num(x.get("kl"));
            let first = kl(v.first()?)?;
            let best = v.iter().filter_map(kl).fold(first, f64::min);
            let best_step = r
                .get(&format!("{scheme}.finetune"))?
                .get("best_step")?
                .as_u64()?;
            let back = v
                .iter()
                .filter(|x| x.get("kept") == Some(&Value::Bool(false)))
                .count();
            let trail = v
                .iter()
                .filter_map(|x| Some(format!("{:.3}", kl(x)?)))
                .collect::<Vec<_>>()
                .join(" → ");
            Some(format!(
                "| {scheme} | {first:.3} | {best:.3} (step {best_step}) | {back} | {trail} |\n"
            ))
        })
        .collect();
    if !selection.is_empty() {
        s.push_str(
            "\n## Distillation: KL to the source on held-out sampled sequences\n\n\
             Measured before the first step (no adapter), every 25 steps and after the last; a measurement that is not \
             better sends training back to the best state with the learning rate halved, and the adapter written is the \
             best one.\n\n| scheme | no adapter | best | steps back | every measurement |\n|---|---|---|---|---|\n",
        );
        s.extend(selection);
    }
    // Targets.
    let pipeline = get(&format!("{first}.quantize.calibrated"), "seconds")
        .zip(get(&format!("{first}.finetune"), "seconds"))
        .map(|(a, b)| a + b + get(&format!("{first}.oft"), "forward_s").unwrap_or(0.0) * 4.0);
    let rel = |a: Option<f64>, b: Option<f64>| Some((a? - b?).abs() / b?);
    let gap_f = gap(&format!("{first}.data_free"));
    let gap_c = gap(&format!("{first}.calibrated"));
    let gap_o = gap(&format!("{first}.oft"));
    let rows: Vec<(String, String, Option<bool>)> = vec![
        (
            "source perplexity equals transformers' (relative 1e-3)".into(),
            fmt(rel(src, get("python.source", "perplexity")), 6),
            rel(src, get("python.source", "perplexity")).map(|e| e <= 1e-3),
        ),
        (
            "source first-window logits equal transformers' (relative 1e-3)".into(),
            fmt(get("python.source", "logits_rel_err_vs_oftq"), 7),
            get("python.source", "logits_rel_err_vs_oftq").map(|e| e <= 1e-3),
        ),
        (
            format!("{first} calibrated gap ≤ 1/3 of the data-free gap"),
            format!("{} vs {}", fmt(gap_c, 3), fmt(gap_f, 3)),
            gap_c.zip(gap_f).map(|(c, f)| c <= f / 3.0),
        ),
        (
            format!("{first} + OFT closes ≥ 30% of the calibrated gap"),
            gap_c.zip(gap_o).map_or("–".into(), |(c, o)| format!("{:.1} %", 100.0 * (1.0 - o / c))),
            gap_c.zip(gap_o).map(|(c, o)| 1.0 - o / c >= 0.3),
        ),
        (
            "default pipeline (quantize + finetune + eval) ≤ 90 min".into(),
            pipeline.map_or("–".into(), |p| format!("{:.1} min", p / 60.0)),
            pipeline.map(|p| p <= 5400.0),
        ),
        (
            format!("forward of 512 tokens through the {first} folder ≥ 100× transformers + aqlm"),
            get(&format!("python.{first}.calibrated.512"), "forward_s")
                .zip(get(&format!("{first}.calibrated.512"), "forward_s"))
                .map_or("–".into(), |(p, o)| format!("{:.0}×", p / o)),
            get(&format!("python.{first}.calibrated.512"), "forward_s")
                .zip(get(&format!("{first}.calibrated.512"), "forward_s"))
                .map(|(p, o)| p / o >= 100.0),
        ),
        (
            format!("generation with the {first} model ≥ 2× transformers on the source"),
            get(&format!("{first}.generate"), "tokens_per_s")
                .zip(get("python.source", "generate_tokens_per_s"))
                .map_or("–".into(), |(o, p)| format!("{:.2}×", o / p)),
            get(&format!("{first}.generate"), "tokens_per_s")
                .zip(get("python.source", "generate_tokens_per_s"))
                .map(|(o, p)| o / p >= 2.0),
        ),
        (
            "OFT training step on 512 tokens no slower than PEFT's on the dense source".into(),
            get(&format!("{first}.finetune"), "median_step_s")
                .zip(get("python.source", "train_step_s"))
                .map_or("–".into(), |(o, p)| format!("{o:.2} s vs {p:.2} s")),
            get(&format!("{first}.finetune"), "median_step_s")
                .zip(get("python.source", "train_step_s"))
                .map(|(o, p)| o <= p),
        ),
        (
            "its peak memory at most half of PEFT's".into(),
            format!(
                "{} vs {}",
                mib(get(&format!("{first}.finetune"), "train_peak_rss_bytes")),
                mib(get("python.source", "peak_rss_bytes"))
            ),
            get(&format!("{first}.finetune"), "train_peak_rss_bytes")
                .zip(get("python.source", "peak_rss_bytes"))
                .map(|(o, p)| o <= p / 2.0),
        ),
        (
            "PEFT loads the adapter onto the AQLM folder (same perplexity, first 512 tokens, relative 1e-3)".into(),
            format!(
                "{} vs {}",
                fmt(get(&format!("{first}.oft.512"), "perplexity"), 3),
                fmt(get(&format!("python.{first}.oft.512"), "perplexity"), 3)
            ),
            rel(get(&format!("{first}.oft.512"), "perplexity"), get(&format!("python.{first}.oft.512"), "perplexity"))
                .map(|e| e <= 1e-3),
        ),
    ];
    s.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    for (what, value, ok) in rows {
        s.push_str(&format!("| {what} | {value} | {} |\n", met(ok)));
    }
    s.push_str(
        "\nNotes: aqlm's numba CPU kernel races on more than one thread and then returns wrong outputs, so the Python \
         reference runs AQLM folders with `NUMBA_NUM_THREADS=1`. Peak memory: oftq reports the training phase of \
         `oftq llm finetune` (after the teacher's targets are computed and the teacher dropped); the Python figure is \
         GNU time's maximum resident set of `ref_llm.py --train-steps` (load, evaluation, generation, training). \
         Raw figures: `docs/llm/results.json`.\n",
    );
    // A stage summary may carry a note on how it was produced (e.g. on a busy machine).
    for (key, v) in r {
        if let Some(note) = v.get("note").and_then(Value::as_str) {
            s.push_str(&format!("\nStage `{key}`: {note}.\n"));
        }
    }
    s
}
