// node:assert/strict for the browser replica's bundle: only what the log codec uses.
function assert(condition: unknown, message?: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message ?? ""}`);
}
assert.fail = (message?: string): never => {
  throw new Error(`assertion failed: ${message ?? ""}`);
};
export default assert;
