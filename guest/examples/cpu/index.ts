// cpu: a fixed CPU-bound mix, for metering and replay benchmarks. main runs every workload
// once, prints one line per workload with its checksum and a final `checksum <hex>` line,
// then returns; with nothing armed the VM ends. Each workload is also exported on its own
// (bench_hash, bench_sieve, bench_nbody, bench_fib, bench_alloc) so a benchmark can time it.
//
// Every checksum is a pure function of `n`: the output is the same on every run and host.

export { __ls_irq, __ls_run } from "../../sdk/index";
import { print } from "../../sdk/index";

// Sizes for main: about 1-3 s un-instrumented in Node 20 on a 2-core box.
const MAIN_HASH_ROUNDS: i32 = 6000; // x 64 KiB hashed
const MAIN_SIEVE_LIMIT: i32 = 12000000;
const MAIN_NBODY_STEPS: i32 = 2500000;
const MAIN_FIB_N: i32 = 37;
const MAIN_ALLOC_ROUNDS: i32 = 120000;

// ---- hashing: FNV-1a and an xxhash-style 64-bit mix over a 64 KiB buffer ----

const HASH_BUF_BYTES: i32 = 65536;
const PRIME64_1: u64 = 0x9E3779B185EBCA87;
const PRIME64_2: u64 = 0xC2B2AE3D27D4EB4F;
const PRIME64_3: u64 = 0x165667B19E3779F9;

let hashBuf: Uint8Array | null = null;

function hashBuffer(): Uint8Array {
  let b = hashBuf;
  if (b === null) {
    b = new Uint8Array(HASH_BUF_BYTES);
    let x: u32 = 0x12345678; // xorshift32 fill: deterministic contents
    for (let i = 0; i < HASH_BUF_BYTES; i++) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      b[i] = <u8>x;
    }
    hashBuf = b;
  }
  return b;
}

function fnv1a64(p: usize, len: i32, seed: u64): u64 {
  let h: u64 = 0xcbf29ce484222325 ^ seed;
  for (let i = 0; i < len; i++) {
    h ^= <u64>load<u8>(p + <usize>i);
    h *= 0x100000001b3;
  }
  return h;
}

function xxmix64(p: usize, len: i32, seed: u64): u64 {
  let acc: u64 = seed + PRIME64_1;
  const words = len >> 3;
  for (let i = 0; i < words; i++) {
    const w = load<u64>(p + (<usize>i << 3));
    acc += w * PRIME64_2;
    acc = rotl<u64>(acc, 31);
    acc *= PRIME64_1;
  }
  acc ^= acc >> 33;
  acc *= PRIME64_2;
  acc ^= acc >> 29;
  acc *= PRIME64_3;
  acc ^= acc >> 32;
  return acc;
}

/** Hashes a 64 KiB buffer `n` times (FNV-1a then an xxhash-style mix, chained). */
export function bench_hash(n: i32): i64 {
  const b = hashBuffer();
  const p = b.dataStart;
  let h: u64 = 0;
  for (let r = 0; r < n; r++) {
    // FNV over 1/16 of the buffer (byte at a time), the mix over all of it (word at a time)
    h = fnv1a64(p + <usize>((r & 15) << 12), 4096, h);
    h = xxmix64(p, HASH_BUF_BYTES, h);
  }
  return <i64>h;
}

// ---- sieve of Eratosthenes ----

/** Sieves the primes below `n`; returns count * 2^32 + (sum of primes mod 2^32). */
export function bench_sieve(n: i32): i64 {
  if (n < 2) return 0;
  const composite = new Uint8Array(n);
  let count: i64 = 0;
  let sum: u32 = 0;
  for (let i = 2; i < n; i++) {
    if (unchecked(composite[i]) == 0) {
      count++;
      sum += <u32>i;
      const ii = <i64>i * i;
      if (ii < <i64>n) {
        for (let j = <i32>ii; j < n; j += i) unchecked(composite[j] = 1);
      }
    }
  }
  return (count << 32) | <i64>sum;
}

