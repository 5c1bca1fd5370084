// The metering pass over binaryen IR. See docs/metering.md for the model; in short:
//
// - The count lives in an i64 `c = icount - deadline` (negative until the deadline is reached).
//   Every defined function f gets a twin `f$ls` that takes c as an extra last parameter and
//   returns it as an extra last result, so the count stays in registers across guest-to-guest
//   calls (wasmtime keeps fuel in a variable the same way; this is what makes recursion cheap).
//   f itself becomes a wrapper with the original signature, for the host and the table:
//   it loads c from the exported global `__ls_fuel`, calls f$ls, and stores c back.
// - Each straight-line segment is charged at its start with one `c += cost`, so the count at any
//   point includes the whole segment containing it. Segments start at: function entry, loop
//   header, each arm of an if, the join after an if, the end of a block that is a branch target,
//   and after a br_if (its fall-through). Calls do not end a segment.
// - Checkpoints at function entry and at every loop header: after charging,
//   `if (c >= 0) { __ls_fuel = c; lockstep.checkpoint(); c = __ls_fuel }`. One compare.
// - Before every call that leaves the threaded convention (imports, call_indirect) the local is
//   flushed to `__ls_fuel`, and reloaded after, so the global is exact at every import call and
//   the host may move the deadline during one.
// - memory.grow becomes a call to `lockstep.memory_grow`; NaNs are canonicalized where their
//   bits become observable (or, in "eager" mode, after every NaN-producing operator).

import { B, binaryen, type Expr, type ExportInfoFull, type FunctionInfoFull, type GlobalInfoFull, type MemoryInfoFull, type TableInfoFull, type Type } from "./binaryen.js";
import {
  ALLOWED_IMPORTS, CHECKPOINT_IMPORT, CHECKPOINT_UNWIND_IMPORT, FUEL_EXPORT, GLOBAL_EXPORT_PREFIX, INJECTED_MODULE,
  MEMORY_EXPORT, MEMORY_GROW_IMPORT, type ValType,
} from "./abi.js";
import {
  CANONICAL_NAN_F32_BITS, CANONICAL_NAN_F64_BITS, COST_FUNCTION_ENTRY, COST_LOOP_HEADER,
  COST_OPERATOR, COST_STRUCTURAL, NAN_BINARY_OPS, NAN_UNARY_OPS,
} from "./cost.js";
import { assert, InstrumentError } from "./errors.js";
import { forEachChild } from "./walk.js";

/** Features of the output module: the accepted input features plus multi-value (threaded c). */
const OUTPUT_FEATURES =
  binaryen.Features.MutableGlobals |
  binaryen.Features.NontrappingFPToInt |
  binaryen.Features.SignExt |
  binaryen.Features.BulkMemory |
  binaryen.Features.BulkMemoryOpt |
  binaryen.Features.ReferenceTypes |
  binaryen.Features.CallIndirectOverlong |
  binaryen.Features.Multivalue;

export interface MeterOptions {
  /**
   * Run after instrumenting, in order: binaryen pass names, or "-O" for binaryen's default
   * optimization pipeline at `optimizeLevel`/`shrinkLevel`. [] for none.
   */
  passes: readonly string[];
  /** binaryen optimize level used by those passes (inlining thresholds etc.). */
  optimizeLevel: number;
  shrinkLevel: number;
  /**
   * How NaN bit patterns are made deterministic (docs/metering.md): "eager" canonicalizes the
   * result of every NaN-producing operator; "sinks" canonicalizes where bits become observable
   * (stores, reinterpret, copysign's sign, float globals, values handed to the host).
   * Both make memory, globals and host-visible values identical on every CPU. "off": measurements only.
   */
  nan: "eager" | "sinks" | "off";
  /** Run binaryen's validator on the IR before optimizing (debugging the pass). */
  validateIr: boolean;
  /**
   * Which checkpoints can unwind the stack (docs/snapshots.md). "loops": loop headers call
   * `checkpoint_unwind` and binaryen's asyncify instruments every function that can reach it,
   * so the host can snapshot mid-computation; function entries keep the plain `checkpoint`.
   * "none": no asyncify, every checkpoint is plain (snapshots only between export calls).
   */
  unwind: "loops" | "none";
  /** Passes run after asyncify (only with unwind), as `passes`. */
  unwindPasses: readonly string[];
}

export interface MeteredGlobal {
  exportName: string;
  type: ValType;
}

export interface MeterOutput {
  wasm: Uint8Array;
  globals: MeteredGlobal[];
}

interface Segment {
  /** The i64.consts holding this segment's cost, patched once the cost is known. */
  costConsts: Expr[];
  cost: number;
  /** Starts at a checkpoint (function entry, loop header): must charge at least 1. */
  checkpoint: boolean;
}

/** Stand-in for "no segment": code after an unconditional branch never runs, costs nothing. */
const DEAD: Segment = { costConsts: [], cost: 0, checkpoint: false };

type Callee =
  | { kind: "import" }
  | { kind: "defined"; threadedName: string; results: Type; threadedResults: Type };

