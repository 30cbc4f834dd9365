// Runs a wasm32-wasip1 program under Node's WASI with the HOTPATH_N environment variable passed
// through: `node bench/core/run-wasi.mjs program.wasm`. Node embeds V8, the engine Envoy runs
// filters in, so this times the core's compiled wasm without Envoy around it.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const wasi = new WASI({
  version: 'preview1',
  args: ['hotpath'],
  env: process.env.HOTPATH_N ? { HOTPATH_N: process.env.HOTPATH_N } : {},
});
const module = await WebAssembly.compile(await readFile(process.argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
wasi.start(instance);
