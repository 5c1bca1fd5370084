// A FIFO with a hard capacity, for the cores' buffers. Shifting is O(1) amortized: the dead
// head is compacted away once it is both large and most of the array.

import { assert } from "../errors.js";

export class BoundedQueue<T> {
  private items: T[] = [];
  private head = 0;

  constructor(
    readonly capacity: number,
    private readonly what: string,
  ) {
    assert(Number.isSafeInteger(capacity) && capacity > 0, `${what}: capacity is a positive integer`);
  }

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    assert(this.length < this.capacity, `${this.what}: at most ${this.capacity} entries`);
    this.items.push(item);
  }

  /** The index-th entry from the front. */
  at(index: number): T {
    assert(index >= 0 && index < this.length, `${this.what}: index in range`);
    return this.items[this.head + index]!;
  }

  shift(): T {
    assert(this.length > 0, `${this.what}: shift from a non-empty queue`);
    const item = this.items[this.head]!;
    this.head++;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}