// ---- n-body (the Computer Language Benchmarks Game's five Jovian bodies) ----

const SOLAR_MASS: f64 = 4.0 * Math.PI * Math.PI;
const DAYS_PER_YEAR: f64 = 365.24;

class Body {
  constructor(
    public x: f64, public y: f64, public z: f64,
    public vx: f64, public vy: f64, public vz: f64,
    public mass: f64,
  ) {}
}

function makeBodies(): StaticArray<Body> {
  const bodies = new StaticArray<Body>(5);
  bodies[0] = new Body(0, 0, 0, 0, 0, 0, SOLAR_MASS);
  bodies[1] = new Body(
    4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01,
    1.66007664274403694e-03 * DAYS_PER_YEAR, 7.69901118419740425e-03 * DAYS_PER_YEAR,
    -6.90460016972063023e-05 * DAYS_PER_YEAR, 9.54791938424326609e-04 * SOLAR_MASS);
  bodies[2] = new Body(
    8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01,
    -2.76742510726862411e-03 * DAYS_PER_YEAR, 4.99852801234917238e-03 * DAYS_PER_YEAR,
    2.30417297573763929e-05 * DAYS_PER_YEAR, 2.85885980666130812e-04 * SOLAR_MASS);
  bodies[3] = new Body(
    1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01,
    2.96460137564761618e-03 * DAYS_PER_YEAR, 2.37847173959480950e-03 * DAYS_PER_YEAR,
    -2.96589568540237556e-05 * DAYS_PER_YEAR, 4.36624404335156298e-05 * SOLAR_MASS);
  bodies[4] = new Body(
    1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01,
    2.68067772490389322e-03 * DAYS_PER_YEAR, 1.62824170038242295e-03 * DAYS_PER_YEAR,
    -9.51592254519715870e-05 * DAYS_PER_YEAR, 5.15138902046611451e-05 * SOLAR_MASS);
  // offset momentum
  let px: f64 = 0, py: f64 = 0, pz: f64 = 0;
  for (let i = 0; i < 5; i++) {
    const b = bodies[i];
    px += b.vx * b.mass;
    py += b.vy * b.mass;
    pz += b.vz * b.mass;
  }
  bodies[0].vx = -px / SOLAR_MASS;
  bodies[0].vy = -py / SOLAR_MASS;
  bodies[0].vz = -pz / SOLAR_MASS;
  return bodies;
}

function advance(bodies: StaticArray<Body>, dt: f64): void {
  const n = bodies.length;
  for (let i = 0; i < n; i++) {
    const bi = unchecked(bodies[i]);
    for (let j = i + 1; j < n; j++) {
      const bj = unchecked(bodies[j]);
      const dx = bi.x - bj.x;
      const dy = bi.y - bj.y;
      const dz = bi.z - bj.z;
      const d2 = dx * dx + dy * dy + dz * dz;
      const mag = dt / (d2 * Math.sqrt(d2));
      bi.vx -= dx * bj.mass * mag;
      bi.vy -= dy * bj.mass * mag;
      bi.vz -= dz * bj.mass * mag;
      bj.vx += dx * bi.mass * mag;
      bj.vy += dy * bi.mass * mag;
      bj.vz += dz * bi.mass * mag;
    }
  }
  for (let i = 0; i < n; i++) {
    const b = unchecked(bodies[i]);
    b.x += dt * b.vx;
    b.y += dt * b.vy;
    b.z += dt * b.vz;
  }
}

