// `--arbiter etcd://HOST:PORT`: the URL and credentials of the etcd arbiter, apart from the
// arbiter itself (etcd-arbiter.ts) so that the CLI checks them without loading the gRPC client,
// which a host on the default arbiter never needs.

import { LockstepError } from "../errors.js";

/** "user:password" for an etcd with authentication enabled; read from the environment only. */
export const ETCD_AUTH_ENV = "LOCKSTEP_ETCD_TOKEN";

/**
 * `etcd://HOST:PORT[,HOST:PORT...]` → the gRPC endpoints ("HOST:PORT"). Several endpoints name
 * the members of one etcd cluster; the client uses any that answers.
 */
export function parseEtcdUrl(url: string): string[] {
  const usage = (why: string) =>
    new LockstepError("USAGE", `--arbiter takes etcd://HOST:PORT (or etcd://HOST:PORT,HOST:PORT,...), not "${url}": ${why}`);
  const match = /^etcd:\/\/([^/?#@]+)\/?$/.exec(url);
  if (match === null) throw usage(url.startsWith("etcd://") ? "no path, query or user part" : "the scheme is etcd://");
  return match[1]!.split(",").map((endpoint) => {
    const parts = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(endpoint);
    if (parts === null) throw usage(`"${endpoint}" is not HOST:PORT`);
    const port = Number(parts[2]);
    if (port < 1 || port > 65535) throw usage(`port ${port} is out of range`);
    return `${parts[1]}:${port}`;
  });
}

/** $LOCKSTEP_ETCD_TOKEN as etcd credentials; null when unset. */
export function etcdAuthFromEnv(env: NodeJS.ProcessEnv = process.env): { username: string; password: string } | null {
  const value = env[ETCD_AUTH_ENV];
  if (value === undefined || value === "") return null;
  const colon = value.indexOf(":");
  if (colon <= 0) throw new LockstepError("USAGE", `$${ETCD_AUTH_ENV} takes user:password`);
  return { username: value.slice(0, colon), password: value.slice(colon + 1) };
}
