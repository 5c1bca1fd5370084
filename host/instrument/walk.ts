// Generic traversal of binaryen IR: the children of each expression kind, in the order wasm
// evaluates them, with in-place replacement through binaryen.js's per-class setters.

import { B, binaryen, EXPRESSION_NAMES, type Expr } from "./binaryen.js";
import { assert, InstrumentError } from "./errors.js";

/**
 * Calls `visit` on each child of `expr` in execution order and stores what it returns in place
 * of the child. Covers every operator of the accepted feature set (MVP, sign extension,
 * non-trapping conversions, bulk memory, mutable globals); refuses anything else.
 */
export function forEachChild(expr: Expr, visit: (child: Expr) => Expr): void {
  const id = binaryen.getExpressionId(expr);
  const one = (get: (e: Expr) => Expr, set: (e: Expr, v: Expr) => void): void => {
    const child = get(expr);
    if (child === 0) return;
    const replaced = visit(child);
    if (replaced !== child) {
      const before = binaryen.getExpressionType(child);
      const after = binaryen.getExpressionType(replaced);
      assert(before === after || before === binaryen.unreachable, "a rewrite keeps the type of what it replaces");
      set(expr, replaced);
    }
  };
  switch (id) {
    case binaryen.BlockId: {
      const count = B.Block.getNumChildren(expr);
      for (let i = 0; i < count; i++) one((e) => B.Block.getChildAt(e, i), (e, v) => B.Block.setChildAt(e, i, v));
      return;
    }
    case binaryen.IfId:
      one(B.If.getCondition, B.If.setCondition);
      one(B.If.getIfTrue, B.If.setIfTrue);
      one(B.If.getIfFalse, B.If.setIfFalse);
      return;
    case binaryen.LoopId:
      one(B.Loop.getBody, B.Loop.setBody);
      return;
    case binaryen.BreakId:
      one(B.Break.getValue, B.Break.setValue);
      one(B.Break.getCondition, B.Break.setCondition);
      return;
    case binaryen.SwitchId:
      one(B.Switch.getValue, B.Switch.setValue);
      one(B.Switch.getCondition, B.Switch.setCondition);
      return;
    case binaryen.CallId: {
      const count = B.Call.getNumOperands(expr);
      for (let i = 0; i < count; i++) one((e) => B.Call.getOperandAt(e, i), (e, v) => B.Call.setOperandAt(e, i, v));
      return;
    }
    case binaryen.CallIndirectId: {
      const count = B.CallIndirect.getNumOperands(expr);
      for (let i = 0; i < count; i++) one((e) => B.CallIndirect.getOperandAt(e, i), (e, v) => B.CallIndirect.setOperandAt(e, i, v));
      one(B.CallIndirect.getTarget, B.CallIndirect.setTarget);
      return;
    }
    case binaryen.LocalSetId:
      one(B.LocalSet.getValue, B.LocalSet.setValue);
      return;
    case binaryen.GlobalSetId:
      one(B.GlobalSet.getValue, B.GlobalSet.setValue);
      return;
    case binaryen.LoadId:
      assert(!B.Load.isAtomic(expr), "atomics are refused before instrumenting");
      one(B.Load.getPtr, B.Load.setPtr);
      return;
    case binaryen.StoreId:
      assert(!B.Store.isAtomic(expr), "atomics are refused before instrumenting");
      one(B.Store.getPtr, B.Store.setPtr);
      one(B.Store.getValue, B.Store.setValue);
      return;
    case binaryen.UnaryId:
      one(B.Unary.getValue, B.Unary.setValue);
      return;
    case binaryen.BinaryId:
      one(B.Binary.getLeft, B.Binary.setLeft);
      one(B.Binary.getRight, B.Binary.setRight);
      return;
    case binaryen.SelectId:
      one(B.Select.getIfTrue, B.Select.setIfTrue);
      one(B.Select.getIfFalse, B.Select.setIfFalse);
      one(B.Select.getCondition, B.Select.setCondition);
      return;
    case binaryen.DropId:
      one(B.Drop.getValue, B.Drop.setValue);
      return;
    case binaryen.ReturnId:
      one(B.Return.getValue, B.Return.setValue);
      return;
    case binaryen.MemoryGrowId:
      one(B.MemoryGrow.getDelta, B.MemoryGrow.setDelta);
      return;
    case binaryen.MemoryInitId:
      one(B.MemoryInit.getDest, B.MemoryInit.setDest);
      one(B.MemoryInit.getOffset, B.MemoryInit.setOffset);
      one(B.MemoryInit.getSize, B.MemoryInit.setSize);
      return;
    case binaryen.MemoryCopyId:
      one(B.MemoryCopy.getDest, B.MemoryCopy.setDest);
      one(B.MemoryCopy.getSource, B.MemoryCopy.setSource);
      one(B.MemoryCopy.getSize, B.MemoryCopy.setSize);
      return;
    case binaryen.MemoryFillId:
      one(B.MemoryFill.getDest, B.MemoryFill.setDest);
      one(B.MemoryFill.getValue, B.MemoryFill.setValue);
      one(B.MemoryFill.getSize, B.MemoryFill.setSize);
      return;
    case binaryen.LocalGetId:
    case binaryen.GlobalGetId:
    case binaryen.ConstId:
    case binaryen.NopId:
    case binaryen.UnreachableId:
    case binaryen.MemorySizeId:
    case binaryen.DataDropId:
      return;
    default: {
      if (id > binaryen.TableGrowId && id < binaryen.TryId) {
        // table.fill/copy/init, elem.drop (bulk memory; binaryen.js exports no id for them):
        // a table changed at run time is state a snapshot (memory + globals) does not hold.
        throw new InstrumentError("WASM_UNSUPPORTED_FEATURE", "module changes a table at run time (table.init, table.copy or elem.drop)");
      }
      const name = EXPRESSION_NAMES.get(id) ?? `#${id}`;
      throw new InstrumentError("WASM_UNSUPPORTED_FEATURE", `operator ${name} (binaryen expression id ${id}) is not supported by the metering pass`);
    }
  }
}
