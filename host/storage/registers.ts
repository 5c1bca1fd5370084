// The test-and-set registers of the storage server: one per (VM, generation), the arbiter that
// lets exactly one host go live per generation (§2.3; DESIGN.md invariant 4).
//
// On disk, register (vm, g) is the file `registers/<vm>/<g>` holding the owner's name. It is
// set by writing the owner to a temporary file, fsync'ing it, then link(2)ing it to its final
// name: link fails with EEXIST if the name exists, so setting is atomic even against another
// process, and the file appears only complete. The directory is fsync'd before the answer, so
// a register that was answered "won" survives a crash or kill -9 of the server.
//
// In the process, the operations of one VM run one at a time in arrival order (a promise
// chain per VM), so "test, then set" is atomic, and answers agree with the order of requests.
//
// Semantics of testAndSet(vm, g, owner):
//   - won if register g was clear and no higher generation of the VM is set (it is now owner's),
//     or if it already belongs to `owner` and no higher generation is set (a retry after a lost
//     answer: idempotent, so the winner cannot lose by asking twice);
//   - lost otherwise, answering the highest generation set for the VM and its owner, which is
//     at least g: the loser learns who is live, or that it is stale.
// A generation lower than the highest set can never be won: a stale host cannot go live late.

import fs from "node:fs/promises";
import path from "node:path";
import { assert } from "../errors.js";
import { ioError, OpError } from "./errors.js";
import { ensureDir, fsyncDir } from "./fsutil.js";
import type { Logger } from "../log.js";

export interface Register {
  generation: number;
  owner: string;
}

export interface TestAndSetOutcome {
  won: boolean;
  /** Won: the requested generation. Lost: the highest generation set (≥ the requested one). */
  generation: number;
  /** Won: the requester. Lost: the owner of `generation`. */
  owner: string;
}

/** What is known of one VM's registers: all of them, read from its directory. */
interface VmRegisters {
  owners: Map<number, string>;
  /** 0: none set. */
  highest: number;
}

const REGISTER_NAME = /^[1-9][0-9]{0,15}$/;
const TEMP_PREFIX = ".tmp-";

