// The kv workload of the checked-history tests (issues 4 and 5): concurrent clients, each on
// its own connection through the switch, doing random reads and writes, every operation
// recorded with its invoke and return times and outcome (host/checker/history.ts); then the
// checks: linearizability against the kv model, and every counter equal to its acknowledged INCRs.

import fs from "node:fs";
import path from "node:path";
import { checkCounters } from "../../host/checker/durability.js";
import { History, type Op, type Result } from "../../host/checker/history.js";
import { checkLinearizability } from "../../host/checker/linearizability.js";
import { ConnectionLost, ReplyError, RespClient } from "../../host/checker/resp-client.js";
import { tempDir } from "./cli.js";
import { Prng } from "./prng.js";

export const CLIENTS = 8;
const KEYS = 6;

export interface Workload {
  history: History;
  /** Resolves once every client has stopped. */
  done: Promise<void>;
  /** Resolves once the history holds this many operations. */
  reached(count: number): Promise<void>;
  /** Clients finish the operation they are in, then stop. */
  stop(): void;
}


/**
 * CLIENTS clients, each on its own connection through the switch, each doing one random
 * operation at a time until the history holds `opsMax` or `stop()` is called. Keys k0..k2 are
 * registers (SET, GET, DEL), k3..k5 counters (INCR, GET), so that both checks have work.
 */
export function runWorkload(address: string, seed: number, opsMax: number): Workload {
  const history = new History();
  let stopped = false;
  const waiters: { count: number; resolve: () => void }[] = [];
  const recorded = () => {
    for (const waiter of [...waiters]) {
      if (history.operations.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  };
  const client = async (id: number) => {
    const prng = new Prng(seed * 1000 + id);
    const connection = new RespClient(address);
    await connection.connected;
    let n = 0;
    while (!stopped && history.operations.length < opsMax) {
      const k = prng.below(KEYS);
      const key = `k${k}`;
      const op: Op =
        k >= 3
          ? prng.below(3) === 0
            ? { f: "get", key }
            : { f: "incr", key }
          : [{ f: "get", key } as Op, { f: "set", key, value: `c${id}-${n++}` } as Op, { f: "del", key } as Op][prng.below(3)]!;
      const handle = history.invoke(id, op);
      try {
        const reply = await connection.command(...command(op));
        handle.ok(reply as never);
      } catch (error) {
        if (error instanceof ReplyError) handle.fail(error.message);
        else {
          // The switch should keep every connection open: a lost one is recorded and reported.
          handle.unknown(error instanceof ConnectionLost ? error.message : String(error));
          break;
        }
      } finally {
        recorded();
      }
    }
    connection.close();
  };
  const done = Promise.all(Array.from({ length: CLIENTS }, (_, id) => client(id))).then(() => undefined);
  return {
    history,
    done,
    stop: () => (stopped = true),
    reached: (count) => new Promise((resolve) => (history.operations.length >= count ? resolve() : waiters.push({ count, resolve }))),
  };
}

function command(op: Op): string[] {
  switch (op.f) {
    case "get":
      return ["GET", op.key];
    case "set":
      return ["SET", op.key, op.value];
    case "incr":
      return ["INCR", op.key];
    case "del":
      return ["DEL", op.key];
  }
}

/** After all clients stopped: one read of every key, in the history, for the checks' final state. */
export async function finalReads(address: string, history: History): Promise<void> {
  const connection = new RespClient(address);
  await connection.connected;
  for (let k = 0; k < KEYS; k++) {
    const handle = history.invoke(CLIENTS, { f: "get", key: `k${k}` });
    handle.ok((await connection.command("GET", `k${k}`)) as Result as never);
  }
  connection.close();
}

/** Both checks; on failure the history is kept in a file named in the message. */
export function check(history: History): { linearizable: boolean | "unknown"; counters: boolean; report: string } {
  const linear = checkLinearizability(history.operations);
  const counters = checkCounters(history.operations);
  const lost = history.operations.filter((o) => o.outcome?.type === "unknown").length;
  let report = `${history.operations.length} operations, ${lost} with unknown outcome`;
  if (linear.ok !== true) report += `\n${linear.ok === false ? linear.explanation : linear.reason}`;
  if (!counters.ok) report += `\n${counters.explanation}`;
  if (linear.ok !== true || !counters.ok) {
    const file = path.join(tempDir("history"), "history.json");
    fs.writeFileSync(file, JSON.stringify(history));
    report += `\nhistory: ${file}`;
  }
  return { linearizable: linear.ok, counters: counters.ok, report };
}

/**
 * SET key<i> = "<i>:<value>" for i in [from, to), pipelined on one connection: a data set for
 * kv to write to its disk and read back (the disk tests). Every reply must be OK.
 */
export async function setKeys(address: string, from: number, to: number, value: string): Promise<void> {
  const client = new RespClient(address);
  await client.connected;
  const replies = await Promise.all(Array.from({ length: to - from }, (_, i) => client.command("SET", `key${from + i}`, `${from + i}:${value}`)));
  client.close();
  if (!replies.every((reply) => reply === "OK")) throw new Error(`a SET of key${from}..key${to - 1} was not OK: ${JSON.stringify(replies.find((r) => r !== "OK"))}`);
}

