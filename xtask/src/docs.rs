//! `cargo xtask docs`: rustdoc (math via vendored KaTeX) and the narrative docs as one static site.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};
use serde::Serialize;

use crate::{fsutil, process};

const HEADER: &str = include_str!("assets/katex-header.html");
const CSS: &str = include_str!("assets/page.css");
const KATEX_CHECK: &str = include_str!("assets/katex-check.js");

/// The narrative pages, in navigation order: (source under `docs/`, title).
const PAGES: [(&str, &str); 10] = [
    ("guide.md", "User guide"),
    ("math.md", "Mathematics"),
    ("aqlm.md", "AQLM"),
    ("peft-compat.md", "PEFT compatibility"),
    ("llm.md", "A real LLM"),
    ("reliability.md", "Reliability"),
    ("bench/REPORT.md", "Benchmarks"),
    ("bench/README.md", "Benchmark method"),
    ("bench/encoder-quality.md", "Encoder quality"),
    ("verify/REPORT.md", "Verification report"),
];

/// Builds `<target dir>/doc-site/` (`target/doc-site/` unless `$CARGO_TARGET_DIR` is set).
pub(crate) fn run(root: &Path) -> Result<()> {
    let metadata = process::metadata(root)?;
    let target = &metadata.target_directory;
    let katex = root.join("docs/vendor/katex");
    if !katex.join("katex.min.js").is_file() {
        bail!(
            "{} is missing: the vendored KaTeX is part of the repository",
            katex.display()
        );
    }
    let site = target.join("doc-site");
    fsutil::remove_dir_if_exists(&site)?;

    // 1. rustdoc, warnings and missing docs as errors, KaTeX header on every page.
    let header = target.join("xtask-docs/katex-header.html");
    fsutil::write_atomic(&header, HEADER.as_bytes())?;
    let flags = [
        "-D",
        "warnings",
        "-D",
        "missing_docs",
        "--html-in-header",
        &header.to_string_lossy(),
    ]
    .join("\x1f");
    let mut cmd = process::cargo(root);
    cmd.args(["doc", "--workspace", "--no-deps"])
        .env("CARGO_ENCODED_RUSTDOCFLAGS", flags)
        .env_remove("RUSTDOCFLAGS");
    process::run(&mut cmd)?;
    let api = site.join("api");
    fsutil::copy_dir(&target.join("doc"), &api)?;
    fsutil::copy_dir(&katex, &api.join("katex"))?;
    fsutil::copy_dir(&katex, &site.join("katex"))?;

    // 2. narrative pages.
    let mut pages = Vec::new();
    let mut formulas: Vec<Formula<'_>> = Vec::new();
    for (src, title) in PAGES {
        let path = root.join("docs").join(src);
        if !path.is_file() {
            if src.starts_with("bench/") {
                eprintln!(
                    "xtask: {} not found (run `cargo xtask bench`); skipped",
                    path.display()
                );
                continue;
            }
            bail!("{} is missing", path.display());
        }
        let md = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let out = html_path(src);
        let depth = out.matches('/').count();
        let (body, math) = render_markdown_math(&md);
        formulas.extend(math.into_iter().map(|(tex, display)| Formula {
            page: src,
            tex,
            display,
        }));
        let page = page(title, &body, &"../".repeat(depth));
        fsutil::write_atomic(&site.join(&out), page.as_bytes())?;
        pages.push((out, title));
    }
    let bench = root.join("docs/bench");
    if bench.is_dir() {
        for entry in
            std::fs::read_dir(&bench).with_context(|| format!("cannot read {}", bench.display()))?
        {
            let p = entry
                .with_context(|| format!("cannot read {}", bench.display()))?
                .path();
            let wanted = matches!(p.extension().and_then(|e| e.to_str()), Some("svg" | "json"));
            if let (true, Some(name)) = (wanted, p.file_name()) {
                let dst = site.join("bench").join(name);
                std::fs::create_dir_all(site.join("bench"))
                    .with_context(|| format!("cannot create {}", site.display()))?;
                std::fs::copy(&p, &dst).with_context(|| format!("cannot copy {}", p.display()))?;
            }
        }
    }

    check_math(target, &katex, &formulas)?;

    // 3. index.
    let crates = documented_crates(&metadata, &api);
    let index = index_page(&pages, &crates);
    fsutil::write_atomic(&site.join("index.html"), index.as_bytes())?;

    // 4. every relative link of the narrative pages must resolve inside the site.
    let mut broken = Vec::new();
    for (out, _) in &pages {
        let text = std::fs::read_to_string(site.join(out))
            .with_context(|| format!("cannot read {}", site.join(out).display()))?;
        let dir = site
            .join(out)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for link in relative_links(&text) {
            if !dir.join(&link).exists() {
                broken.push(format!("{out}: {}", link.display()));
            }
        }
    }
    if !broken.is_empty() {
        bail!(
            "broken links in the narrative docs:\n  {}",
            broken.join("\n  ")
        );
    }
    eprintln!(
        "xtask: docs site at {} ({} pages, {} crates)",
        site.join("index.html").display(),
        pages.len(),
        crates.len()
    );
    Ok(())
}

