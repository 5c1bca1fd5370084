// A typed view of the parts of binaryen.js the pass uses that its index.d.ts leaves out:
// the per-expression classes with getters and setters (binaryen.Block.getChildAt, ...), and
// the name/module/base fields of the info objects.

import binaryen from "binaryen";

export type Expr = number; // binaryen ExpressionRef: a pointer into the module's arena
export type Type = number;

type Getter<T = Expr> = (expr: Expr) => T;
type Setter<T = Expr> = (expr: Expr, value: T) => void;

interface ExpressionClasses {
  Block: {
    getName: Getter<string | null>;
    getNumChildren: Getter<number>;
    getChildAt: (expr: Expr, index: number) => Expr;
    setChildAt: (expr: Expr, index: number, child: Expr) => void;
  };
  If: {
    getCondition: Getter; setCondition: Setter;
    getIfTrue: Getter; setIfTrue: Setter;
    getIfFalse: Getter; setIfFalse: Setter;
  };
  Loop: { getName: Getter<string | null>; getBody: Getter; setBody: Setter };
  Break: { getName: Getter<string>; getCondition: Getter; setCondition: Setter; getValue: Getter; setValue: Setter };
  Switch: {
    getNames: Getter<string[]>; getDefaultName: Getter<string>;
    getCondition: Getter; setCondition: Setter; getValue: Getter; setValue: Setter;
  };
  Call: {
    getTarget: Getter<string>; isReturn: Getter<boolean>;
    getNumOperands: Getter<number>;
    getOperandAt: (expr: Expr, index: number) => Expr;
    setOperandAt: (expr: Expr, index: number, operand: Expr) => void;
  };
  CallIndirect: {
    getTarget: Getter; setTarget: Setter; getTable: Getter<string>; isReturn: Getter<boolean>;
    getNumOperands: Getter<number>;
    getOperandAt: (expr: Expr, index: number) => Expr;
    setOperandAt: (expr: Expr, index: number, operand: Expr) => void;
    getParams: Getter<Type>; getResults: Getter<Type>;
  };
  LocalGet: { getIndex: Getter<number>; setIndex: Setter<number> };
  LocalSet: { getIndex: Getter<number>; setIndex: Setter<number>; isTee: Getter<boolean>; getValue: Getter; setValue: Setter };
  GlobalSet: { getValue: Getter; setValue: Setter };
  Load: { getPtr: Getter; setPtr: Setter; isAtomic: Getter<boolean> };
  Store: { getPtr: Getter; setPtr: Setter; getValue: Getter; setValue: Setter; isAtomic: Getter<boolean> };
  Const: { setValueI64: (expr: Expr, value: bigint) => void };
  Unary: { getOp: Getter<number>; getValue: Getter; setValue: Setter };
  Binary: { getOp: Getter<number>; getLeft: Getter; setLeft: Setter; getRight: Getter; setRight: Setter };
  Select: {
    getIfTrue: Getter; setIfTrue: Setter; getIfFalse: Getter; setIfFalse: Setter;
    getCondition: Getter; setCondition: Setter;
  };
  Drop: { getValue: Getter; setValue: Setter };
  Return: { getValue: Getter; setValue: Setter };
  MemoryGrow: { getDelta: Getter; setDelta: Setter };
  MemoryInit: { getDest: Getter; setDest: Setter; getOffset: Getter; setOffset: Setter; getSize: Getter; setSize: Setter };
  MemoryCopy: { getDest: Getter; setDest: Setter; getSource: Getter; setSource: Setter; getSize: Getter; setSize: Setter };
  MemoryFill: { getDest: Getter; setDest: Setter; getValue: Getter; setValue: Setter; getSize: Getter; setSize: Setter };
}

export interface FunctionInfoFull extends binaryen.FunctionInfo {
  name: string;
  module: string; // "" unless imported
  base: string;
}

export interface GlobalInfoFull extends binaryen.GlobalInfo {
  name: string;
  module: string;
  base: string;
}

export interface ExportInfoFull extends binaryen.ExportInfo {
  name: string;
  value: string; // internal name of the exported item
}

export interface MemoryInfoFull extends binaryen.MemoryInfo {
  module: string;
  base: string;
}

export interface TableInfoFull extends binaryen.TableInfo {
  name: string;
  module: string;
  base: string;
}

/** Raw C API entries used where binaryen.js has no wrapper. */
interface CApi {
  _BinaryenElementSegmentIsPassive: (segment: number) => boolean | number;
}

export const B = binaryen as typeof binaryen & ExpressionClasses & CApi;

/**
 * binaryen expression id -> name ("Block", "Loop", ...), for messages. binaryen.js exports ids as
 * `<Name>Id`, but not all of them: table.fill/copy/init and elem.drop have none (their ids sit
 * between TableGrowId and TryId).
 */
export const EXPRESSION_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(binaryen)
    .filter(([key, value]) => key.endsWith("Id") && typeof value === "number")
    .map(([key, value]) => [value as number, key.slice(0, -2)]),
);
export { binaryen };
