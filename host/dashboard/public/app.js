// The dashboard: the live feed drives the hosts, VMs, charts and timeline; each action asks for
// confirmation in a <dialog> and reports its outcome in the status line (#outcome).

import { ApiFailure, call, connectLive, saveToken, savedToken } from "./api.js";
import { Charts } from "./charts.js";
import { addEvents, el, renderHosts, renderVms } from "./render.js";
import { updateReplicaVms } from "./replica.js";
import { loadGuests } from "./time-travel.js";

const $ = (selector) => document.querySelector(selector);

let latest = null;
const charts = new Charts($("#charts"));

// ---- the live feed ---------------------------------------------------------------------------

const live = connectLive({
  onState(state, detail) {
    const line = $("#connection");
    line.dataset.state = state;
    line.textContent = { connecting: "connecting…", live: "live", unauthorized: "token needed", offline: `offline: ${detail ?? ""}` }[state];
    if (state === "live") void loadGuests();
    const form = $("#token-form");
    form.hidden = state !== "unauthorized";
    if (state === "unauthorized") {
      $("#token-error").textContent = savedToken() ? "That token was refused." : "";
      $("#token").focus();
    }
  },
  onMessage(message) {
    if (message.type === "hello") {
      $("#events").replaceChildren();
      addEvents($("#events"), message.events);
      show(message.status, Date.now());
    } else if (message.type === "status") {
      show(message.status, message.ts);
    } else if (message.type === "event") {
      addEvents($("#events"), [message.event]);
    }
  },
});

function show(status, tsMs) {
  latest = status;
  renderHosts($("#hosts"), status.hosts, hostActions);
  renderVms($("#vms"), status.vms, vmActions);
  updateReplicaVms(status.vms);
  charts.add(status, tsMs);
  const storage = status.storage;
  $("#storage").textContent = storage === null ? "–" : `storage ${storage.state} (pid ${storage.pid})`;
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  saveToken($("#token").value);
  $("#token").value = "";
  live.reconnect();
});

// ---- confirmation dialog ---------------------------------------------------------------------

/**
 * Asks before acting. `fields`: form controls to show (each wrapped in a label); resolves with
 * the form's values on Confirm, null on Cancel or Escape.
 */
function confirmAction({ title, text, confirm, danger = false, fields = [] }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-fields").replaceChildren(...fields);
  const ok = $("#confirm-ok");
  ok.textContent = confirm;
  ok.classList.toggle("danger", danger);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        opener?.focus?.();
        resolve(dialog.returnValue === "ok" ? Object.fromEntries(new FormData($("#confirm-form"))) : null);
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    // The safe choice has the focus: Enter on a stray keypress cancels nothing irreversible.
    (fields.length > 0 ? dialog.querySelector("select, input") : $("#confirm-cancel")).focus();
  });
}

function select(name, label, options) {
  return el("label", {}, label, el("select", { name, required: true }, ...options.map(([value, text]) => el("option", { value }, text))));
}

/** Runs an action, showing "working", then its outcome, in the status line. */
async function act(what, run, describe) {
  const outcome = $("#outcome");
  outcome.dataset.state = "working";
  outcome.textContent = `${what}…`;
  try {
    const answer = await run();
    outcome.dataset.state = "ok";
    outcome.textContent = describe(answer);
  } catch (error) {
    outcome.dataset.state = "error";
    outcome.textContent = error instanceof ApiFailure ? `${what} failed: ${error.message} (${error.code})` : `${what} failed: ${error.message}`;
  }
}

// ---- actions ---------------------------------------------------------------------------------