interface ModuleContext {
  module: binaryen.Module;
  fuelGlobal: string;
  checkpointFn: string;
  /** Loop headers' checkpoint: checkpointUnwindFn with unwind "loops", else checkpointFn. */
  loopCheckpointFn: string;
  memoryGrowFn: string;
  callees: Map<string, Callee>;
  nan: MeterOptions["nan"];
  /** Functions the host or the table reach by their original signature: they keep a wrapper. */
  referenced: Set<string>;
}

function valTypeName(type: Type): ValType | null {
  switch (type) {
    case binaryen.i32: return "i32";
    case binaryen.i64: return "i64";
    case binaryen.f32: return "f32";
    case binaryen.f64: return "f64";
    default: return null;
  }
}

function signatureText(params: readonly string[], results: readonly string[]): string {
  return `(${params.join(", ")}) -> (${results.join(", ")})`;
}

function freshName(base: string, taken: (name: string) => boolean): string {
  if (!taken(base)) return base;
  for (let suffix = 1; suffix < 1_000_000; suffix++) {
    const name = `${base}_${suffix}`;
    if (!taken(name)) return name;
  }
  assert(false, `no fresh name for ${base}`);
}

/** Reads the module's interface and refuses what the ABI does not allow. */
function checkInterface(module: binaryen.Module): void {
  if (module.getStart() !== 0) {
    throw new InstrumentError(
      "WASM_START_FUNCTION",
      "module has a start function, which would run guest code during instantiation; build with `asc --exportStart _start`",
    );
  }

  for (let i = 0; i < module.getNumFunctions(); i++) {
    const info = binaryen.getFunctionInfo(module.getFunctionByIndex(i)) as FunctionInfoFull;
    if (info.module === "") continue;
    const qualified = `${info.module}.${info.base}`;
    if (info.module === INJECTED_MODULE && (info.base === CHECKPOINT_IMPORT || info.base === CHECKPOINT_UNWIND_IMPORT || info.base === MEMORY_GROW_IMPORT)) {
      throw new InstrumentError("WASM_RESERVED_IMPORT", `import "${qualified}" is added by the instrumentation; the guest must not import it`);
    }
    const expected = ALLOWED_IMPORTS.get(info.module)?.get(info.base);
    if (expected === undefined) throw new InstrumentError("WASM_UNKNOWN_IMPORT", `unknown import "${qualified}"`);
    const params = binaryen.expandType(info.params).map((t) => valTypeName(t) ?? `type#${t}`);
    const results = binaryen.expandType(info.results).map((t) => valTypeName(t) ?? `type#${t}`);
    const actual = signatureText(params, results);
    const wanted = signatureText(expected.params, expected.results);
    if (actual !== wanted) {
      throw new InstrumentError("WASM_IMPORT_SIGNATURE", `import "${qualified}" has signature ${actual}, the ABI says ${wanted}`);
    }
  }
  for (let i = 0; i < module.getNumGlobals(); i++) {
    const info = binaryen.getGlobalInfo(module.getGlobalByIndex(i)) as GlobalInfoFull;
    if (info.module !== "") throw new InstrumentError("WASM_UNKNOWN_IMPORT", `unknown import "${info.module}.${info.base}" (a global)`);
  }
  for (let i = 0; i < module.getNumTables(); i++) {
    const info = binaryen.getTableInfo(module.getTableByIndex(i)) as TableInfoFull;
    if (info.module !== "") throw new InstrumentError("WASM_UNKNOWN_IMPORT", `unknown import "${info.module}.${info.base}" (a table)`);
  }
  if (module.hasMemory()) {
    const memory = module.getMemoryInfo() as MemoryInfoFull;
    if (memory.module !== "") {
      throw new InstrumentError("WASM_UNKNOWN_IMPORT", `unknown import "${memory.module}.${memory.base}" (a memory: the guest must define and export its own)`);
    }
  }

  let memoryExported = false;
  for (let i = 0; i < module.getNumExports(); i++) {
    const info = binaryen.getExportInfo(module.getExportByIndex(i)) as ExportInfoFull;
    if (info.name === FUEL_EXPORT || info.name.startsWith(GLOBAL_EXPORT_PREFIX)) {
      throw new InstrumentError("WASM_RESERVED_EXPORT", `export "${info.name}" is reserved for the instrumentation`);
    }
    if (info.name === MEMORY_EXPORT && info.kind === binaryen.ExternalMemory) memoryExported = true;
  }
  if (!memoryExported) throw new InstrumentError("WASM_NO_MEMORY", `module does not export a memory named "${MEMORY_EXPORT}"`);
}

/** Instruments one function body into its threaded twin. */
class FunctionMeter {
  private readonly module: binaryen.Module;
  private readonly paramCount: number;
  /** Local index of c: the extra parameter, right after the original parameters. */
  private readonly counter: number;
  /** Types of the twin's vars: the original vars (shifted by one index), then our temporaries. */
  readonly vars: Type[];
  private readonly branchTargets = new Set<string>();
  /** Every label in the function, so that ours are fresh. */
  private readonly labels = new Set<string>();
  private labelCount = 0;
  private readonly segments: Segment[] = [];
  private segment: Segment = DEAD;
  private readonly nanTemps = new Map<Type, number>();

