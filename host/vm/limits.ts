// Limits of the virtual devices, as docs/abi.md promises them to guests. Both halves of a
// device (the vCPU's and the main thread's) enforce the same numbers.

export const CONNECTIONS_MAX = 1024;
/** Unread bytes per connection; the host stops reading the socket past this. */
export const RX_BUFFER_BYTES_MAX = 256 * 1024;
/** Bytes a guest may have sent on a connection before the host confirms them. */
export const TX_WINDOW_BYTES = 256 * 1024;
export const DISK_IOS_MAX = 64;
export const DISK_IO_BLOCKS_MAX = 256;
export const BLOCK_BYTES = 4096;
export const RANDOM_FILL_BYTES_MAX = 65536;
export const CONSOLE_WRITE_BYTES_MAX = 65536;
/** The most memory a wasm32 guest can address: 4 GiB, in 64 KiB pages. */
export const MEMORY_PAGES_LIMIT = 65536;
