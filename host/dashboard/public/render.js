// Hosts, VMs and the event timeline as DOM. Cards are keyed (data-host, data-vm) and updated in
// place on every snapshot, so a button keeps its focus while the figures around it change.

/** Events shown in the timeline; older ones fall off the end. */
const EVENTS_SHOWN_MAX = 200;
/** Events worth a colour in the timeline, by kind. */
const EVENT_KINDS = {
  failureDetected: "bad", hostExited: "bad", hostKilled: "bad", halted: "bad", redundancyLost: "bad", storageDown: "bad",
  cloneFailed: "bad", migrationFailed: "bad", hostLost: "bad", storageExited: "bad",
  wentLive: "warn", wentAlone: "warn", suspended: "warn", paused: "warn", networkCut: "warn",
  redundancyRestored: "good", cloneFinished: "good", migrationFinished: "good", hostRestarted: "good", storageUp: "good", vmStarted: "good",
};

/** A new element: `el("button", { type: "button", "data-action": "kill" }, "Kill")`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** Sets the text of `[data-field=name]` inside `root`, touching the DOM only on a change. */
function field(root, name, text) {
  const node = root.querySelector(`[data-field="${name}"]`);
  const value = text === null || text === undefined ? "–" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Keeps exactly one child per key, in order: `create(key)` makes a missing one. */
function keyed(container, attr, keys, create) {
  const existing = new Map([...container.children].map((child) => [child.getAttribute(attr), child]));
  const wanted = keys.map((key) => existing.get(key) ?? create(key));
  for (const [key, child] of existing) if (!keys.includes(key)) child.remove();
  wanted.forEach((child, i) => {
    if (container.children[i] !== child) container.insertBefore(child, container.children[i] ?? null);
  });
  return wanted;
}

export function formatCount(decimal) {
  if (decimal === null || decimal === undefined) return null;
  try {
    return BigInt(decimal).toLocaleString("en");
  } catch {
    return String(decimal);
  }
}

function formatMs(ms) {
  return typeof ms === "number" ? `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms` : null;
}

// ---- hosts -----------------------------------------------------------------------------------

export function renderHosts(container, hosts, actions) {
  const cards = keyed(container, "data-host", hosts.map((h) => h.id), (id) => hostCard(id, actions));
  hosts.forEach((host, i) => {
    const card = cards[i];
    card.dataset.state = host.state;
    field(card, "state", host.state);
    field(card, "pid", host.pid);
    field(card, "network", host.connected === null ? null : host.connected ? "connected" : "cut off");
    field(card, "storage", host.storageReachable === null ? null : host.storageReachable ? "reachable" : "unreachable");
    field(card, "load", `${host.vms.length} VM${host.vms.length === 1 ? "" : "s"}`);
    field(card, "vms", host.vms.map((vm) => `${vm.vm} ${vm.role} (${vm.state})`).join(", ") || "none");
    const alive = host.state !== "dead";
    card.querySelector('[data-action="kill"]').disabled = !alive;
    const network = card.querySelector('[data-action="network"]');
    network.disabled = !alive || host.connected === null;
    network.dataset.connected = String(host.connected !== false);
    const label = host.connected === false ? "Join network" : "Cut network";
    if (network.textContent !== label) network.textContent = label;
  });
}

function hostCard(id, actions) {
  const row = (label, name) => [el("dt", {}, label), el("dd", { "data-field": name })];
  return el(
    "article",
    { class: "card", "data-host": id, "aria-labelledby": `host-${id}-title` },
    el("h3", { id: `host-${id}-title` }, id, " ", el("span", { class: "badge", "data-field": "state" })),
    el("dl", {}, ...row("pid", "pid"), ...row("network", "network"), ...row("storage", "storage"), ...row("load", "load"), ...row("runs", "vms")),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "button", class: "danger", "data-action": "kill", "aria-label": `Kill ${id}`, onclick: () => actions.kill(id) }, "Kill"),
      el("button", {
        type: "button",
        "data-action": "network",
        onclick: (event) => actions.network(id, event.currentTarget.dataset.connected !== "true"),
      }, "Cut network"),
    ),
  );
}

// ---- VMs -------------------------------------------------------------------------------------

const VM_ROWS = [
  ["host", "host", (s) => s.host],
  ["state", "state", (s) => s.state],
  ["instructions", "icount", (s) => formatCount(s.icount)],
  ["log seq", "seq", (s) => formatCount(s.role === "primary" && s.state !== "live" ? s.ackedSeq : (s.replayedSeq ?? s.ackedSeq))],
];

