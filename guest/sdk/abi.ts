// The raw Lockstep ABI (docs/abi.md): imports from module "lockstep" and the event kinds.
// Guest code should not need this file: the rest of the SDK wraps every import.

// ---- event kinds delivered to __ls_irq(kind, a, b) ----
export const EV_TIMER: i32 = 1;
export const EV_NIC_ACCEPT: i32 = 2;
export const EV_NIC_DATA: i32 = 3;
export const EV_NIC_CLOSED: i32 = 4;
export const EV_NIC_TX_CREDIT: i32 = 5;
export const EV_DISK_DONE: i32 = 6;
/** One past the largest event kind. */
export const EV_KIND_COUNT: i32 = 7;

// ---- error codes (negative i32 results) ----
export const ERR_BAD_HANDLE: i32 = -1;
export const ERR_BAD_ARGUMENT: i32 = -2;
export const ERR_LIMIT: i32 = -3;
export const ERR_CLOSED: i32 = -4;

// ---- limits ----
export const DISK_BLOCK_SIZE: i32 = 4096;
export const DISK_IO_BLOCKS_MAX: i32 = 256;
export const DISK_IO_IN_FLIGHT_MAX: i32 = 64;
export const RANDOM_FILL_MAX: i32 = 65536;
export const CONSOLE_WRITE_MAX: i32 = 65536;

export const CLOCK_MONOTONIC: i32 = 0;
export const CLOCK_WALL: i32 = 1;

// ---- imports ----
// @ts-ignore: decorator
@external("lockstep", "clock_now")
export declare function clock_now(clock: i32): i64;

// @ts-ignore: decorator
@external("lockstep", "random_fill")
export declare function random_fill(ptr: usize, len: i32): void;

// @ts-ignore: decorator
@external("lockstep", "console_write")
export declare function console_write(ptr: usize, len: i32): void;

// @ts-ignore: decorator
@external("lockstep", "timer_set")
export declare function timer_set(period_ms: i32): void;

// @ts-ignore: decorator
@external("lockstep", "irq_mask")
export declare function irq_mask(masked: i32): i32;

// @ts-ignore: decorator
@external("lockstep", "halt")
export declare function halt(): void;

// @ts-ignore: decorator
@external("lockstep", "exit")
export declare function exit(code: i32): void;

// @ts-ignore: decorator
@external("lockstep", "nic_listen")
export declare function nic_listen(port: i32): i32;

// @ts-ignore: decorator
@external("lockstep", "nic_recv")
export declare function nic_recv(conn: i32, ptr: usize, len: i32): i32;

// @ts-ignore: decorator
@external("lockstep", "nic_send")
export declare function nic_send(conn: i32, ptr: usize, len: i32): i32;

// @ts-ignore: decorator
@external("lockstep", "nic_close")
export declare function nic_close(conn: i32): void;

// @ts-ignore: decorator
@external("lockstep", "disk_blocks")
export declare function disk_blocks(): i32;

// @ts-ignore: decorator
@external("lockstep", "disk_read")
export declare function disk_read(block: i32, count: i32, ptr: usize, tag: i32): i32;

// @ts-ignore: decorator
@external("lockstep", "disk_write")
export declare function disk_write(block: i32, count: i32, ptr: usize, tag: i32): i32;
