// kv: a key-value server speaking a subset of the Redis protocol (RESP2) on virtual port
// 6379, durable on the virtual disk.
//
// Commands: PING [msg], ECHO, GET, SET key value [NX|XX] [GET] [KEEPTTL], DEL, EXISTS, INCR,
// DECR, INCRBY, DECRBY, MGET, MSET, DBSIZE, FLUSHALL, FLUSHDB, SELECT 0, QUIT, INFO, plus
// COMMAND (empty array), CONFIG GET (a few known parameters), CONFIG RESETSTAT and
// CLIENT SETNAME/SETINFO so that redis-cli and redis-benchmark work unmodified. Inline
// commands and pipelining are supported; a request may arrive in any number of pieces.
//
// Durability: a write is applied in memory at once and logged (see log.ts); every reply is
// held until every write that came before it is on disk, so a client never sees state that
// a restart could lose. Writes that arrive together share one disk write (group commit).
// On start the log is replayed from the disk before the port opens.
//
// Memory per connection is bounded: a request is at most 8 MiB (values up to 1 MiB), and
// reading pauses while more than 1 MiB of replies wait for the client or the disk.

export { __ls_irq, __ls_run } from "../../sdk/index";
import { Connection, ByteQueue, listen, print, afterEvents, connectionCount } from "../../sdk/index";
import {
  Request, parse, parseI64, parseOk, replySimple, replyError, replyInt, replyBulk,
  replyBulkBytes, replyBulkString, replyNull, replyArray,
} from "./resp";
import * as db from "./store";
import * as log from "./log";
import { LogRecord } from "./log";

const PORT: i32 = 6379;
const REQUEST_MAX: i32 = 8 << 20;
const BACKLOG_HIGH: i32 = 1 << 20; // pause reading above this many reply bytes waiting
const BACKLOG_LOW: i32 = 256 << 10; // resume below this

const req = new Request();
const waiting = new Set<KvConnection>(); // connections holding replies for the disk
let commandsServed: i64 = 0;

class KvConnection extends Connection {
  inbuf: ByteQueue = new ByteQueue(512);
  out: ByteQueue = new ByteQueue(512); // replies not yet released (see flushReplies)
  outSent: i64 = 0; // bytes ever released from `out`
  markEnd: Array<i64> = new Array<i64>(); // reply boundaries (absolute) ...
  markLsn: Array<i64> = new Array<i64>(); // ... and the LSN each waits for
  markHead: i32 = 0;
  need: i32 = 0; // the buffer must hold this much before parsing again
  stopped: bool = false; // no more requests are read (QUIT, protocol error, peer closed)
  closeWhenFlushed: bool = false;

  onData(data: Uint8Array): void {
    if (this.stopped) return;
    this.inbuf.appendBytes(data);
    this.process();
  }

  onPeerClosed(): void {
    this.stopped = true;
    this.closeWhenFlushed = true;
    this.flushReplies();
  }

  onDrain(): void {
    this.maybeResume();
  }

  onClose(): void {
    waiting.delete(this);
  }

  backlog(): i32 {
    return this.out.length + this.pendingBytes;
  }

  process(): void {
    const q = this.inbuf;
    while (!this.stopped) {
      if (this.backlog() > BACKLOG_HIGH) {
        this.pauseReading(); // resumed by maybeResume()
        break;
      }
      if (q.length == 0 || q.length < this.need) break;
      const r = parse(q, req);
      if (r == 0) {
        this.need = req.need;
        if (q.length > REQUEST_MAX) this.protocolError("request too large");
        break;
      }
      this.need = 0;
      if (r < 0) {
        this.protocolError(req.error);
        break;
      }
      if (req.argc > 0) {
        execute(this);
        commandsServed++;
        this.endReply();
      }
      q.consume(r);
    }
    q.shrink(1 << 20);
    this.flushReplies();
  }

  protocolError(msg: string): void {
    replyError(this.out, `ERR Protocol error: ${msg}`);
    this.endReply();
    this.stopped = true;
    this.closeWhenFlushed = true;
    this.inbuf.clear();
  }

