// `npm run bench`: every benchmark, one after the other, each printing ratios against a
// baseline measured in this same process.
import { formatResult, runMeteringBench } from "./metering.js";
import { printCloneBench, runCloneBench } from "./clone.js";
import { printClusterBench, runClusterBench } from "./cluster.js";
import { printBackupsBench, runBackupsBench } from "./backups.js";
import { printCompressionBench, printSettingsSweep, runCompressionBench, runSettingsSweep } from "./compression.js";
import { printDiskReadsBench, runDiskReadsBench } from "./disk-reads.js";
import { printFtBench, runFtBench } from "./ft.js";
import { printReplicaBench, runReplicaBench } from "./replica.js";
import { printSnapshotBench, runSnapshotBench } from "./snapshot.js";
import { printSwitchBench, runSwitchBench } from "./switch.js";
import { printVmBench, runVmBench } from "./vm.js";

console.log("== metering overhead on the cpu guest (metered / raw time)");
console.log(formatResult(await runMeteringBench()));
console.log("\n== snapshots mid-computation: the primary's pause, and what unwinding support costs");
printSnapshotBench(await runSnapshotBench());
console.log("\n== live clone end to end: pause, snapshot, and the new pair connected");
printCloneBench(await runCloneBench());
console.log("\n== record, replay and log bandwidth");
printVmBench(await runVmBench());

console.log("\n== fault tolerance (primary and backup in one process, real WebSocket channel)");
printFtBench(await runFtBench());

console.log("\n== disk reads logged vs executed on the backup (§4.2): kv recovering its data set under FT");
printDiskReadsBench(await runDiskReadsBench());

console.log("\n== fault tolerance on the embedded cluster (lockstep up: real processes on loopback)");
printClusterBench(await runClusterBench());

console.log("\n== more than one backup (lockstep up --backups N): kv with one and two backups, losing one of two");
printBackupsBench(await runBackupsBench());

console.log("\n== log compression on the logging channel (kv under redis-benchmark, deflate on and off)");
printSettingsSweep(await runSettingsSweep());
printCompressionBench(await runCompressionBench());

console.log("\n== clients through the switch: redis-benchmark, durable writes, failover as a client sees it");
printSwitchBench(await runSwitchBench());

console.log("\n== the dashboard's live replica: kv with and without a browser replaying it, and how far the browser trails");
printReplicaBench(await runReplicaBench());
