import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Two cores: guests run in worker threads and child processes of their own.
    fileParallelism: true,
    maxWorkers: 2,
  },
});
