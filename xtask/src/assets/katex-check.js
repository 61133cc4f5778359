// oftq xtask: render every math fragment of the narrative docs with the vendored KaTeX and report
// TeX errors. Usage: node katex-check.js <katex.min.js> <fragments.json>
// fragments.json: [{"page": "...", "tex": "...", "display": bool}, ...]
const katex = require(process.argv[2]);
const fragments = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
let bad = 0;
for (const f of fragments) {
  try {
    katex.renderToString(f.tex, { throwOnError: true, displayMode: f.display });
  } catch (e) {
    bad++;
    console.error(f.page + ": " + e.message);
  }
}
console.error("katex: " + fragments.length + " formulas, " + bad + " errors");
process.exit(bad === 0 ? 0 : 1);
