import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The default table for people, then one plain closing line for CI tooling.
    reporters: ["default", "./test/reporters/closing-line.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Two cores: guests run in worker threads and child processes of their own.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
