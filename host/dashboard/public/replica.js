// The live replica: a Web Worker (/dashboard/replica-worker.js, host/replica/browser/) runs
// the chosen VM's own module from a snapshot of its primary and replays the primary's log as
// it is written, on this browser's engine and CPU. "Check the digest" asks the primary to log
// the digest of its state (POST /api/vms/:vm/digest); the replica computes its own at the same
// instruction and would stop as a divergence if it differed. Each digest the replica passes
// is listed with the primary's answer beside it.

import { ApiFailure, call, savedToken } from "./api.js";

/** Console output kept on the page. */
const CONSOLE_CHARS_MAX = 16 * 1024;
/** Digest rows kept, newest first. */
const DIGEST_ROWS_MAX = 20;
/**
 * After the primary's feed ends (a failover, a migration), a new replica of whichever primary
 * runs the VM now is opened, this often and at most this many times in a row.
 */
const FOLLOW_RETRY_MS = 1000;
const FOLLOW_TRIES_MAX = 30;

const $ = (selector) => document.querySelector(selector);

let worker = null;
let replicaVm = null;
/** Reopenings since the replica last ran; null: the operator stopped it, do not follow. */
let followTries = null;
let followTimer = null;
/** The primary's answers to this page's probes, by icount: shown beside the replica's digest. */
const primaryDigests = new Map();
let primaryIcount = null;

/** Keeps the VM list in step with the cluster's status; notes the primary's count for the lag. */
export function updateReplicaVms(vms) {
  const select = $("#replica-vm");
  const names = vms.map((vm) => vm.vm);
  const current = [...select.options].map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) select.value = chosen;
  }
  const vm = vms.find((v) => v.vm === replicaVm);
  primaryIcount = vm?.primary?.icount ?? null;
  if (primaryIcount !== null) field("primary-icount", primaryIcount);
}

function field(name, text) {
  const node = document.querySelector(`#replica-figures [data-field="${name}"]`);
  if (node.textContent !== String(text)) node.textContent = String(text);
}

function setState(state, text) {
  const line = $("#replica-state");
  line.dataset.state = state;
  line.textContent = text;
  $("#replica-start").disabled = state === "opening" || state === "running";
  $("#replica-stop").disabled = state !== "opening" && state !== "running";
  $("#replica-check").disabled = state !== "running";
}

function start(vm, following = false) {
  stop(false);
  replicaVm = vm;
  if (!following) {
    followTries = 0;
    primaryDigests.clear();
    $("#replica-console").textContent = "";
    $("#replica-digests").replaceChildren();
    for (const name of ["icount", "primary-icount", "records", "bytes", "started-at"]) field(name, "–");
    setState("opening", `Opening a replica of ${vm}: snapshot of its primary, then its log…`);
  }
  worker = new Worker("/dashboard/replica-worker.js");
  worker.addEventListener("message", (event) => receive(event.data));
  worker.addEventListener("error", (event) => {
    followTries = null;
    setState("error", `The replica failed: ${event.message}`);
    worker?.terminate();
    worker = null;
  });
  worker.postMessage({ vm, token: savedToken() });
}

/** `byOperator`: the Stop button; otherwise the replica is being replaced. */
function stop(byOperator = true) {
  clearTimeout(followTimer);
  if (byOperator) followTries = null;
  if (worker === null) return;
  worker.terminate();
  worker = null;
  if (byOperator) setState("stopped", `Stopped the replica of ${replicaVm}.`);
}

