// `node --import ./sdk-wit/js/tools/register.mjs my_test.js` makes
// `import { transform } from "pipeline-sdk"` work on plain Node (unit tests
// of a customer function). See sdk-wit/js/README.md.
import { register } from "node:module";

register("./hooks.mjs", import.meta.url);
