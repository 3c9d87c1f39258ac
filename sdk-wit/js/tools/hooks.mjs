// Node module hooks for running customer functions on plain Node:
// * the bare specifier "pipeline-sdk" resolves to ../pipeline-sdk.js (inside a
//   component, the build puts pipeline-sdk.js next to the customer file),
//   "pipeline-sdk/columnar" to ../pipeline-sdk-columnar.js and "apache-arrow"
//   to the copy this package depends on (the one the build bundles);
// * .ts / .mts files are loaded with their types stripped (strip-types.mjs),
//   as the build does.
// Registered by register.mjs and run_local.mjs; needs Node >= 20.6.
import { fileURLToPath } from "node:url";
import { isTypeScript, stripTypes } from "./strip-types.mjs";

const SDK_URL = new URL("../pipeline-sdk.js", import.meta.url).href;
const COLUMNAR_URL = new URL("../pipeline-sdk-columnar.js", import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === "pipeline-sdk" || specifier === "pipeline-sdk.js") {
    return { url: SDK_URL, shortCircuit: true };
  }
  if (specifier === "pipeline-sdk/columnar") {
    return { url: COLUMNAR_URL, shortCircuit: true };
  }
  if (specifier === "apache-arrow") {
    // The SDK's own copy, as the build bundles it: one module instance for
    // the customer and pipeline-sdk/columnar, wherever the customer file is.
    return nextResolve(specifier, { ...context, parentURL: COLUMNAR_URL });
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (url.startsWith("file:") && isTypeScript(fileURLToPath(url))) {
    const { source } = await nextLoad(url, { ...context, format: "module" });
    const code = stripTypes(Buffer.from(source).toString("utf8"), fileURLToPath(url));
    return { format: "module", source: code, shortCircuit: true };
  }
  return nextLoad(url, context);
}