/// One formula of the narrative pages, as `katex-check.js` reads it.
#[derive(Debug, Serialize)]
struct Formula<'a> {
    /// The page (under `docs/`).
    page: &'a str,
    /// The TeX source.
    tex: String,
    /// Display (`$$…$$`) rather than inline math.
    display: bool,
}

/// Renders every formula with the vendored KaTeX under `node`, failing on TeX errors (the pages
/// render at view time; this catches mistakes at build time). Skipped with a note without `node`.
fn check_math(target: &Path, katex: &Path, formulas: &[Formula<'_>]) -> Result<()> {
    if process::output_of(Command::new("node").arg("--version")).is_none() {
        eprintln!("xtask: `node` not found: math not pre-checked (it still renders at view time)");
        return Ok(());
    }
    let dir = target.join("xtask-docs");
    let script = dir.join("katex-check.js");
    let data = dir.join("formulas.json");
    fsutil::write_atomic(&script, KATEX_CHECK.as_bytes())?;
    let json = serde_json::to_string(formulas).context("serializing the formulas")?;
    fsutil::write_atomic(&data, json.as_bytes())?;
    process::run(
        Command::new("node")
            .arg(&script)
            .arg(katex.join("katex.min.js"))
            .arg(&data),
    )
    .context("TeX errors in the narrative docs")
}

/// `docs/x.md` → `x.html` (relative to the site root).
pub(crate) fn html_path(md: &str) -> String {
    match md.strip_suffix(".md") {
        Some(stem) => format!("{stem}.html"),
        None => md.to_string(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// Markdown → HTML: tables, `$…$`/`$$…$$` math as KaTeX spans, relative `.md` links → `.html`.
#[cfg(test)]
pub(crate) fn render_markdown(md: &str) -> String {
    render_markdown_math(md).0
}

/// Markdown → HTML (tables, `$…$`/`$$…$$` math as KaTeX spans, relative `.md` links → `.html`),
/// also returning every math fragment as `(tex, display)`.
pub(crate) fn render_markdown_math(md: &str) -> (String, Vec<(String, bool)>) {
    let mut math = Vec::new();
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_MATH
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_FOOTNOTES;
    let events = Parser::new_ext(md, opts).map(|ev| match ev {
        Event::InlineMath(m) => {
            math.push((m.to_string(), false));
            Event::InlineHtml(CowStr::from(format!(
                r#"<span class="math math-inline">{}</span>"#,
                escape(&m)
            )))
        }
        Event::DisplayMath(m) => {
            math.push((m.to_string(), true));
            Event::InlineHtml(CowStr::from(format!(
                r#"<span class="math math-display">{}</span>"#,
                escape(&m)
            )))
        }
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: rewrite_link(&dest_url).into(),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    (out, math)
}

/// Relative links to `.md` files point at the generated `.html` pages.
pub(crate) fn rewrite_link(url: &str) -> String {
    if url.contains("://") || url.starts_with('#') || url.starts_with("mailto:") {
        return url.to_string();
    }
    let (path, frag) = url
        .split_once('#')
        .map_or((url, None), |(p, f)| (p, Some(f)));
    let path = html_path(path);
    match frag {
        Some(f) => format!("{path}#{f}"),
        None => path,
    }
}

/// A complete page; `rel` leads back to the site root (`""` or `"../"`).
fn page(title: &str, body: &str, rel: &str) -> String {
    let nav: String = PAGES
        .iter()
        .map(|(src, t)| format!(r#"<a href="{rel}{}">{t}</a>"#, html_path(src)))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — oftq</title>
<link rel="stylesheet" href="{rel}katex/katex.min.css">
<style>{CSS}</style></head>
<body><nav><a class="home" href="{rel}index.html">oftq</a>{nav}<a href="{rel}index.html#api">API</a></nav>
<main>
{body}</main>
<script src="{rel}katex/katex.min.js"></script>
<script>
document.querySelectorAll(".math").forEach(function (e) {{
  katex.render(e.textContent, e, {{ displayMode: e.classList.contains("math-display"), throwOnError: false }});
}});
</script>
</body></html>
"#
    )
}

/// Library and binary crates of the workspace that rustdoc documented: (crate dir name, package).
fn documented_crates(metadata: &process::Metadata, api: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in &metadata.packages {
        for t in p.targets.iter().filter(|t| t.is("lib") || t.is("bin")) {
            let dir = t.name.replace('-', "_");
            if api.join(&dir).join("index.html").is_file() {
                out.push((dir, p.name.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn index_page(pages: &[(String, &str)], crates: &[(String, String)]) -> String {
    let mut body = String::from(
        "<h1>oftq</h1>\n<p>Orthogonal fine-tuning (OFT) on AQLM-quantized linear layers, in Rust, \
         numerically matched to Hugging Face PEFT 0.21.2 and aqlm 1.1.7.</p>\n<h2>Guides</h2>\n<ul>\n",
    );
    for (out, title) in pages {
        body.push_str(&format!("<li><a href=\"{out}\">{title}</a></li>\n"));
    }
    body.push_str("</ul>\n<h2 id=\"api\">API reference (rustdoc)</h2>\n<ul>\n");
    for (dir, pkg) in crates {
        body.push_str(&format!(
            "<li><a href=\"api/{dir}/index.html\"><code>{dir}</code></a> ({pkg})</li>\n"
        ));
    }
    body.push_str("</ul>\n");
    page("oftq documentation", &body, "")
}

/// Relative `href`/`src` targets of an HTML text (without fragment), for the link check.
pub(crate) fn relative_links(html: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let Some(end) = rest.find('"') else { break };
            let url = &rest[..end];
            rest = &rest[end..];
            if url.is_empty()
                || url.starts_with('#')
                || url.contains("://")
                || url.starts_with("mailto:")
            {
                continue;
            }
            let path = url.split('#').next().unwrap_or_default();
            if !path.is_empty() {
                out.push(PathBuf::from(path));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_math_tables_and_links() {
        let html = render_markdown(
            "See [math](math.md#gradients) and [x](https://a.b/c.md).\n\n\
             Inline $a<b$ and\n\n$$R = (I-Q)(I+Q)^{-1}$$\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        );
        assert!(html.contains(r#"href="math.html#gradients""#), "{html}");
        assert!(html.contains(r#"href="https://a.b/c.md""#));
        assert!(
            html.contains(r#"<span class="math math-inline">a&lt;b</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="math math-display">R = (I-Q)(I+Q)^{-1}</span>"#));
        assert!(html.contains("<table>"));
    }

    #[test]
    fn link_helpers() {
        assert_eq!(html_path("bench/REPORT.md"), "bench/REPORT.html");
        assert_eq!(rewrite_link("results.json"), "results.json");
        assert_eq!(rewrite_link("#top"), "#top");
        let links = relative_links(
            r##"<a href="a.html#x">a</a><img src="p.svg"><a href="https://x/y">y</a><a href="#z">z</a>"##,
        );
        assert_eq!(links, [PathBuf::from("a.html"), PathBuf::from("p.svg")]);
    }

    /// Every markdown page under `docs/` (but the vendored KaTeX) is a page of the site.
    #[test]
    fn every_docs_page_is_on_the_site() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("docs");
        let mut stack = vec![docs.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() && p.file_name().is_some_and(|n| n != "vendor") {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "md") {
                    let rel = p
                        .strip_prefix(&docs)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    assert!(
                        PAGES.iter().any(|(s, _)| *s == rel),
                        "docs/{rel} is not in PAGES"
                    );
                }
            }
        }
    }

    #[test]
    fn narrative_docs_render_without_broken_relative_links() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        // Every page but the generated reports, which `cargo xtask docs` checks once built.
        let generated = ["bench/REPORT.md", "verify/REPORT.md", "llm.md"];
        for (src, _) in PAGES.iter().filter(|(s, _)| !generated.contains(s)) {
            let page = root.join("docs").join(src);
            let md = std::fs::read_to_string(&page).unwrap();
            let html = render_markdown(&md);
            let dir = page.parent().unwrap();
            for link in relative_links(&html) {
                let target = link.to_string_lossy().replace(".html", ".md");
                let ok = dir.join(&target).exists()
                    || target.starts_with("bench/")
                    || target.starts_with("api/");
                assert!(ok, "{src}: broken link {}", link.display());
            }
        }
    }
}
