// planClones (host/cluster/redundancy.ts), the cluster service's pure decision: which VM needs
// a clone and where it goes, with one backup per VM and with several (`--backups N`).

import { describe, expect, it } from "vitest";
import type { HostStatus } from "../../host/cluster/host-daemon.js";
import type { VmStatus } from "../../host/cluster/hosted-vm.js";
import { type HostView, planClones } from "../../host/cluster/redundancy.js";

function side(vm: string, role: "primary" | "backup", state: string, backups = 0): VmStatus {
  const base = { vm, guest: vm, role, state, generation: 1, ports: {}, result: null };
  return (role === "primary" ? { ...base, backups: Array.from({ length: backups }, (_, i) => ({ id: `b${i + 1}` })) } : base) as unknown as VmStatus;
}

function host(id: string, vms: VmStatus[], healthy = true): HostView {
  const status = { id, pid: 1, url: `http://${id}`, storageReachable: true, connected: true, vms } as HostStatus;
  return { id, url: `http://${id}`, healthy, status };
}

describe("planClones", () => {
  it("one backup wanted: a primary running alone gets a clone on the least loaded other host", () => {
    const hosts = [host("h1", [side("kv", "primary", "alone")]), host("h2", [side("other", "backup", "replaying")]), host("h3", [])];
    expect(planClones(hosts, new Set()).map((a) => `${a.vm} ${a.from.id}→${a.to.id}`)).toEqual(["kv h1→h3"]);
    // Paired with its one backup: nothing to do. Busy: nothing either.
    expect(planClones([host("h1", [side("kv", "primary", "paired", 1)]), host("h2", [])], new Set())).toEqual([]);
    expect(planClones(hosts, new Set(["kv"]))).toEqual([]);
  });

  it("two wanted: a primary with one backup gets a second, never on a host holding a copy of the VM", () => {
    const hosts = [
      host("h1", [side("kv", "primary", "paired", 1)]),
      host("h2", [side("kv", "backup", "replaying")]),
      host("h3", [side("a", "primary", "paired", 2), side("b", "primary", "paired", 2)]),
      host("h4", [side("c", "backup", "replaying")]),
    ];
    expect(planClones(hosts, new Set(), 2).map((a) => `${a.vm} ${a.from.id}→${a.to.id}`)).toEqual(["kv h1→h4"]);
    // Two already, or settling a generation (its set is fixed): nothing.
    const full = [host("h1", [side("kv", "primary", "paired", 2)]), host("h2", []), host("h3", [])];
    expect(planClones(full, new Set(), 2)).toEqual([]);
    const settling = [host("h1", [side("kv", "primary", "renewing", 1)]), host("h2", []), host("h3", [])];
    expect(planClones(settling, new Set(), 2)).toEqual([]);
  });

  it("two wanted, no host free of the VM: no clone; unhealthy hosts are neither source nor target", () => {
    const crowded = [host("h1", [side("kv", "primary", "paired", 1)]), host("h2", [side("kv", "backup", "replaying")])];
    expect(planClones(crowded, new Set(), 2)).toEqual([]);
    const sick = [host("h1", [side("kv", "primary", "alone")]), host("h2", [], false), host("h3", [])];
    expect(planClones(sick, new Set(), 2).map((a) => a.to.id)).toEqual(["h3"]);
  });
});