/** The feed ended without a divergence: replicate whichever primary runs the VM now. */
function follow(why) {
  worker?.terminate();
  worker = null;
  if (followTries === null || followTries >= FOLLOW_TRIES_MAX) {
    setState("ended", `${why}${followTries === null ? "" : ` Gave up after ${FOLLOW_TRIES_MAX} tries to follow ${replicaVm}'s new primary.`}`);
    return;
  }
  followTries++;
  setState("opening", `${why} Following ${replicaVm}'s new primary (try ${followTries})…`);
  followTimer = setTimeout(() => start(replicaVm, true), FOLLOW_RETRY_MS);
}

function receive(event) {
  switch (event.t) {
    case "opened":
      followTries = 0;
      field("started-at", `icount ${event.icount} (record ${event.seq}), snapshot of ${Math.round(event.snapshotBytes / 1024)} KiB from ${event.host}`);
      field("icount", event.icount);
      setState("running", `Replaying ${event.vm}'s log as its primary on ${event.host} writes it (generation ${event.generation}).`);
      break;
    case "progress":
      field("icount", event.icount);
      field("records", event.records);
      field("bytes", event.bytes < 1024 ? `${event.bytes} bytes` : `${(event.bytes / 1024).toFixed(1)} KiB`);
      break;
    case "console": {
      const pre = $("#replica-console");
      const text = (pre.textContent + event.text).slice(-CONSOLE_CHARS_MAX);
      pre.textContent = text;
      pre.scrollTop = pre.scrollHeight;
      break;
    }
    case "digest":
      addDigest(event.icount, event.digest);
      break;
    case "ended": {
      field("icount", event.icount);
      const why = `The replica stopped at icount ${event.icount} (${event.stop}): ${event.message ?? ""}${event.reason ? ` — ${event.reason}` : ""}.`;
      if (event.stop === "divergence" || event.stop === "trap" || event.stop === "error") {
        followTries = null;
        setState("error", why);
        worker?.terminate();
        worker = null;
      } else {
        follow(why);
      }
      break;
    }
    case "error":
      if (followTries === 0 || followTries === null) {
        setState("error", `The replica could not start: ${event.message}`);
        worker?.terminate();
        worker = null;
      } else {
        follow(`No replica yet: ${event.message}.`);
      }
      break;
  }
}

/** A probe the replica passed: its own digest at `icount`, beside the primary's if asked here. */
function addDigest(icount, digest) {
  const row = document.createElement("tr");
  row.dataset.icount = icount;
  for (const [text, name] of [[icount, "icount"], [digest, "replica"], ["", "primary"], ["", "verdict"]]) {
    const cell = document.createElement("td");
    cell.dataset.field = name;
    cell.textContent = text;
    row.append(cell);
  }
  showVerdict(row);
  const body = $("#replica-digests");
  body.prepend(row);
  while (body.children.length > DIGEST_ROWS_MAX) body.lastElementChild.remove();
}

/**
 * The replica reached the probe's count before or after the primary's answer came back
 * through the cluster: whichever comes second fills in the comparison.
 */
function showVerdict(row) {
  const primary = primaryDigests.get(row.dataset.icount);
  const replica = row.querySelector('[data-field="replica"]').textContent;
  const verdict = primary === undefined ? "equal to the digest the primary logged" : primary === replica ? "match" : "MISMATCH";
  row.dataset.verdict = verdict === "MISMATCH" ? "mismatch" : "match";
  row.querySelector('[data-field="primary"]').textContent = primary ?? "(logged)";
  row.querySelector('[data-field="verdict"]').textContent = verdict;
}

async function checkDigest() {
  const vm = replicaVm;
  const line = $("#replica-check-result");
  line.textContent = `Asking ${vm}'s primary for its digest…`;
  try {
    const answer = await call("POST", `/api/vms/${encodeURIComponent(vm)}/digest`);
    primaryDigests.set(answer.icount, answer.digest);
    for (const row of document.querySelectorAll(`#replica-digests tr[data-icount="${answer.icount}"]`)) showVerdict(row);
    line.textContent = `${vm}'s primary on ${answer.host} logged ${answer.digest} at icount ${answer.icount}; the replica checks its own there.`;
  } catch (error) {
    line.textContent = `Digest check failed: ${error.message}${error instanceof ApiFailure ? ` (${error.code})` : ""}`;
  }
}

$("#replica-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const vm = $("#replica-vm").value;
  if (vm) start(vm);
});
$("#replica-stop").addEventListener("click", () => stop());
$("#replica-check").addEventListener("click", () => void checkDigest());
