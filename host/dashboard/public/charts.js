// Charts over time, one line per VM, drawn by uPlot (served from node_modules by `lockstep up`):
// execution lag, logging bandwidth and throughput, computed from consecutive status snapshots.

import uPlot from "/dashboard/vendor/uPlot.esm.js";

/** Points kept per chart: four minutes at one snapshot every 500 ms. */
const POINTS_MAX = 480;
const HEIGHT_PX = 180;
const PALETTE = ["#2f7ed8", "#e4572e", "#17a673", "#a05fd4", "#d4a017", "#d63384", "#0aa2c0", "#6c757d"];

const CHARTS = [
  { id: "chart-lag", label: "lag (ms)", value: (m) => m.lagMs },
  { id: "chart-bandwidth", label: "KiB/s", value: (m) => m.logKiBps },
  { id: "chart-throughput", label: "M instr/s", value: (m) => m.mips },
];

export class Charts {
  constructor(root) {
    this.root = root;
    this.times = [];
    /** VM name → one array per chart, aligned with `times`. */
    this.series = new Map();
    /** VM name → the last primary sample: { key, ts, icount, logBytes }. */
    this.last = new Map();
    this.plots = [];
    this.names = [];
    new ResizeObserver(() => this.resize()).observe(root);
    // Axis and grid colours follow the scheme: rebuild when it changes.
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.rebuild());
  }

  /** Adds one point per VM from a status snapshot taken at `tsMs`. */
  add(status, tsMs) {
    const metrics = new Map(status.vms.map((vm) => [vm.vm, this.metrics(vm, tsMs)]));
    for (const name of metrics.keys()) {
      if (!this.series.has(name)) this.series.set(name, CHARTS.map(() => this.times.map(() => null)));
    }
    this.times.push(tsMs / 1000);
    for (const [name, columns] of this.series) {
      const m = metrics.get(name);
      CHARTS.forEach((chart, i) => columns[i].push(m === undefined ? null : chart.value(m)));
    }
    if (this.times.length > POINTS_MAX) {
      this.times.shift();
      for (const columns of this.series.values()) for (const column of columns) column.shift();
    }
    const names = [...this.series.keys()];
    if (names.join() !== this.names.join()) this.rebuild();
    else this.plots.forEach((plot, i) => plot.setData(this.data(i)));
  }

  /** Lag now; bandwidth and throughput as rates since the last snapshot of the same primary. */
  metrics(vm, tsMs) {
    const p = vm.primary;
    if (p === null) {
      this.last.delete(vm.vm);
      return { lagMs: null, logKiBps: null, mips: null };
    }
    // A new primary (failover, migration) starts its counters afresh: no rate across the change.
    const key = `${p.host}/${p.generation}/${p.pid}`;
    const sample = { key, ts: tsMs, icount: BigInt(p.icount), logBytes: p.logBytesSent ?? 0 };
    const before = this.last.get(vm.vm);
    this.last.set(vm.vm, sample);
    const lagMs = typeof p.lagMs === "number" && p.state === "paired" ? p.lagMs : null;
    if (before === undefined || before.key !== key || tsMs <= before.ts) return { lagMs, logKiBps: null, mips: null };
    const seconds = (tsMs - before.ts) / 1000;
    const instructions = Number(sample.icount - before.icount);
    const bytes = sample.logBytes - before.logBytes;
    return {
      lagMs,
      logKiBps: bytes >= 0 ? bytes / 1024 / seconds : null,
      mips: instructions >= 0 ? instructions / 1e6 / seconds : null,
    };
  }

  data(chartIndex) {
    return [this.times, ...[...this.series.values()].map((columns) => columns[chartIndex])];
  }

  rebuild() {
    for (const plot of this.plots) plot.destroy();
    this.names = [...this.series.keys()];
    const style = getComputedStyle(document.documentElement);
    const fg = style.getPropertyValue("--muted").trim() || "#666";
    const grid = style.getPropertyValue("--line").trim() || "#ddd";
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    this.plots = CHARTS.map((chart, i) => {
      const target = this.root.querySelector(`#${chart.id}`);
      target.replaceChildren();
      return new uPlot(
        {
          width: this.widthOf(target),
          height: HEIGHT_PX,
          legend: { show: true },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(max ?? 1, 1e-3) * 1.1] } },
          axes: [{ ...axis }, { ...axis, label: chart.label, size: 60 }],
          series: [{}, ...this.names.map((name, j) => ({ label: name, stroke: PALETTE[j % PALETTE.length], width: 2, spanGaps: false }))],
        },
        this.data(i),
        target,
      );
    });
  }

  resize() {
    for (const [i, plot] of this.plots.entries()) {
      const target = this.root.querySelector(`#${CHARTS[i].id}`);
      plot.setSize({ width: this.widthOf(target), height: HEIGHT_PX });
    }
  }

  widthOf(target) {
    return Math.max(200, Math.floor(target.parentElement.clientWidth - 8));
  }
}
