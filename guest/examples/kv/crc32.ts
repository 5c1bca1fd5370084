// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven.

const TABLE = new StaticArray<u32>(256);

function initTable(): void {
  for (let i: u32 = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xedb88320 ^ (c >> 1) : c >> 1;
    unchecked(TABLE[i] = c);
  }
}
initTable();

/** Continues a CRC over `len` bytes at `ptr`. Start with crc = 0. */
export function crc32(crc: u32, ptr: usize, len: i32): u32 {
  let c = ~crc;
  for (let i = 0; i < len; i++) {
    c = unchecked(TABLE[(c ^ <u32>load<u8>(ptr + <usize>i)) & 0xff]) ^ (c >> 8);
  }
  return ~c;
}
