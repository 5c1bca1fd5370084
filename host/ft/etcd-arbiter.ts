// The test-and-set arbiter on etcd (`--arbiter etcd://HOST:PORT`), for hosts on several
// machines that share no storage server (DESIGN.md, "Beyond one machine"). The semantics are
// exactly those of the storage server's registers (host/storage/registers.ts):
//   won  if register (vm, g) is clear and no higher generation is set (it is now owner's), or
//        if it already belongs to owner and no higher generation is set (idempotent retry);
//   lost otherwise. A generation below the highest set can never be won.
//
// Register (vm, g) is the key <prefix>/vms/<vm>/registers/<g as 16 digits> holding the owner.
// Zero-padded, keys sort like generations, so "g is clear and nothing higher is set" is one
// etcd compare over a key range: version == 0 for every key in [register g, end of the VM's
// registers). etcd evaluates a compare over a range against every key in it, and an empty
// range compares like a missing key (version 0). So one transaction decides:
//   if   version([reg(g), regEnd)) == 0
//   then put reg(g) = owner                      → won
//   else get reg(g); get [reg(g), regEnd) highest → won if reg(g) is owner's and is the highest
// etcd serializes transactions and fsyncs its log before answering, so exactly one contender's
// put succeeds per generation, and an answered win survives a crash of etcd.
//
// The lease. Registers are put WITHOUT a lease, on purpose: a key under a lease disappears
// when the lease expires, and a register that vanished could be won a second time, by a
// second host, for the same generation: split brain. A register that decided a generation is
// permanent, like the storage server's files. The lease is this host's session instead: the
// key <prefix>/hosts/<hostId> (pid, since when) is put under a lease of HOST_LEASE_TTL_S that
// the client keeps alive, so the cluster store shows which hosts are up (etcdctl get --prefix
// /lockstep/hosts/) and a dead host's entry goes away by itself. Nothing in the go-live
// decision reads it: membership is informative, the registers alone are safety.
//
// Failures: any error or a missing answer within `timeoutMs` is `unreachable`, and the core
// retries with its capped backoff (host/ft/tas.ts). A transaction whose answer was lost may
// have been applied; the retry then finds the register owned by the same owner and wins.
// etcd3's own retry and circuit-breaker policies are replaced by pass-through ones: a broken
// circuit would answer `unreachable` for seconds after etcd came back, and the core already
// bounds the retry rate.

import { Etcd3, type IOptions, type Lease } from "etcd3";
import { noop } from "cockatiel";
import { assert } from "../errors.js";
import type { Logger } from "../log.js";
import type { Register, TestAndSetOutcome } from "../storage/registers.js";
import type { Arbiter } from "./arbiter.js";
import { etcdAuthFromEnv, parseEtcdUrl } from "./etcd-url.js";

export const ETCD_PREFIX_DEFAULT = "/lockstep";
/** Per request. An etcd cluster elects a new leader in about its election timeout (1 s). */
export const ETCD_TIMEOUT_MS_DEFAULT = 2_000;
/** The host's membership lease. */
export const HOST_LEASE_TTL_S = 10;
/** After the membership lease was lost (etcd down past its TTL), how often to ask again. */
const HOST_LEASE_RETRY_MS = 2_000;
/** Generations are safe integers: at most 16 decimal digits. */
const GENERATION_DIGITS = 16;
/** gRPC reconnects: etcd3 drops a failed channel, but keep any reconnect backoff short too. */
const GRPC_RECONNECT_MAX_MS = 1_000;

export interface EtcdArbiterOptions {
  /** This host's id: the membership key's name. */
  hostId: string;
  log: Logger;
  /** Bound on each request; default ETCD_TIMEOUT_MS_DEFAULT. */
  timeoutMs?: number;
  /** Default ETCD_PREFIX_DEFAULT; tests use their own. */
  prefix?: string;
  /** Default: from $LOCKSTEP_ETCD_TOKEN if set. */
  auth?: { username: string; password: string } | null;
  /** Keep a membership key under a lease (default true). */
  membership?: boolean;
}

export interface EtcdArbiter extends Arbiter {
  /** The decision with who holds the VM now (the storage register's answer); throws when unreachable. */
  testAndSetOutcome(vmId: string, generation: number, owner: string): Promise<TestAndSetOutcome>;
  /** The highest generation set for `vmId` and its owner; null if none is. Throws when unreachable. */
  readGeneration(vmId: string): Promise<Register | null>;
  /**
   * Adds this host's control address to its membership key, so that a cluster service reading
   * etcd (`lockstep cluster --arbiter etcd://`) finds it there: etcd is then the registry, and
   * the lease the heartbeat.
   */
  announce(url: string): void;
  /** The hosts whose membership keys are there now: those whose lease is alive. Throws when unreachable. */
  members(): Promise<EtcdMember[]>;
  /** Revokes the membership lease (bounded by the timeout) and closes the connections. */
  close(): Promise<void>;
}