  /** Marks the end of a reply: it may leave once everything appended so far is durable. */
  endReply(): void {
    const lsn = log.lastAppended();
    const total = this.outSent + <i64>this.out.length; // bytes ever appended to `out`
    const n = this.markEnd.length;
    if (n > this.markHead && this.markLsn[n - 1] == lsn) {
      this.markEnd[n - 1] = total;
    } else {
      this.markEnd.push(total);
      this.markLsn.push(lsn);
    }
  }

  /** Sends the replies whose writes are durable. */
  flushReplies(): void {
    if (this._closed) return;
    const d = log.durableLsn();
    let to = this.outSent;
    while (this.markHead < this.markEnd.length && this.markLsn[this.markHead] <= d) {
      to = this.markEnd[this.markHead];
      this.markHead++;
    }
    if (this.markHead == this.markEnd.length) {
      this.markEnd.length = 0;
      this.markLsn.length = 0;
      this.markHead = 0;
    } else if (this.markHead > 256) {
      this.markEnd.splice(0, this.markHead);
      this.markLsn.splice(0, this.markHead);
      this.markHead = 0;
    }
    const n = <i32>(to - this.outSent);
    if (n > 0) {
      this.sendRaw(this.out.ptr, n);
      this.out.consume(n);
      this.outSent = to;
      this.out.shrink(1 << 20);
    }
    if (this.out.length > 0) {
      waiting.add(this);
      return;
    }
    waiting.delete(this);
    if (this.closeWhenFlushed) this.close();
  }

  /** Resumes reading once the replies waiting for the client or the disk fall below the low mark. */
  maybeResume(): void {
    if (!this.isPaused || this.stopped || this.backlog() > BACKLOG_LOW) return;
    this.resumeReading(); // delivers bytes the host buffered meanwhile (onData -> process)
    if (!this.isPaused) this.process(); // requests already in inbuf
  }
}

// ---- commands ----

function wrongArgs(o: ByteQueue, name: string): void {
  replyError(o, `ERR wrong number of arguments for '${name}' command`);
}

function key(i: i32): string {
  return db.keyFrom(req.ptrs[i], req.lens[i]);
}

function diskFull(o: ByteQueue): void {
  replyError(o, `ERR disk full: the data set may not exceed ${log.capacityBytes()} bytes`);
}

function execute(c: KvConnection): void {
  const o = c.out;
  const name = req.lowerName(0);
  const argc = req.argc;
  if (name == "get") {
    if (argc != 2) return wrongArgs(o, "get");
    const v = db.get(key(1));
    if (v === null) replyNull(o);
    else replyBulkBytes(o, v);
  } else if (name == "set") {
    cmdSet(o, argc);
  } else if (name == "incr" || name == "decr" || name == "incrby" || name == "decrby") {
    cmdIncr(o, name, argc);
  } else if (name == "ping") {
    if (argc == 1) replySimple(o, "PONG");
    else if (argc == 2) replyBulk(o, req.ptrs[1], req.lens[1]);
    else wrongArgs(o, "ping");
  } else if (name == "del") {
    if (argc < 2) return wrongArgs(o, "del");
    const rec = new LogRecord();
    let n = 0;
    for (let i = 1; i < argc; i++) {
      const k = key(i);
      if (db.del(k)) {
        rec.del(k);
        n++;
      }
    }
    if (n > 0) log.append(rec);
    replyInt(o, n);
  } else if (name == "exists") {
    if (argc < 2) return wrongArgs(o, "exists");
    let n = 0;
    for (let i = 1; i < argc; i++) if (db.has(key(i))) n++;
    replyInt(o, n);
  } else if (name == "mget") {
    if (argc < 2) return wrongArgs(o, "mget");
    replyArray(o, argc - 1);
    for (let i = 1; i < argc; i++) {
      const v = db.get(key(i));
      if (v === null) replyNull(o);
      else replyBulkBytes(o, v);
    }
  } else if (name == "mset") {
    cmdMset(o, argc);
  } else if (name == "echo") {
    if (argc != 2) return wrongArgs(o, "echo");
    replyBulk(o, req.ptrs[1], req.lens[1]);
  } else if (name == "dbsize") {
    replyInt(o, db.keyCount());
  } else if (name == "flushall" || name == "flushdb") {
    const rec = new LogRecord();
    rec.clear();
    db.clear();
    log.append(rec);
    replySimple(o, "OK");
  } else if (name == "select") {
    if (argc != 2) return wrongArgs(o, "select");
    const db = parseI64(req.ptrs[1], req.lens[1]);
    if (!parseOk()) replyError(o, "ERR value is not an integer or out of range");
    else if (db != 0) replyError(o, "ERR DB index is out of range");
    else replySimple(o, "OK");
  } else if (name == "command") {
    replyArray(o, 0); // no command table: clients fall back to their defaults
  } else if (name == "config") {
    cmdConfig(o, argc);
  } else if (name == "client") {
    if (argc >= 2 && (req.is(1, "setname") || req.is(1, "setinfo"))) replySimple(o, "OK");
    else if (argc >= 2 && req.is(1, "getname")) replyNull(o);
    else replyError(o, "ERR unsupported CLIENT subcommand");
  } else if (name == "info") {
    replyBulkString(o, infoText());
  } else if (name == "quit") {
    replySimple(o, "OK");
    c.stopped = true;
    c.closeWhenFlushed = true;
  } else {
    let msg = "ERR unknown command '";
    msg += req.lens[0] <= 64 ? db.keyFrom(req.ptrs[0], req.lens[0]) : "(long)";
    msg += "'";
    replyError(o, msg.replaceAll("\r", " ").replaceAll("\n", " "));
  }
}