export function renderVms(container, vms, actions) {
  const empty = container.parentElement.querySelector("[data-empty]");
  if (empty) empty.hidden = vms.length > 0;
  const cards = keyed(container, "data-vm", vms.map((vm) => vm.vm), (name) => vmCard(name, actions));
  vms.forEach((vm, i) => {
    const card = cards[i];
    card.dataset.state = vm.state;
    field(card, "state", vm.state);
    field(card, "generation", vm.generation);
    // One column per backup (`--backups N`): as many as it has or should have, at least one.
    const backups = vm.backups ?? (vm.backup === null ? [] : [vm.backup]);
    setBackupColumns(card, Math.max(1, backups.length, vm.backupsWanted ?? 1));
    field(card, "backups", `${backups.length} of ${vm.backupsWanted ?? 1}`);
    const sides = [["primary", vm.primary], ...[...card.querySelectorAll("thead th[data-side]")].map((th, i) => [th.dataset.side, backups[i] ?? null])];
    for (const [side, status] of sides) {
      for (const [, name, value] of VM_ROWS) field(card, `${side}-${name}`, status === null ? null : value(status));
    }
    const p = vm.primary;
    field(card, "lag", p === null || p.state !== "paired" ? null : `${formatMs(p.lagMs)} (${formatCount(p.lagIcount)} instr)`);
    field(card, "held", p?.heldOutputs ?? null);
    field(card, "hold", p === null || p.outputHoldMsP50 === null || p.outputHoldMsP50 === undefined ? null : `p50 ${formatMs(p.outputHoldMsP50)}, p99 ${formatMs(p.outputHoldMsP99)}`);
    const down = vm.primary === null;
    card.querySelector('[data-action="power-off"]').disabled = down;
    card.querySelector('[data-action="migrate"]').disabled = down;
  });
}

/** The first backup's fields are `backup-*`, the next ones' `backup2-*`, `backup3-*`, ... */
const backupSide = (i) => (i === 0 ? "backup" : `backup${i + 1}`);

/** Gives the VM's table `count` backup columns, rebuilding it only when the count changes. */
function setBackupColumns(card, count) {
  const table = card.querySelector("table");
  if (table.dataset.backups === String(count)) return;
  table.dataset.backups = String(count);
  const sides = Array.from({ length: count }, (_, i) => backupSide(i));
  table.querySelector("thead").replaceChildren(
    el("tr", {}, el("td"), el("th", { scope: "col" }, "primary"), ...sides.map((side, i) => el("th", { scope: "col", "data-side": side }, count === 1 ? "backup" : `backup ${i + 1}`))),
  );
  table.querySelector("tbody").replaceChildren(
    ...VM_ROWS.map(([label, key]) =>
      el("tr", {}, el("th", { scope: "row" }, label), el("td", { "data-field": `primary-${key}` }), ...sides.map((side) => el("td", { "data-field": `${side}-${key}` }))),
    ),
  );
}

function vmCard(name, actions) {
  return el(
    "article",
    { class: "card vm", "data-vm": name, "aria-labelledby": `vm-${name}-title` },
    el("h3", { id: `vm-${name}-title` }, name, " ", el("span", { class: "badge", "data-field": "state" })),
    el(
      "dl",
      {},
      el("dt", {}, "generation"), el("dd", { "data-field": "generation" }),
      el("dt", {}, "backups"), el("dd", { "data-field": "backups" }),
      el("dt", {}, "execution lag"), el("dd", { "data-field": "lag" }),
      el("dt", {}, "held outputs"), el("dd", { "data-field": "held" }),
      el("dt", {}, "output hold"), el("dd", { "data-field": "hold" }),
    ),
    el(
      "table",
      {},
      el("caption", { class: "visually-hidden" }, `${name}: primary and backups`),
      el("thead"),
      el("tbody"),
    ),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "button", class: "danger", "data-action": "power-off", "aria-label": `Power off ${name}`, onclick: () => actions.powerOff(name) }, "Power off"),
      el("button", { type: "button", "data-action": "migrate", "aria-label": `Migrate ${name}`, onclick: () => actions.migrate(name) }, "Migrate…"),
    ),
  );
}

// ---- events ----------------------------------------------------------------------------------

/** Adds events (oldest first) at the top of the timeline, newest first. */
export function addEvents(list, events) {
  for (const event of events) {
    const time = new Date(event.ts);
    const item = el(
      "li",
      { "data-event": event.event, "data-vm": event.vm ?? undefined, class: EVENT_KINDS[event.event] ?? "" },
      el("time", { datetime: event.ts }, Number.isNaN(time.getTime()) ? event.ts : time.toLocaleTimeString([], { hour12: false })),
      el("span", { class: "event-name" }, event.event),
      el("span", { class: "event-host" }, event.host),
      el("span", { class: "event-msg" }, event.msg + (event.generation !== null && event.generation !== undefined ? ` (generation ${event.generation})` : "")),
    );
    list.prepend(item);
  }
  while (list.children.length > EVENTS_SHOWN_MAX) list.lastElementChild.remove();
}
