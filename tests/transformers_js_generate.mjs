// Load a `splice export` directory with transformers.js (local files only) and generate from given encoder inputs.
// Usage: node transformers_js_generate.mjs REQUEST.json  (run by tests/test_transformers_js.py)
// REQUEST: {"package_dir": the npm prefix holding node_modules/@huggingface/transformers, "model_dir": the export,
//           "auto_class": "AutoModelForVision2Seq" | ..., "options": from_pretrained's options,
//           "runs": [{"inputs": {name: {"dtype", "dims", "data"}}, "generate": generate's settings}, ...]}
// Prints one JSON line: {"version", "class", "ids": one [[...], ...] per run (the sequences, start token included)}.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const resolve = createRequire(path.join(request.package_dir, 'package.json')).resolve;
const transformers = await import(pathToFileURL(resolve('@huggingface/transformers')).href);
const { env, Tensor } = transformers;

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(request.model_dir);

const ARRAYS = { float32: Float32Array, int64: BigInt64Array };
function tensor({ dtype, dims, data }) {
    return new Tensor(dtype, ARRAYS[dtype].from(dtype === 'int64' ? data.map((x) => BigInt(x)) : data), dims);
}

const model = await transformers[request.auto_class].from_pretrained(path.basename(request.model_dir), {
    device: 'cpu',
    dtype: 'fp32',
    ...request.options,
});
const ids = [];
for (const run of request.runs) {
    const inputs = Object.fromEntries(Object.entries(run.inputs).map(([name, value]) => [name, tensor(value)]));
    const sequences = await model.generate({ ...inputs, ...run.generate });
    ids.push(sequences.tolist().map((row) => row.map(Number)));
}
console.log(JSON.stringify({ version: env.version, class: model.constructor.name, ids }));
await model.dispose();
