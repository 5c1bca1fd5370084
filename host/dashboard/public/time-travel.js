// Time travel: upload a recorded log, replay it on the cluster's server up to an instruction
// count (host/dashboard/time-travel.ts, the same replay as `lockstep replay --until`), and show
// the result line, the console output up to there, and a hex view of 256 bytes of the guest's
// memory at that count. After a replay of the whole log, the slider moves through it.

import { ApiFailure, call } from "./api.js";

/** Bytes of memory shown, 16 to a line. */
const MEMORY_VIEW_BYTES = 256;

/** Slider positions across the log: arrow keys move by one of these. */
const SLIDER_STEPS = 200;

const $ = (selector) => document.querySelector(selector);
let guestsLoaded = false;

/** Fills the guest list, once the page can call the API (after the token, if any). */
export async function loadGuests() {
  if (guestsLoaded) return;
  guestsLoaded = true;
  try {
    const { guests } = await call("GET", "/api/guests");
    $("#tt-guest").replaceChildren(...guests.map((g) => new Option(g, g)));
  } catch {
    guestsLoaded = false;
  }
}

async function replay() {
  const file = $("#tt-log").files[0];
  if (file === undefined) return;
  const guest = $("#tt-guest").value;
  const until = $("#tt-until").value.trim();
  const line = $("#tt-result");
  line.dataset.state = "working";
  line.textContent = `Replaying ${file.name} ${until === "" ? "to its end" : `to instruction ${until}`}…`;
  const memoryOffset = /^\d{1,10}$/.test($("#tt-memory-offset").value.trim()) ? $("#tt-memory-offset").value.trim() : "0";
  const query = new URLSearchParams({ guest, ...(until === "" ? {} : { until }), memoryOffset, memoryBytes: String(MEMORY_VIEW_BYTES) });
  try {
    const r = await call("POST", `/api/replay?${query}`, file);
    line.dataset.state = "ok";
    // The very line `lockstep replay` prints, then how the replay ended.
    line.textContent = `{"icount":${r.icount},"digest":"${r.digest}","entries":${r.entries}} (${r.stop}${r.message ? `: ${r.message}` : ""})`;
    $("#tt-console").textContent = r.console + (r.consoleTruncated ? `\n… ${r.consoleBytes} bytes in all` : "");
    $("#tt-memory").textContent = r.memory === null ? "" : hexView(r.memory);
    if (until === "") setSliderEnd(BigInt(r.icount));
  } catch (error) {
    line.dataset.state = "error";
    line.textContent = `Replay failed: ${error.message}${error instanceof ApiFailure ? ` (${error.code})` : ""}`;
    $("#tt-console").textContent = "";
    $("#tt-memory").textContent = "";
  }
}

/** Offset, 16 bytes in hex, the same as text: the classic dump, one line per 16 bytes. */
export function hexView({ offset, hex, sizeBytes }) {
  const lines = [`${sizeBytes} bytes of memory; from ${offset}:`];
  for (let at = 0; at < hex.length; at += 32) {
    const pairs = hex.slice(at, at + 32).match(/../g) ?? [];
    const text = pairs.map((p) => { const c = parseInt(p, 16); return c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : "."; }).join("");
    lines.push(`${(offset + at / 2).toString(16).padStart(8, "0")}  ${pairs.join(" ").padEnd(47)}  ${text}`);
  }
  return lines.join("\n");
}

function setSliderEnd(end) {
  const slider = $("#tt-slider");
  slider.max = String(end);
  slider.step = String(end / BigInt(SLIDER_STEPS) || 1n);
  slider.value = String(end);
  slider.disabled = end === 0n;
}

$("#time-travel-form").addEventListener("submit", (event) => {
  event.preventDefault();
  void replay();
});
// A new log starts over: the slider belongs to the log it was measured on.
$("#tt-log").addEventListener("change", () => {
  $("#tt-slider").disabled = true;
  $("#tt-result").textContent = "";
  $("#tt-console").textContent = "";
});
$("#tt-slider").addEventListener("input", (event) => {
  $("#tt-until").value = event.currentTarget.value;
});
$("#tt-until").addEventListener("input", (event) => {
  const slider = $("#tt-slider");
  if (!slider.disabled && /^\d+$/.test(event.currentTarget.value)) slider.value = event.currentTarget.value;
});
// On release (or each arrow key), not on every pixel of a drag: each move is a replay.
$("#tt-slider").addEventListener("change", () => void replay());