  constructor(private readonly ctx: ModuleContext, private readonly info: FunctionInfoFull) {
    this.module = ctx.module;
    this.paramCount = binaryen.expandType(info.params).length;
    this.counter = this.paramCount;
    this.vars = [...info.vars];
  }

  /** Returns the twin's body: (results..., c) = body(params..., c). */
  run(): Expr {
    const m = this.module;
    this.collectBranchTargets(this.info.body);
    const entry = this.openSegment(COST_FUNCTION_ENTRY, true);
    const entryCharge = this.charge(entry);
    const body = this.visit(this.info.body);
    const results = this.info.results;
    let end: Expr;
    if (results === binaryen.none) {
      end = m.block(null, [body, this.getCounter()], binaryen.auto);
    } else {
      end = m.tuple.make([body, this.getCounter()]);
    }
    // Every segment is closed now: patch the costs into their constants.
    for (const segment of this.segments) {
      // The count strictly increases between two checkpoints only if each charges before checking.
      assert(!segment.checkpoint || segment.cost >= 1, "a checkpoint's segment charges at least 1");
      assert(Number.isSafeInteger(segment.cost) && segment.cost >= 0, "segment cost is a small non-negative integer");
      for (const costConst of segment.costConsts) B.Const.setValueI64(costConst, BigInt(segment.cost));
    }
    return m.block(null, [entryCharge, this.checkpoint(), end], binaryen.auto);
  }

  // --- counter code -------------------------------------------------------------------------

  private getCounter(): Expr {
    return this.module.local.get(this.counter, binaryen.i64);
  }

  private openSegment(initialCost: number, checkpoint = false): Segment {
    const segment: Segment = { costConsts: [], cost: initialCost, checkpoint };
    this.segments.push(segment);
    this.segment = segment;
    return segment;
  }

  private cost(amount: number): void {
    if (this.segment !== DEAD) this.segment.cost += amount;
  }

  /** `i64.const cost(segment)`, patched when the function is done. */
  private costOf(segment: Segment): Expr {
    const costConst = this.module.i64.const(0n);
    segment.costConsts.push(costConst);
    return costConst;
  }

  /** `c += cost(segment)`. */
  private charge(segment: Segment): Expr {
    const m = this.module;
    return m.local.set(this.counter, m.i64.add(this.getCounter(), this.costOf(segment)));
  }

  private freshLabel(kind: string): string {
    // Each try skips one label the function already has: bounded by their number.
    for (let tries = 0; tries <= this.labels.size; tries++) {
      const label = `__ls_${kind}${this.labelCount++}`;
      if (!this.labels.has(label)) return label;
    }
    assert(false, "a fresh label exists");
  }

  private flush(): Expr {
    return this.module.global.set(this.ctx.fuelGlobal, this.getCounter());
  }

  private reload(): Expr {
    const m = this.module;
    return m.local.set(this.counter, m.global.get(this.ctx.fuelGlobal, binaryen.i64));
  }

  private isDue(): Expr {
    const m = this.module;
    return m.i64.ge_s(this.getCounter(), m.i64.const(0n));
  }

  /**
   * The host call of a delivery point. The host must return with the deadline in the future
   * (`__ls_fuel` < 0): a loop's checkpoint re-enters the header and checks again, so a deadline
   * left in the past would call the host at the same count forever. The trap turns that host bug
   * into an immediate error instead of a livelock.
   */
  private callCheckpoint(checkpointFn: string): Expr[] {
    const m = this.module;
    return [
      this.flush(),
      m.call(checkpointFn, [], binaryen.none),
      this.reload(),
      m.if(this.isDue(), m.unreachable()),
    ];
  }

  /** The function-entry delivery point: one signed compare against zero, the host call on the cold side. */
  private checkpoint(): Expr {
    const m = this.module;
    return m.if(this.isDue(), m.block(null, this.callCheckpoint(this.ctx.checkpointFn), binaryen.none));
  }

  private addLocal(type: Type): number {
    assert(type !== binaryen.none && type !== binaryen.unreachable, "temporary of a concrete type");
    this.vars.push(type);
    return this.paramCount + 1 + this.vars.length - 1;
  }

  /** Starts a new segment right after `expr` completes normally (a join or a fall-through). */
  private continueAfter(expr: Expr): Expr {
    const m = this.module;
    const type = binaryen.getExpressionType(expr);
    assert(type !== binaryen.unreachable, "continuation after an expression that never completes");
    const segment = this.openSegment(0);
    if (type === binaryen.none) return m.block(null, [expr, this.charge(segment)], binaryen.none);
    const temp = this.addLocal(type);
    return m.block(null, [m.local.set(temp, expr), this.charge(segment), m.local.get(temp, type)], type);
  }

  private prependCharge(segment: Segment, expr: Expr): Expr {
    return this.module.block(null, [this.charge(segment), expr], binaryen.auto);
  }

