// Node module-resolution hooks for running customer functions on plain Node:
// the bare specifier "pipeline-sdk" resolves to ../pipeline-sdk.js (inside a
// component, the build puts pipeline-sdk.js next to the customer file).
// Registered by register.mjs; needs Node >= 20.6.
const SDK_URL = new URL("../pipeline-sdk.js", import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === "pipeline-sdk" || specifier === "pipeline-sdk.js") {
    return { url: SDK_URL, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