const hostActions = {
  async kill(id) {
    const host = latest?.hosts.find((h) => h.id === id);
    const runs = host?.vms.map((vm) => `${vm.vm}'s ${vm.role}`).join(", ") || "no VM";
    const ok = await confirmAction({
      title: `Kill ${id}?`,
      text: `Sends SIGKILL to ${id} (pid ${host?.pid ?? "?"}), as a crash would. It runs ${runs}: their backups take over and the cluster restores redundancy. ${id} restarts empty.`,
      confirm: `Kill ${id}`,
      danger: true,
    });
    if (ok === null) return;
    await act(`Killing ${id}`, () => call("POST", `/api/hosts/${encodeURIComponent(id)}/kill`), (a) => `${a.host} (pid ${a.pid}) killed with ${a.signal}.`);
  },

  async network(id, connected) {
    const ok = await confirmAction({
      title: connected ? `Join ${id} to the network?` : `Cut ${id} off the network?`,
      text: connected
        ? `${id} reconnects to its peers and the storage server. A side that lost its generation meanwhile halts.`
        : `${id} loses its logging channels, switch links and storage connection, as in a network partition. Its process keeps running; the other side of each of its VMs takes over.`,
      confirm: connected ? "Join" : "Cut off",
      danger: !connected,
    });
    if (ok === null) return;
    await act(
      connected ? `Joining ${id}` : `Cutting ${id} off`,
      () => call("POST", `/api/hosts/${encodeURIComponent(id)}/network`, { connected }),
      () => `${id} is ${connected ? "connected again" : "cut off the network"}.`,
    );
  },
};

const vmActions = {
  async powerOff(name) {
    const ok = await confirmAction({
      title: `Power off ${name}?`,
      text: `The primary logs a power-off, so the backup stops at the same instruction and neither side goes live.`,
      confirm: "Power off",
      danger: true,
    });
    if (ok === null) return;
    await act(`Powering off ${name}`, () => call("POST", `/api/vms/${encodeURIComponent(name)}/control`, { action: "power-off" }), () => `${name} is powering off.`);
  },

  async migrate(name) {
    const vm = latest?.vms.find((v) => v.vm === name);
    const hosts = (latest?.hosts ?? []).filter((h) => h.state === "up").map((h) => [h.id, `${h.id}${h.id === vm?.primary?.host ? " (primary)" : h.id === vm?.backup?.host ? " (backup)" : ""}`]);
    const values = await confirmAction({
      title: `Migrate ${name}`,
      text: `Moves the primary or the backup to another host with a live clone. Primary and backup never share a host.`,
      confirm: "Migrate",
      fields: [select("role", "Move the", [["primary", "primary"], ["backup", "backup"]]), select("to", "to host", hosts)],
    });
    if (values === null) return;
    await act(
      `Migrating ${name}'s ${values.role} to ${values.to}`,
      () => call("POST", `/api/vms/${encodeURIComponent(name)}/migrate`, { role: values.role, to: values.to }),
      (a) => (a.moved ? `${name}'s ${a.role} now runs on ${a.to} (${a.ms} ms).` : `${name}'s ${a.role} runs on ${a.to} already.`),
    );
  },
};

$("#start-vm").addEventListener("click", async () => {
  let guests;
  try {
    guests = (await call("GET", "/api/guests")).guests;
  } catch (error) {
    $("#outcome").dataset.state = "error";
    $("#outcome").textContent = `Listing guests failed: ${error.message}`;
    return;
  }
  const values = await confirmAction({
    title: "Start a guest under FT",
    text: "Its backup starts on one host and its primary on another, the two least loaded.",
    confirm: "Start",
    fields: [
      select("guest", "Guest", guests.map((g) => [g, g])),
      el("label", {}, "VM name (optional)", el("input", { name: "vm", pattern: "[a-z0-9][a-z0-9\\-]{0,62}", placeholder: "the guest's name", autocomplete: "off" })),
    ],
  });
  if (values === null) return;
  const body = { guest: values.guest, ...(values.vm ? { vm: values.vm } : {}) };
  await act(`Starting ${body.vm ?? body.guest}`, () => call("POST", "/api/vms", body), (a) => `${a.vm} started: primary on ${a.primary}, backup on ${a.backup}, generation ${a.generation}.`);
});