  /**
   * A call that leaves the threaded convention (import or call_indirect): the global must hold c
   * when the callee runs, and the callee may change it. When an argument could itself move c
   * (it contains a call or a segment boundary), arguments are evaluated into temporaries first so
   * that the flush sees the final value.
   */
  private externalCall(args: Expr[], argsTouchCounter: boolean, makeCall: (args: Expr[]) => Expr, type: Type): Expr {
    const m = this.module;
    const before: Expr[] = [];
    let callArgs = args;
    if (argsTouchCounter) {
      callArgs = args.map((arg) => {
        const argType = binaryen.getExpressionType(arg);
        const temp = this.addLocal(argType);
        before.push(m.local.set(temp, arg));
        return m.local.get(temp, argType);
      });
    }
    before.push(this.flush());
    const call = makeCall(callArgs);
    if (type === binaryen.none) return m.block(null, [...before, call, this.reload()], binaryen.none);
    const temp = this.addLocal(type);
    return m.block(null, [...before, m.local.set(temp, call), this.reload(), m.local.get(temp, type)], type);
  }

  /**
   * In "sinks" mode, canonicalizes the float operand of `parent` that `get` reads: a point where
   * a NaN's bits leave the float domain (memory, an integer, a sign, a global, the host).
   */
  private sink(parent: Expr, get: (e: Expr) => Expr, set: (e: Expr, v: Expr) => void): void {
    if (this.ctx.nan !== "sinks") return;
    const operand = get(parent);
    const type = binaryen.getExpressionType(operand);
    if (type !== binaryen.f32 && type !== binaryen.f64) return;
    if (bitDeterministic(operand)) return;
    set(parent, this.canonicalizeNaN(operand, type));
  }

  /** Canonicalizes float arguments of a call into the host (sinks mode). */
  private sinkArgs(args: Expr[]): Expr[] {
    if (this.ctx.nan !== "sinks") return args;
    return args.map((arg) => {
      const type = binaryen.getExpressionType(arg);
      if ((type !== binaryen.f32 && type !== binaryen.f64) || bitDeterministic(arg)) return arg;
      return this.canonicalizeNaN(arg, type);
    });
  }

  private canonicalizeNaN(expr: Expr, type: Type): Expr {
    let temp = this.nanTemps.get(type);
    if (temp === undefined) {
      temp = this.addLocal(type);
      this.nanTemps.set(type, temp);
    }
    // One temporary per type suffices: a nested use completes before the outer tee.
    return canonicalizeNaN(this.module, expr, type, temp);
  }

  // --- the walk -----------------------------------------------------------------------------

  private collectBranchTargets(expr: Expr): void {
    const id = binaryen.getExpressionId(expr);
    if (id === binaryen.BlockId) this.labels.add(B.Block.getName(expr) ?? "");
    if (id === binaryen.LoopId) this.labels.add(B.Loop.getName(expr) ?? "");
    if (id === binaryen.BreakId) this.branchTargets.add(B.Break.getName(expr));
    if (id === binaryen.SwitchId) {
      for (const name of B.Switch.getNames(expr)) this.branchTargets.add(name);
      this.branchTargets.add(B.Switch.getDefaultName(expr));
    }
    forEachChild(expr, (child) => {
      this.collectBranchTargets(child);
      return child;
    });
  }

  private remapLocal(index: number): number {
    // The counter parameter is inserted at index paramCount: vars move up by one.
    return index < this.paramCount ? index : index + 1;
  }