function cmdSet(o: ByteQueue, argc: i32): void {
  if (argc < 3) return wrongArgs(o, "set");
  let nx = false;
  let xx = false;
  let get = false;
  for (let i = 3; i < argc; i++) {
    if (req.is(i, "nx")) nx = true;
    else if (req.is(i, "xx")) xx = true;
    else if (req.is(i, "get")) get = true;
    else if (req.is(i, "keepttl")) {} // keys never expire
    else if (req.is(i, "ex") || req.is(i, "px") || req.is(i, "exat") || req.is(i, "pxat")) {
      return replyError(o, "ERR expiry (EX/PX/EXAT/PXAT) is not supported: keys never expire");
    } else return replyError(o, "ERR syntax error");
  }
  if (nx && xx) return replyError(o, "ERR syntax error");
  const k = key(1);
  const old = db.get(k);
  const vlen = req.lens[2];
  if ((nx && old !== null) || (xx && old === null)) {
    if (get) {
      if (old === null) replyNull(o);
      else replyBulkBytes(o, old);
    } else replyNull(o);
    return;
  }
  const delta = db.entryBytes(k.length, vlen) - (old === null ? 0 : db.entryBytes(k.length, old.length));
  if (db.liveBytes() + delta > log.capacityBytes()) return diskFull(o);
  const v = db.valueFrom(req.ptrs[2], vlen);
  db.set(k, v);
  const rec = new LogRecord();
  rec.set(k, v);
  log.append(rec);
  if (get) {
    if (old === null) replyNull(o);
    else replyBulkBytes(o, old);
  } else replySimple(o, "OK");
}

function cmdIncr(o: ByteQueue, name: string, argc: i32): void {
  const by = name == "incrby" || name == "decrby";
  if (argc != (by ? 3 : 2)) return wrongArgs(o, name);
  let delta: i64 = 1;
  if (by) {
    delta = parseI64(req.ptrs[2], req.lens[2]);
    if (!parseOk()) return replyError(o, "ERR value is not an integer or out of range");
  }
  const neg = name == "decr" || name == "decrby";
  if (neg) {
    if (delta == i64.MIN_VALUE) return replyError(o, "ERR decrement would overflow");
    delta = -delta;
  }
  const k = key(1);
  const old = db.get(k);
  let cur: i64 = 0;
  if (old !== null) {
    cur = parseI64(old.dataStart, old.length);
    if (!parseOk()) return replyError(o, "ERR value is not an integer or out of range");
  }
  if ((delta > 0 && cur > i64.MAX_VALUE - delta) || (delta < 0 && cur < i64.MIN_VALUE - delta)) {
    return replyError(o, "ERR increment or decrement would overflow");
  }
  const next = cur + delta;
  const q = new ByteQueue(24);
  q.appendInt(next);
  const v = q.toBytes();
  const oldBytes = old === null ? 0 : db.entryBytes(k.length, old.length);
  if (db.liveBytes() + db.entryBytes(k.length, v.length) - oldBytes > log.capacityBytes()) return diskFull(o);
  db.set(k, v);
  const rec = new LogRecord();
  rec.set(k, v);
  log.append(rec);
  replyInt(o, next);
}