/** A host's membership key's value. */
export interface EtcdMember {
  hostId: string;
  pid: number;
  since: string;
  /** Its control API, once it serves (announce). */
  url?: string;
}

export function etcdArbiter(url: string, options: EtcdArbiterOptions): EtcdArbiter {
  const endpoints = parseEtcdUrl(url);
  const timeoutMs = options.timeoutMs ?? ETCD_TIMEOUT_MS_DEFAULT;
  assert(Number.isSafeInteger(timeoutMs) && timeoutMs > 0, "etcd timeout > 0");
  const prefix = options.prefix ?? ETCD_PREFIX_DEFAULT;
  const auth = options.auth === undefined ? etcdAuthFromEnv() : options.auth;
  const { log } = options;
  const etcdOptions: IOptions = {
    hosts: endpoints.map((endpoint) => `http://${endpoint}`),
    ...(auth === null ? {} : { auth: { ...auth, callOptions: () => ({ deadline: Date.now() + timeoutMs }) } }),
    faultHandling: { host: () => noop, global: noop },
    grpcOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": GRPC_RECONNECT_MAX_MS },
    dialTimeout: timeoutMs,
  };
  const client = new Etcd3(etcdOptions);
  const utf8 = (text: string) => Buffer.from(text, "utf8");
  // The VM id is encoded so that no id can reach into another's keys.
  const registersOf = (vmId: string) => `${prefix}/vms/${encodeURIComponent(vmId)}/registers/`;
  const registerKey = (vmId: string, generation: number) => registersOf(vmId) + String(generation).padStart(GENERATION_DIGITS, "0");
  // The end of a prefix range: the prefix with its last byte plus one ('/' + 1 = '0').
  const rangeEnd = (keyPrefix: string) => keyPrefix.slice(0, -1) + String.fromCharCode(keyPrefix.charCodeAt(keyPrefix.length - 1) + 1);
  const parseRegister = (kv: { key: Buffer; value: Buffer }): Register => ({
    generation: Number(kv.key.toString("utf8").slice(-GENERATION_DIGITS)),
    owner: kv.value.toString("utf8"),
  });

  let reachable = true;
  const bounded = async <T>(what: string, call: (deadline: Date) => Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    try {
      // The deadline bounds the gRPC call; the timer bounds everything around it (auth, pool).
      const answer = await Promise.race([
        call(new Date(Date.now() + timeoutMs)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer from etcd within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      if (!reachable) log.info("etcd reachable again", { url, event: "arbiterUp" });
      reachable = true;
      return answer;
    } catch (error) {
      // Logged once per outage: the core retries about every second meanwhile.
      if (reachable) log.warn("etcd unreachable", { url, what, error: (error as Error).message, event: "arbiterDown" });
      reachable = false;
      throw error;
    } finally {
      clearTimeout(timer);
    }
  };

  const testAndSetOutcome = (vmId: string, generation: number, owner: string): Promise<TestAndSetOutcome> => {
    assert(Number.isSafeInteger(generation) && generation >= 1, "generation ≥ 1");
    assert(owner.length > 0, "owner not empty");
    const key = utf8(registerKey(vmId, generation));
    const end = utf8(rangeEnd(registersOf(vmId)));
    return bounded("test-and-set", async (deadline) => {
      const response = await client.kv.txn(
        {
          compare: [{ key, range_end: end, target: "Version", result: "Equal", version: 0 }],
          success: [{ request_put: { key, value: utf8(owner) } }],
          failure: [
            { request_range: { key } },
            { request_range: { key, range_end: end, sort_order: "Descend", sort_target: "Key", limit: 1 } },
          ],
        },
        { deadline },
      );
      if (response.succeeded) return { won: true, generation, owner };
      const own = response.responses[0]!.response_range.kvs[0];
      const highest = response.responses[1]!.response_range.kvs[0];
      // The compare failed, so some register ≥ generation exists: `highest` is set.
      assert(highest !== undefined, "a failed compare means a register at or above the generation");
      const current = parseRegister(highest);
      if (own !== undefined && own.value.toString("utf8") === owner && current.generation === generation) {
        return { won: true, generation, owner };
      }
      return { won: false, ...current };
    });
  };

  const readGeneration = (vmId: string): Promise<Register | null> => {
    const start = utf8(registersOf(vmId));
    const end = utf8(rangeEnd(registersOf(vmId)));
    return bounded("read generation", async (deadline) => {
      const response = await client.kv.range({ key: start, range_end: end, sort_order: "Descend", sort_target: "Key", limit: 1 }, { deadline });
      const kv = response.kvs[0];
      return kv === undefined ? null : parseRegister(kv);
    });
  };

  // ---- membership: this host's key under its lease -------------------------------------------
  let closed = false;
  let lease: Lease | null = null;
  let retryTimer: NodeJS.Timeout | undefined;
  const memberKey = `${prefix}/hosts/${encodeURIComponent(options.hostId)}`;
  // Warned once per outage: while etcd is down, joining is retried every HOST_LEASE_RETRY_MS.
  let membershipWarned = false;
  const member: EtcdMember = { hostId: options.hostId, pid: process.pid, since: new Date().toISOString() };
  // Writes of the key, one after the other: an announce must not be overtaken by the join's
  // first put, still waiting for its lease, which would write the value without the address.
  let memberWrites: Promise<unknown> = Promise.resolve();
  const writeMember = (held: Lease): Promise<unknown> => {
    const write = () => held.put(memberKey).value(JSON.stringify(member)).options({ deadline: new Date(Date.now() + timeoutMs) }).exec();
    const written = memberWrites.then(write, write);
    memberWrites = written.catch(() => undefined);
    return written;
  };
  const join = () => {
    if (closed) return;
    const current = client.lease(HOST_LEASE_TTL_S, { autoKeepAlive: true });
    lease = current;
    // Lost (etcd down past the TTL, or the grant failed) or the key not written: start over
    // with a fresh lease. The old one, if it exists, expires by itself on etcd.
    const rejoin = (error: Error) => {
      if (closed || lease !== current) return;
      if (!membershipWarned) log.warn("etcd membership lost", { url, hostId: options.hostId, error: error.message });
      membershipWarned = true;
      lease = null;
      current.release();
      retryTimer = setTimeout(join, HOST_LEASE_RETRY_MS);
    };
    current.on("lost", rejoin);
    writeMember(current).then(() => {
      membershipWarned = false;
      log.info("joined etcd", { url, hostId: options.hostId, key: memberKey, ttlS: HOST_LEASE_TTL_S });
    }, rejoin);
  };
  if (options.membership !== false) join();

  return {
    async testAndSet(request) {
      // Outside the try: a bad request is our bug (an assertion), not an unreachable etcd.
      const pending = testAndSetOutcome(request.vmId, request.generation, request.owner);
      try {
        const outcome = await pending;
        if (!outcome.won) {
          log.info("etcd test-and-set lost", { vm: request.vmId, generation: request.generation, current: { generation: outcome.generation, owner: outcome.owner } });
        }
        return outcome.won ? "won" : "lost";
      } catch {
        // Timed out, refused, no leader: the register may or may not be set. The core retries,
        // and the register is idempotent per owner, so a retry of a win still wins.
        return "unreachable";
      }
    },
    testAndSetOutcome,
    readGeneration,
    announce(controlUrl) {
      member.url = controlUrl;
      // Under the current lease, if the host holds one; a later join puts the same value.
      const held = lease;
      if (closed || held === null) return;
      writeMember(held).catch((error: Error) => log.warn("etcd announce failed", { url, hostId: options.hostId, error: error.message }));
    },
    members() {
      const start = `${prefix}/hosts/`;
      return bounded("list hosts", async (deadline) => {
        const response = await client.kv.range({ key: utf8(start), range_end: utf8(rangeEnd(start)) }, { deadline });
        const members: EtcdMember[] = [];
        for (const kv of response.kvs) {
          try {
            const value = JSON.parse(kv.value.toString("utf8")) as EtcdMember;
            if (typeof value.hostId === "string") members.push(value);
          } catch {
            // Not one of ours: a key under the prefix written by hand. Not a host.
          }
        }
        return members;
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      clearTimeout(retryTimer);
      const held = lease;
      lease = null;
      if (held !== null) {
        // Revoking removes the membership key now rather than after the TTL; bounded, best effort.
        await bounded("revoke lease", (deadline) => held.revoke({ deadline })).catch(() => held.release());
      }
      client.close();
    },
  };
}