  /**
   * Visits `expr` in execution order, charging its operators to the current segment, and returns
   * the expression to put in its place (itself, or a wrapper of the same type).
   */
  private visit(expr: Expr): Expr {
    const m = this.module;
    const id = binaryen.getExpressionId(expr);
    const type = binaryen.getExpressionType(expr);
    if (binaryen.expandType(type).length > 1) {
      // wabt accepts multi-value whatever its flag says (it is standard now); binaryen models it with tuples.
      throw new InstrumentError("WASM_UNSUPPORTED_FEATURE", "module uses multi-value (blocks or functions with several results)");
    }
    switch (id) {
      case binaryen.BlockId: {
        this.cost(COST_STRUCTURAL);
        forEachChild(expr, (child) => this.visit(child));
        const name = B.Block.getName(expr);
        if (name && this.branchTargets.has(name)) {
          // A branch target: control arrives here from elsewhere, a new segment starts.
          if (type === binaryen.unreachable) {
            this.segment = DEAD;
            return expr;
          }
          return this.continueAfter(expr);
        }
        return expr;
      }
      case binaryen.LoopId:
        return this.visitLoop(expr, type);
      case binaryen.IfId: {
        B.If.setCondition(expr, this.visit(B.If.getCondition(expr)));
        this.cost(COST_OPERATOR);
        const thenSegment = this.openSegment(0);
        B.If.setIfTrue(expr, this.prependCharge(thenSegment, this.visit(B.If.getIfTrue(expr))));
        const ifFalse = B.If.getIfFalse(expr);
        if (ifFalse !== 0) {
          const elseSegment = this.openSegment(0);
          B.If.setIfFalse(expr, this.prependCharge(elseSegment, this.visit(ifFalse)));
        }
        if (type === binaryen.unreachable) {
          this.segment = DEAD;
          return expr;
        }
        return this.continueAfter(expr);
      }
      case binaryen.BreakId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        if (B.Break.getCondition(expr) === 0) {
          this.segment = DEAD;
          return expr;
        }
        if (type === binaryen.unreachable) return expr; // its operands never complete: never runs
        return this.continueAfter(expr); // br_if: the fall-through is a new segment
      }
      case binaryen.SwitchId:
      case binaryen.UnreachableId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        this.segment = DEAD;
        return expr;
      }
      case binaryen.ReturnId: {
        const value = B.Return.getValue(expr);
        const visited = value === 0 ? 0 : this.visit(value);
        this.cost(COST_OPERATOR);
        this.segment = DEAD;
        // The counter is read after the value is computed: the value's calls have moved it.
        return m.return(visited === 0 ? this.getCounter() : m.tuple.make([visited, this.getCounter()]));
      }
      case binaryen.CallId:
        return this.visitCall(expr, type);
      case binaryen.CallIndirectId:
        return this.visitCallIndirect(expr, type);
      case binaryen.MemoryGrowId: {
        const delta = B.MemoryGrow.getDelta(expr);
        const touches = touchesCounter(delta, this.branchTargets);
        const visited = this.visit(delta);
        this.cost(COST_OPERATOR);
        if (type === binaryen.unreachable) {
          B.MemoryGrow.setDelta(expr, visited);
          return expr;
        }
        return this.externalCall([visited], touches, (args) => m.call(this.ctx.memoryGrowFn, args, binaryen.i32), binaryen.i32);
      }
      case binaryen.LocalGetId: {
        B.LocalGet.setIndex(expr, this.remapLocal(B.LocalGet.getIndex(expr)));
        this.cost(COST_OPERATOR);
        return expr;
      }
      case binaryen.LocalSetId: {
        B.LocalSet.setIndex(expr, this.remapLocal(B.LocalSet.getIndex(expr)));
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        return expr;
      }
      case binaryen.StoreId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        this.sink(expr, B.Store.getValue, B.Store.setValue);
        return expr;
      }
      case binaryen.GlobalSetId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        this.sink(expr, B.GlobalSet.getValue, B.GlobalSet.setValue);
        return expr;
      }
      case binaryen.UnaryId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        const op = B.Unary.getOp(expr);
        if (op === binaryen.ReinterpretFloat32 || op === binaryen.ReinterpretFloat64) this.sink(expr, B.Unary.getValue, B.Unary.setValue);
        if (this.ctx.nan === "eager" && NAN_UNARY_OPS.has(op) && type !== binaryen.unreachable) return this.canonicalizeNaN(expr, type);
        return expr;
      }
      case binaryen.BinaryId: {
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        const op = B.Binary.getOp(expr);
        // copysign(x, y) moves y's sign bit into a result that need not be a NaN.
        if (op === binaryen.CopySignFloat32 || op === binaryen.CopySignFloat64) this.sink(expr, B.Binary.getRight, B.Binary.setRight);
        if (this.ctx.nan === "eager" && NAN_BINARY_OPS.has(op) && type !== binaryen.unreachable) return this.canonicalizeNaN(expr, type);
        return expr;
      }
      default: {
        // Straight-line operators: operands first, then the operator itself.
        forEachChild(expr, (child) => this.visit(child));
        this.cost(COST_OPERATOR);
        return expr;
      }
    }
  }

  /**
   * The header: every arrival (fall-in or back edge) charges, then checks. The host call is kept
   * out of the loop body, because a call anywhere in a loop, even one never taken, makes V8's
   * TurboFan spill the loop's live values around every iteration and give up unrolling (measured
   * 2.6x on an FNV loop, against 1.02x with the call outside). A due checkpoint leaves the loop,
   * calls the host, and re-enters at the header, which charges again: the handler takes the
   * header's cost back first, so the count is as if the loop had never been left.
   *
   *   (block $done (result T)
   *     (loop $reenter
   *       (block $due
   *         (br $done (loop $L (result T)
   *           (c += header) (br_if $due (c >= 0)) BODY)))
   *       (__ls_fuel = c) (call checkpoint) (c = __ls_fuel) (if (c >= 0) unreachable)
   *       (c -= header) (br $reenter)))
   */
  private visitLoop(expr: Expr, type: Type): Expr {
    const m = this.module;
    const header = this.openSegment(COST_LOOP_HEADER, true);
    const body = this.visit(B.Loop.getBody(expr));
    // Leaving the loop by falling off its end continues the body's last segment.
    const due = this.freshLabel("due");
    const reenter = this.freshLabel("reenter");
    const done = this.freshLabel("done");
    B.Loop.setBody(expr, m.block(null, [this.charge(header), m.br(due, this.isDue()), body], binaryen.auto));
    let exit: Expr;
    if (type === binaryen.unreachable) exit = expr;
    else if (type === binaryen.none) exit = m.block(null, [expr, m.br(done)], binaryen.auto);
    else exit = m.br(done, undefined, expr);
    const handler = [
      m.block(due, [exit], binaryen.none),
      ...this.callCheckpoint(this.ctx.loopCheckpointFn),
      m.local.set(this.counter, m.i64.sub(this.getCounter(), this.costOf(header))),
      m.br(reenter),
    ];
    return m.block(done, [m.loop(reenter, m.block(null, handler, binaryen.auto))], type === binaryen.unreachable ? binaryen.auto : type);
  }

  private visitCall(expr: Expr, type: Type): Expr {
    const m = this.module;
    assert(!B.Call.isReturn(expr), "tail calls are refused before instrumenting");
    const target = B.Call.getTarget(expr);
    const callee = this.ctx.callees.get(target);
    assert(callee !== undefined, `call to unknown function ${target}`);
    const count = B.Call.getNumOperands(expr);
    let touches = false;
    if (callee.kind === "import") {
      for (let i = 0; i < count; i++) touches ||= touchesCounter(B.Call.getOperandAt(expr, i), this.branchTargets);
    }
    const args: Expr[] = [];
    for (let i = 0; i < count; i++) {
      const visited = this.visit(B.Call.getOperandAt(expr, i));
      B.Call.setOperandAt(expr, i, visited);
      args.push(visited);
    }
    this.cost(COST_OPERATOR);
    if (callee.kind === "import") {
      // An operand never completes: the call never happens; leave it be (it stays valid).
      if (type === binaryen.unreachable) return expr;
      return this.externalCall(this.sinkArgs(args), touches, (callArgs) => m.call(target, callArgs, type), type);
    }

    // Threaded: c goes in as the last argument (read after the other arguments ran) and comes
    // back as the last result. Calls that never happen are retargeted too: the original
    // function may not survive (it is kept only as a wrapper for the host and the table).
    const call = m.call(callee.threadedName, [...args, this.getCounter()], callee.threadedResults);
    if (type === binaryen.unreachable) return call;
    if (type === binaryen.none) return m.local.set(this.counter, call);
    const pair = this.addLocal(callee.threadedResults);
    return m.block(
      null,
      [
        m.local.set(pair, call),
        m.local.set(this.counter, m.tuple.extract(m.local.get(pair, callee.threadedResults), 1)),
        m.tuple.extract(m.local.get(pair, callee.threadedResults), 0),
      ],
      type,
    );
  }

  private visitCallIndirect(expr: Expr, type: Type): Expr {
    const m = this.module;
    assert(!B.CallIndirect.isReturn(expr), "tail calls are refused before instrumenting");
    const count = B.CallIndirect.getNumOperands(expr);
    let touches = touchesCounter(B.CallIndirect.getTarget(expr), this.branchTargets);
    for (let i = 0; i < count; i++) touches ||= touchesCounter(B.CallIndirect.getOperandAt(expr, i), this.branchTargets);
    const args: Expr[] = [];
    for (let i = 0; i < count; i++) {
      const visited = this.visit(B.CallIndirect.getOperandAt(expr, i));
      B.CallIndirect.setOperandAt(expr, i, visited);
      args.push(visited);
    }
    const target = this.visit(B.CallIndirect.getTarget(expr)); // evaluated after the arguments
    B.CallIndirect.setTarget(expr, target);
    this.cost(COST_OPERATOR);
    if (type === binaryen.unreachable) return expr;
    // The table holds the wrappers (original signatures): they read and write the global.
    const table = B.CallIndirect.getTable(expr);
    const params = B.CallIndirect.getParams(expr);
    const results = B.CallIndirect.getResults(expr);
    // The table may hold imports: float arguments may reach the host.
    return this.externalCall(
      [...this.sinkArgs(args), target],
      touches,
      (callArgs) => m.call_indirect(table, callArgs[callArgs.length - 1]!, callArgs.slice(0, -1), params, results),
      type,
    );
  }
}

