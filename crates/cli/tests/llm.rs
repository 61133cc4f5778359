//! `oftq llm` end to end on a tiny random Llama (written by `oftq_llm::tiny`, no download):
//! quantize → finetune → eval → generate, their JSON outputs, and one-line errors on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test file

use std::path::Path;
use std::process::{Command, Output};

use oftq_llm::oftq_candle::candle_core::quantized::GgmlDType;
use oftq_llm::tiny;
use serde_json::Value;

fn oftq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oftq"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let out = oftq(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "oftq {args:?} failed: {se}");
    serde_json::from_str(so.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {so}"))
}

fn one_line_error(args: &[&str], needle: &str) {
    let out = oftq(args);
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "oftq {args:?} should fail");
    let lines: Vec<&str> = se.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {se}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{se}"
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn pipeline_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = oftq_llm::LlamaConfig {
        tie_word_embeddings: false,
        ..tiny::config(2)
    };
    let gguf = dir.path().join("tiny.gguf");
    tiny::write_gguf(
        &gguf,
        &config,
        &tiny::weights(&config, 1).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the other one is on the river. ".repeat(20)).unwrap();
    let (g, t) = (s(&gguf), s(&text));

    let q = dir.path().join("q");
    let rep = ok_json(&[
        "llm",
        "quantize",
        "--model",
        &g,
        "--out",
        &s(&q),
        "--scheme",
        "1x4",
        "--sequences",
        "4",
        "--length",
        "32",
        "--rounds",
        "2",
        "--json",
    ]);
    assert_eq!(rep["projections"], 14);
    assert_eq!(rep["calibration_tokens"], 4 * 32);
    assert!(q.join("config.json").is_file() && q.join("tokenizer.json").is_file());

    let ad = dir.path().join("adapter");
    let rep = ok_json(&[
        "llm",
        "finetune",
        "--model",
        &s(&q),
        "--teacher",
        &g,
        "--out",
        &s(&ad),
        "--steps",
        "3",
        "--sequences",
        "4",
        "--validation",
        "2",
        "--length",
        "32",
        "--block-size",
        "16",
        "--json",
    ]);
    assert_eq!(rep["steps"], 3);
    // Held out: measured before the first step and after the last.
    let v = rep["validation"].as_array().unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["step"], 0);
    assert!(v[1]["kl"].as_f64().unwrap().is_finite());
    let best = if v[1]["kept"] == true { 3 } else { 0 };
    assert_eq!(rep["best_step"], best);
    assert!(rep["median_step_s"].as_f64().unwrap() > 0.0);
    assert!(ad.join("adapter_config.json").is_file());

    let ev = ok_json(&[
        "llm",
        "eval",
        "--model",
        &s(&q),
        "--adapter",
        &s(&ad),
        "--text",
        &t,
        "--context",
        "32",
        "--json",
    ]);
    assert!(ev["perplexity"].as_f64().unwrap() > 1.0);
    assert!(ev["tokens"].as_u64().unwrap() > 0 && ev["forward_s"].as_f64().is_some());
    let plain = oftq(&[
        "llm",
        "eval",
        "--model",
        &g,
        "--text",
        &t,
        "--context",
        "32",
    ]);
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with("perplexity "));

    let out = oftq(&[
        "llm",
        "generate",
        "--model",
        &s(&q),
        "--adapter",
        &s(&ad),
        "--prompt",
        "the",
        "--max-tokens",
        "5",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("the"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));

    // Bad input: one line naming the problem, never a panic.
    one_line_error(
        &["llm", "eval", "--model", "missing.gguf", "--text", &t],
        "missing.gguf",
    );
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    one_line_error(
        &["llm", "eval", "--model", &s(&cut), "--text", &t],
        "cut.gguf",
    );
    one_line_error(
        &[
            "llm",
            "eval",
            "--model",
            &g,
            "--text",
            &t,
            "--context",
            "4096",
        ],
        "fewer than one window",
    );
    one_line_error(
        &[
            "llm",
            "finetune",
            "--model",
            &g,
            "--teacher",
            &g,
            "--out",
            &s(&dir.path().join("x")),
        ],
        "not an AQLM model",
    );
    one_line_error(
        &[
            "llm",
            "generate",
            "--model",
            &g,
            "--prompt",
            "hi",
            "--adapter",
            &s(&ad),
        ],
        "adapter",
    );
}
