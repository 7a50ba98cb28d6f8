"""A bounded FIFO ring buffer: O(1) push, pop and push back to the front; never grows, refuses
when full."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class RingBuffer(Generic[T]):
    __slots__ = ("_capacity", "_head", "_size", "_slots")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._slots: list[T | None] = [None] * capacity
        self._capacity = capacity
        self._head = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return self._capacity

    def push(self, item: T) -> bool:
        """Append `item`; False, and nothing stored, when the buffer is full."""
        if self._size == self._capacity:
            return False
        self._slots[(self._head + self._size) % self._capacity] = item
        self._size += 1
        return True

    def push_front(self, item: T) -> bool:
        """Put `item` first in line; False, and nothing stored, when the buffer is full."""
        if self._size == self._capacity:
            return False
        self._head = (self._head - 1) % self._capacity
        self._slots[self._head] = item
        self._size += 1
        return True

    def peek(self) -> T | None:
        """The oldest item, left in place, or None when empty."""
        return self._slots[self._head] if self._size else None

    def pop(self) -> T | None:
        """The oldest item, or None when empty."""
        if not self._size:
            return None
        item = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % self._capacity
        self._size -= 1
        return item

    def clear(self) -> None:
        self._slots = [None] * self._capacity
        self._head = 0
        self._size = 0