/**
 * Could evaluating `expr` move the counter (a call, memory.grow, or a segment boundary)? Used to
 * decide whether an import's arguments may be evaluated after the flush. Conservative.
 */
function touchesCounter(expr: Expr, branchTargets: ReadonlySet<string>): boolean {
  const id = binaryen.getExpressionId(expr);
  switch (id) {
    case binaryen.CallId:
    case binaryen.CallIndirectId:
    case binaryen.MemoryGrowId:
    case binaryen.IfId:
    case binaryen.LoopId:
    case binaryen.BreakId:
    case binaryen.SwitchId:
      return true;
    case binaryen.BlockId: {
      const name = B.Block.getName(expr);
      if (name && branchTargets.has(name)) return true;
      break;
    }
    default:
      break;
  }
  let touches = false;
  forEachChild(expr, (child) => {
    touches ||= touchesCounter(child, branchTargets);
    return child;
  });
  return touches;
}

/** `x != x ? canonical NaN : x`, with `temp` (a local of the float type) holding x. */
function canonicalizeNaN(m: binaryen.Module, expr: Expr, type: Type, temp: number): Expr {
  assert(type === binaryen.f32 || type === binaryen.f64, "canonicalize a float");
  // select evaluates ifTrue, ifFalse, then the condition: the tee runs before the compare reads temp.
  const isNaN = type === binaryen.f32
    ? m.f32.ne(m.local.get(temp, type), m.local.get(temp, type))
    : m.f64.ne(m.local.get(temp, type), m.local.get(temp, type));
  const canonical = type === binaryen.f32 ? m.f32.const_bits(CANONICAL_NAN_F32_BITS) : m.f64.const_bits(CANONICAL_NAN_F64_BITS);
  return m.select(isNaN, canonical, m.local.tee(temp, expr, type));
}

