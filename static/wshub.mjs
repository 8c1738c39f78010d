// ES module entry for wshub.js: `import { Wshub } from '/wshub.mjs'`.
// wshub.js is a plain script that sets globalThis.Wshub; importing it for its side effect works
// both in browsers and in bundlers, with no build step.
import './wshub.js';

export const Wshub = globalThis.Wshub;
export default Wshub;