function cmdMset(o: ByteQueue, argc: i32): void {
  if (argc < 3 || (argc & 1) == 0) return wrongArgs(o, "mset");
  let delta: i64 = 0;
  for (let i = 1; i < argc; i += 2) {
    const k = key(i);
    const old = db.get(k);
    delta += db.entryBytes(k.length, req.lens[i + 1]) - (old === null ? 0 : db.entryBytes(k.length, old.length));
  }
  if (db.liveBytes() + delta > log.capacityBytes()) return diskFull(o);
  const rec = new LogRecord();
  for (let i = 1; i < argc; i += 2) {
    const k = key(i);
    const v = db.valueFrom(req.ptrs[i + 1], req.lens[i + 1]);
    db.set(k, v);
    rec.set(k, v);
  }
  log.append(rec);
  replySimple(o, "OK");
}

function configValue(name: string): string | null {
  if (name == "save") return "";
  if (name == "appendonly") return "yes";
  if (name == "appendfsync") return "always";
  if (name == "databases") return "1";
  if (name == "maxmemory") return "0";
  if (name == "port") return PORT.toString();
  return null;
}

const CONFIG_NAMES: string[] = ["save", "appendonly", "appendfsync", "databases", "maxmemory", "port"];

function cmdConfig(o: ByteQueue, argc: i32): void {
  if (argc >= 2 && req.is(1, "get")) {
    if (argc < 3) return wrongArgs(o, "config|get");
    const names = new Array<string>();
    for (let i = 2; i < argc; i++) {
      const want = req.lowerName(i);
      if (want == "*") {
        for (let k = 0; k < CONFIG_NAMES.length; k++) if (!names.includes(CONFIG_NAMES[k])) names.push(CONFIG_NAMES[k]);
      } else if (configValue(want) !== null && !names.includes(want)) {
        names.push(want);
      }
    }
    replyArray(o, names.length * 2);
    for (let k = 0; k < names.length; k++) {
      replyBulkString(o, names[k]);
      replyBulkString(o, configValue(names[k])!);
    }
  } else if (argc >= 2 && req.is(1, "resetstat")) {
    replySimple(o, "OK");
  } else {
    replyError(o, "ERR unsupported CONFIG subcommand");
  }
}

function infoText(): string {
  let s = "# Server\r\nredis_version:7.0.0\r\nlockstep_kv_version:1\r\nredis_mode:standalone\r\n";
  s += `tcp_port:${PORT}\r\n`;
  s += `\r\n# Clients\r\nconnected_clients:${connectionCount()}\r\n`;
  s += `\r\n# Persistence\r\naof_enabled:${log.isPersistent() ? 1 : 0}\r\nlockstep_log:${log.stats()}\r\n`;
  s += `lockstep_last_lsn:${log.lastAppended()}\r\nlockstep_durable_lsn:${log.durableLsn()}\r\n`;
  s += `\r\n# Stats\r\ntotal_commands_processed:${commandsServed}\r\n`;
  s += `\r\n# Keyspace\r\n`;
  if (db.keyCount() > 0) s += `db0:keys=${db.keyCount()},expires=0,avg_ttl=0\r\n`;
  return s;
}

// ---- start ----

function onDurable(): void {
  const conns = waiting.values();
  for (let i = 0; i < conns.length; i++) {
    conns[i].flushReplies();
    conns[i].maybeResume();
  }
}

function afterBatch(): void {
  log.kick(); // one disk write for every record of this batch
}

function onRecovered(): void {
  log.onDurable(onDurable);
  afterEvents(afterBatch);
  const r = listen(PORT, (): Connection => new KvConnection());
  if (r < 0) {
    print(`kv: listen on port ${PORT} failed: ${r}`);
    return;
  }
  print(`kv: listening on port ${PORT} (${db.keyCount()} keys)`);
}

export function main(): void {
  log.recover(onRecovered);
}