export class RegisterStore {
  /** Loaded VMs, least recently used first; a cache of the directories, which are the truth. */
  private readonly cache = new Map<string, VmRegisters>();
  /** The tail of each VM's chain of operations. */
  private readonly chains = new Map<string, Promise<void>>();
  private tempCounter = 0;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
    private readonly cachedVmsMax: number,
  ) {}

  testAndSet(vm: string, generation: number, owner: string): Promise<TestAndSetOutcome> {
    assert(Number.isSafeInteger(generation) && generation >= 1, "generation ≥ 1");
    assert(owner.length > 0, "owner not empty");
    return this.serialized(vm, () => this.testAndSetNow(vm, generation, owner));
  }

  /** The highest generation set for `vm` and its owner; null if none is. */
  readGeneration(vm: string): Promise<Register | null> {
    return this.serialized(vm, async () => {
      const state = await this.load(vm);
      return state.highest === 0 ? null : { generation: state.highest, owner: state.owners.get(state.highest)! };
    });
  }

  /** Waits for every operation in progress. */
  async close(): Promise<void> {
    // Bounded: the server accepts no requests once closing, so chains only end.
    while (this.chains.size > 0) await Promise.all(this.chains.values());
  }

  private serialized<T>(vm: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.chains.get(vm) ?? Promise.resolve();
    const result = previous.then(operation);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(vm, tail);
    void tail.then(() => {
      if (this.chains.get(vm) === tail) this.chains.delete(vm);
    });
    return result;
  }

  private async testAndSetNow(vm: string, generation: number, owner: string): Promise<TestAndSetOutcome> {
    const state = await this.load(vm);
    const current = state.owners.get(generation);
    if (state.highest > generation || (current !== undefined && current !== owner)) {
      return { won: false, generation: state.highest, owner: state.owners.get(state.highest)! };
    }
    if (current === owner) return { won: true, generation, owner };

    const setOwner = await this.persist(vm, generation, owner);
    state.owners.set(generation, setOwner);
    state.highest = Math.max(state.highest, generation);
    if (setOwner !== owner) return { won: false, generation, owner: setOwner };
    return { won: true, generation, owner };
  }

  /** Sets register (vm, generation) durably; returns its owner (another's if it was set meanwhile). */
  private async persist(vm: string, generation: number, owner: string): Promise<string> {
    const vmDir = path.join(this.dir, vm);
    const final = path.join(vmDir, String(generation));
    const temp = path.join(vmDir, `${TEMP_PREFIX}${process.pid}-${++this.tempCounter}`);
    try {
      await ensureDir(vmDir, this.dir);
      const handle = await fs.open(temp, "wx", 0o644);
      try {
        await handle.writeFile(owner, "utf8");
        await handle.sync();
      } finally {
        await handle.close();
      }
      let linked = true;
      try {
        await fs.link(temp, final);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
        linked = false;
      } finally {
        await fs.unlink(temp).catch(() => undefined);
      }
      // Both the new name and the temporary's removal become durable here, before any answer.
      await fsyncDir(vmDir);
      if (!linked) {
        // Another process sharing the directory set it first: the file says who.
        const existing = await fs.readFile(final, "utf8");
        this.log.warn("register set by another process", { vm, generation, owner: existing });
        return existing;
      }
      return owner;
    } catch (error) {
      if (error instanceof OpError) throw error;
      const failure = ioError(`test-and-set of ${vm} generation ${generation}`, error);
      this.log.error("register write failed", { vm, generation, code: "IO_ERROR", detail: failure.message });
      throw failure;
    }
  }

  private async load(vm: string): Promise<VmRegisters> {
    const cached = this.cache.get(vm);
    if (cached !== undefined) {
      this.cache.delete(vm);
      this.cache.set(vm, cached);
      return cached;
    }
    const vmDir = path.join(this.dir, vm);
    const state: VmRegisters = { owners: new Map(), highest: 0 };
    let names: string[];
    try {
      names = await fs.readdir(vmDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw this.readFailure(vm, error);
      names = [];
    }
    for (const name of names) {
      if (name.startsWith(TEMP_PREFIX)) {
        // Left by a crash before its link: never answered, so never anybody's register.
        if (!name.startsWith(`${TEMP_PREFIX}${process.pid}-`)) await fs.unlink(path.join(vmDir, name)).catch(() => undefined);
        continue;
      }
      if (!REGISTER_NAME.test(name) || !Number.isSafeInteger(Number(name))) {
        this.log.warn("unexpected file among registers", { vm, file: name });
        continue;
      }
      let owner: string;
      try {
        owner = await fs.readFile(path.join(vmDir, name), "utf8");
      } catch (error) {
        throw this.readFailure(vm, error);
      }
      // Empty can only be damage (files are complete before they are linked). Kept as set with
      // an owner nobody has: every contender loses, which is the safe side of split brain.
      if (owner.length === 0) this.log.error("register file is empty: treated as set by nobody", { vm, generation: Number(name) });
      const generation = Number(name);
      state.owners.set(generation, owner);
      state.highest = Math.max(state.highest, generation);
    }
    this.cache.set(vm, state);
    // Bounded: evict the least recently used VMs; they are read again from disk when needed.
    for (const key of this.cache.keys()) {
      if (this.cache.size <= this.cachedVmsMax) break;
      if (key !== vm) this.cache.delete(key);
    }
    return state;
  }

  private readFailure(vm: string, error: unknown): OpError {
    const failure = ioError(`reading the registers of ${vm}`, error);
    this.log.error("register read failed", { vm, code: "IO_ERROR", detail: failure.message });
    return failure;
  }
}