/**
 * Are the bits of this float expression the same on every CPU, NaN or not? Loads and constants
 * are (memory and code are deterministic), and so are conversions from integers (never NaN).
 * Anything computed, or read from a local, might hold a hardware-chosen NaN.
 */
function bitDeterministic(expr: Expr): boolean {
  switch (binaryen.getExpressionId(expr)) {
    case binaryen.LoadId:
    case binaryen.ConstId:
      return true;
    case binaryen.UnaryId:
      switch (B.Unary.getOp(expr)) {
        case binaryen.ConvertSInt32ToFloat32: case binaryen.ConvertSInt32ToFloat64:
        case binaryen.ConvertUInt32ToFloat32: case binaryen.ConvertUInt32ToFloat64:
        case binaryen.ConvertSInt64ToFloat32: case binaryen.ConvertSInt64ToFloat64:
        case binaryen.ConvertUInt64ToFloat32: case binaryen.ConvertUInt64ToFloat64:
        case binaryen.ReinterpretInt32: case binaryen.ReinterpretInt64:
          return true;
        default:
          return false;
      }
    default:
      return false;
  }
}

/** Functions reachable other than by a direct call: exported, or in an element segment (the table). */
function referencedFunctions(module: binaryen.Module): Set<string> {
  const referenced = new Set<string>();
  for (let i = 0; i < module.getNumExports(); i++) {
    const info = binaryen.getExportInfo(module.getExportByIndex(i)) as ExportInfoFull;
    if (info.kind === binaryen.ExternalFunction) referenced.add(info.value);
  }
  for (let i = 0; i < module.getNumElementSegments(); i++) {
    const segment = module.getElementSegmentByIndex(i);
    // Passive segments reach a table only through table.init, which is refused (walk.ts).
    // (getElementSegmentInfo throws a C++ exception on them: it reads their missing offset.)
    if (B._BinaryenElementSegmentIsPassive(segment)) continue;
    const info = binaryen.getElementSegmentInfo(segment) as binaryen.ElementSegmentInfo & { data: string[] };
    for (const name of info.data) referenced.add(name);
  }
  return referenced;
}

/**
 * Instruments a module binaryen can read (wabt has validated it and checked its features).
 * Throws InstrumentError for refusals found on the way.
 */
export function meter(input: Uint8Array, options: MeterOptions): MeterOutput {
  const module = binaryen.readBinary(input);
  try {
    module.setFeatures(OUTPUT_FEATURES);
    return meterModule(module, options);
  } catch (error) {
    if (error instanceof Error) throw error;
    // binaryen.js lets C++ exceptions escape as opaque objects: always our misuse of its API.
    throw new Error(`instrument: binaryen threw a C++ exception (${Object.prototype.toString.call(error)})`);
  } finally {
    module.dispose();
  }
}