function energy(bodies: StaticArray<Body>): f64 {
  let e: f64 = 0;
  const n = bodies.length;
  for (let i = 0; i < n; i++) {
    const bi = bodies[i];
    e += 0.5 * bi.mass * (bi.vx * bi.vx + bi.vy * bi.vy + bi.vz * bi.vz);
    for (let j = i + 1; j < n; j++) {
      const bj = bodies[j];
      const dx = bi.x - bj.x;
      const dy = bi.y - bj.y;
      const dz = bi.z - bj.z;
      e -= (bi.mass * bj.mass) / Math.sqrt(dx * dx + dy * dy + dz * dz);
    }
  }
  return e;
}

/** Advances the five bodies `n` steps of 0.01; returns the bits of the final energy. */
export function bench_nbody(n: i32): i64 {
  const bodies = makeBodies();
  for (let i = 0; i < n; i++) advance(bodies, 0.01);
  return reinterpret<i64>(energy(bodies));
}

// ---- recursion ----

function fib(n: i32): i32 {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

/** Naive recursive Fibonacci of `n`. */
export function bench_fib(n: i32): i64 {
  return <i64>fib(n);
}

// ---- allocation: small objects, arrays and strings; a bounded live set, so the GC runs ----

class Node {
  constructor(public value: i64, public next: Node | null, public label: string) {}
}

const LIVE_SLOTS: i32 = 4096;

/** Allocates about 4 objects, an array and 2 strings per round; keeps 4096 alive at a time. */
export function bench_alloc(n: i32): i64 {
  const live = new Array<Node | null>(LIVE_SLOTS);
  let h: u64 = 0xcbf29ce484222325;
  let x: u32 = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const slot = <i32>(x & <u32>(LIVE_SLOTS - 1));
    const prev = unchecked(live[slot]);
    const label = "n" + i.toString() + ":" + (x & 0xffff).toString(16);
    const node = new Node(<i64>i * 31 + <i64>x, prev !== null && (i & 7) != 0 ? prev.next : null, label);
    const arr = new Array<i32>(0);
    for (let k = 0; k < 4 + <i32>(x & 7); k++) arr.push(<i32>x + k);
    let s: i64 = 0;
    for (let k = 0; k < arr.length; k++) s += arr[k];
    node.value += s;
    unchecked(live[slot] = new Node(node.value ^ <i64>label.length, node, label.slice(1)));
    h ^= <u64>node.value + <u64>label.length;
    h *= 0x100000001b3;
  }
  for (let i = 0; i < LIVE_SLOTS; i++) {
    let p = unchecked(live[i]);
    let depth = 0;
    while (p !== null && depth < 4) {
      h ^= <u64>p.value;
      h *= 0x100000001b3;
      p = p.next;
      depth++;
    }
  }
  return <i64>h;
}

// ---- main ----

function hex(v: i64): string {
  return (<u64>v).toString(16).padStart(16, "0");
}

export function main(): void {
  let total: u64 = 0xcbf29ce484222325;
  const results = new StaticArray<i64>(5);
  results[0] = bench_hash(MAIN_HASH_ROUNDS);
  print(`hash rounds=${MAIN_HASH_ROUNDS} checksum=${hex(results[0])}`);
  results[1] = bench_sieve(MAIN_SIEVE_LIMIT);
  print(`sieve limit=${MAIN_SIEVE_LIMIT} primes=${results[1] >> 32} checksum=${hex(results[1])}`);
  results[2] = bench_nbody(MAIN_NBODY_STEPS);
  print(`nbody steps=${MAIN_NBODY_STEPS} energy=${reinterpret<f64>(results[2])} checksum=${hex(results[2])}`);
  results[3] = bench_fib(MAIN_FIB_N);
  print(`fib n=${MAIN_FIB_N} value=${results[3]} checksum=${hex(results[3])}`);
  results[4] = bench_alloc(MAIN_ALLOC_ROUNDS);
  print(`alloc rounds=${MAIN_ALLOC_ROUNDS} checksum=${hex(results[4])}`);
  for (let i = 0; i < 5; i++) {
    total ^= <u64>results[i];
    total *= 0x100000001b3;
  }
  print(`checksum ${hex(<i64>total)}`);
}
