// Restoring redundancy (§3.1 of the paper, "the new backup is started on another host"): which
// VM runs with fewer backups than it should, and where its clone should go. Pure: the cluster
// service polls the hosts, asks this module what to do, and does it.
//
// A VM needs a clone when its primary runs alone (it went live, or its backups were declared
// dead) or with fewer backups than wanted (`--backups N`: one of them was dropped), is not in
// the middle of a contest for the next generation, and no clone of it is under way. One clone
// per VM at a time: each takes a snapshot of the running guest. The target is the healthiest,
// least loaded host that runs no copy of the VM: up, answering, on the network, reaching
// storage; then the fewest VMs running; then its id, so that the choice is stable. No host
// ever holds two copies of one VM: primary and backup, or two backups.

import type { HostStatus } from "./host-daemon.js";

export interface HostView {
  id: string;
  url: string;
  /** Alive, answering its status polls, connected, and reaching the storage server. */
  healthy: boolean;
  status: HostStatus | null;
}

export interface CloneAction {
  vm: string;
  /** The host whose primary is cloned, and the host that receives the clone. */
  from: HostView;
  to: HostView;
}

/** The clones to start now, at most one per VM, none for a VM in `busy`; `backups` wanted per VM. */
export function planClones(hosts: readonly HostView[], busy: ReadonlySet<string>, backups = 1): CloneAction[] {
  const running = (host: HostView) => (host.status?.vms ?? []).filter((vm) => vm.result === null && vm.state !== "halted");
  const load = new Map(hosts.map((host) => [host.id, running(host).length]));
  const actions: CloneAction[] = [];
  for (const from of hosts) {
    if (!from.healthy) continue;
    for (const vm of running(from)) {
      if (vm.role !== "primary" || busy.has(vm.vm)) continue;
      // A primary's own count: it includes a clone whose backup has not connected yet.
      const has = vm.state === "alone" ? 0 : vm.state === "paired" ? ("backups" in vm ? vm.backups.length : 1) : backups;
      if (has >= backups) continue;
      const candidates = hosts
        .filter((host) => host.healthy && host !== from && !running(host).some((other) => other.vm === vm.vm))
        .sort((a, b) => load.get(a.id)! - load.get(b.id)! || (a.id < b.id ? -1 : 1));
      const to = candidates[0];
      if (to === undefined) continue;
      // Count the clone now, so that two VMs left alone at once spread over the hosts.
      load.set(to.id, load.get(to.id)! + 1);
      actions.push({ vm: vm.vm, from, to });
    }
  }
  return actions;
}