function meterModule(module: binaryen.Module, options: MeterOptions): MeterOutput {
  checkInterface(module);

  // The guest's mutable globals, in index order, before we add ours.
  const globals: MeteredGlobal[] = [];
  const globalCount = module.getNumGlobals();
  for (let index = 0; index < globalCount; index++) {
    const info = binaryen.getGlobalInfo(module.getGlobalByIndex(index)) as GlobalInfoFull;
    if (!info.mutable) continue;
    const type = valTypeName(info.type);
    assert(type !== null, "globals of accepted modules are numeric or references");
    const exportName = `${GLOBAL_EXPORT_PREFIX}${index}`;
    module.addGlobalExport(info.name, exportName);
    globals.push({ exportName, type });
  }

  const fuelGlobal = freshName(FUEL_EXPORT, (n) => module.getGlobal(n) !== 0);
  module.addGlobal(fuelGlobal, binaryen.i64, true, module.i64.const(0n));
  module.addGlobalExport(fuelGlobal, FUEL_EXPORT);

  const functionTaken = (n: string): boolean => module.getFunction(n) !== 0;
  const checkpointFn = freshName("__ls_checkpoint", functionTaken);
  module.addFunctionImport(checkpointFn, INJECTED_MODULE, CHECKPOINT_IMPORT, binaryen.none, binaryen.none);
  let loopCheckpointFn = checkpointFn;
  if (options.unwind === "loops") {
    loopCheckpointFn = freshName("__ls_checkpoint_unwind", functionTaken);
    module.addFunctionImport(loopCheckpointFn, INJECTED_MODULE, CHECKPOINT_UNWIND_IMPORT, binaryen.none, binaryen.none);
  }
  const memoryGrowFn = freshName("__ls_memory_grow", functionTaken);
  module.addFunctionImport(memoryGrowFn, INJECTED_MODULE, MEMORY_GROW_IMPORT, binaryen.i32, binaryen.i32);

  // Name every threaded twin before rewriting any body: calls may go forward.
  const callees = new Map<string, Callee>();
  const defined: FunctionInfoFull[] = [];
  for (let i = 0; i < module.getNumFunctions(); i++) {
    const info = binaryen.getFunctionInfo(module.getFunctionByIndex(i)) as FunctionInfoFull;
    if (info.module !== "") {
      callees.set(info.name, { kind: "import" });
      continue;
    }
    defined.push(info);
  }
  for (const info of defined) {
    if (binaryen.expandType(info.results).length > 1) {
      throw new InstrumentError("WASM_UNSUPPORTED_FEATURE", "module uses multi-value (blocks or functions with several results)");
    }
  }
  const ctx: ModuleContext = { module, fuelGlobal, checkpointFn, loopCheckpointFn, memoryGrowFn, callees, nan: options.nan, referenced: referencedFunctions(module) };
  const reserved = new Set<string>();
  for (const info of defined) {
    const threadedName = freshName(`${info.name}$ls`, (n) => functionTaken(n) || reserved.has(n));
    reserved.add(threadedName);
    const threadedResults = binaryen.createType([...binaryen.expandType(info.results), binaryen.i64]);
    callees.set(info.name, { kind: "defined", threadedName, results: info.results, threadedResults });
  }

  for (const info of defined) {
    const callee = callees.get(info.name);
    assert(callee?.kind === "defined", "every defined function has a twin");
    const meterFn = new FunctionMeter(ctx, info);
    const body = meterFn.run();
    module.addFunction(
      callee.threadedName,
      binaryen.createType([...binaryen.expandType(info.params), binaryen.i64]),
      callee.threadedResults,
      meterFn.vars,
      body,
    );
  }

  for (const info of defined) {
    const callee = callees.get(info.name);
    assert(callee?.kind === "defined", "every defined function has a twin");
    const params = binaryen.expandType(info.params);

    // The original name becomes the wrapper with the original signature, if anything outside the
    // threaded convention can reach it (an export, the table); otherwise it goes.
    module.removeFunction(info.name);
    if (!ctx.referenced.has(info.name)) continue;
    const args = params.map((type, index) => module.local.get(index, type));
    args.push(module.global.get(fuelGlobal, binaryen.i64));
    const call = module.call(callee.threadedName, args, callee.threadedResults);
    let wrapperBody: Expr;
    let wrapperVars: Type[] = [];
    if (info.results === binaryen.none) {
      wrapperBody = module.global.set(fuelGlobal, call);
    } else {
      const pair = params.length;
      wrapperVars = [callee.threadedResults];
      let result = module.tuple.extract(module.local.get(pair, callee.threadedResults), 0);
      if (options.nan === "sinks" && (info.results === binaryen.f32 || info.results === binaryen.f64)) {
        // The wrapper is what the host calls: its float result leaves the guest here.
        wrapperVars.push(info.results);
        result = canonicalizeNaN(module, result, info.results, pair + 1);
      }
      wrapperBody = module.block(
        null,
        [
          module.local.set(pair, call),
          module.global.set(fuelGlobal, module.tuple.extract(module.local.get(pair, callee.threadedResults), 1)),
          result,
        ],
        info.results,
      );
    }
    module.addFunction(info.name, info.params, info.results, wrapperVars, wrapperBody);
  }

  if (options.validateIr) assert(module.validate(), "binaryen rejects the instrumented IR");
  if (options.passes.length > 0) runPasses(module, options, options.passes);
  if (options.unwind === "loops") {
    asyncify(module, options);
    if (options.unwindPasses.length > 0) runPasses(module, options, options.unwindPasses);
  }
  return { wasm: module.emitBinary(), globals };
}

/**
 * binaryen's asyncify, unwinding only from `checkpoint_unwind`: its analysis instruments just
 * the functions that can reach that import (a call_indirect counts as reaching it), so code
 * that cannot, such as recursion without loops, runs as fast as before. Every other import is
 * declared unable to unwind: the host never unwinds from them.
 */
function asyncify(module: binaryen.Module, options: MeterOptions): void {
  const imports = `${INJECTED_MODULE}.${CHECKPOINT_UNWIND_IMPORT}`;
  binaryen.setPassArgument("asyncify-imports", imports);
  try {
    runPasses(module, options, ["asyncify"]);
  } finally {
    binaryen.setPassArgument("asyncify-imports", null);
  }
}

/** binaryen's optimizer options are process-wide: set ours for the run, then restore. */
function runPasses(module: binaryen.Module, options: MeterOptions, passes: readonly string[]): void {
  const optimizeLevel = binaryen.getOptimizeLevel();
  const shrinkLevel = binaryen.getShrinkLevel();
  const debugInfo = binaryen.getDebugInfo();
  try {
    binaryen.setOptimizeLevel(options.optimizeLevel);
    binaryen.setShrinkLevel(options.shrinkLevel);
    binaryen.setDebugInfo(false);
    for (const pass of passes) {
      if (pass === "-O") module.optimize();
      else module.runPasses([pass]);
    }
  } finally {
    binaryen.setOptimizeLevel(optimizeLevel);
    binaryen.setShrinkLevel(shrinkLevel);
    binaryen.setDebugInfo(debugInfo);
  }
}
