// Time travel: upload a recorded log, replay it on the cluster's server up to an instruction
// count (host/dashboard/time-travel.ts, the same replay as `lockstep replay --until`), and show
// the result line and the console output up to there. After a replay of the whole log, the
// slider moves through it.

import { ApiFailure, call } from "./api.js";

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
  const query = new URLSearchParams({ guest, ...(until === "" ? {} : { until }) });
  try {
    const r = await call("POST", `/api/replay?${query}`, file);
    line.dataset.state = "ok";
    // The very line `lockstep replay` prints, then how the replay ended.
    line.textContent = `{"icount":${r.icount},"digest":"${r.digest}","entries":${r.entries}} (${r.stop}${r.message ? `: ${r.message}` : ""})`;
    $("#tt-console").textContent = r.console + (r.consoleTruncated ? `\n… ${r.consoleBytes} bytes in all` : "");
    if (until === "") setSliderEnd(BigInt(r.icount));
  } catch (error) {
    line.dataset.state = "error";
    line.textContent = `Replay failed: ${error.message}${error instanceof ApiFailure ? ` (${error.code})` : ""}`;
    $("#tt-console").textContent = "";
  }
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
