"""The ring buffer keeps order, refuses when full and never grows (rinha/buffer.py)."""

from rinha.buffer import RingBuffer


def test_fifo_across_wraparound_and_refusal_when_full() -> None:
    buffer: RingBuffer[int] = RingBuffer(3)
    assert [buffer.push(n) for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert buffer.pop() == 1
    assert buffer.push(5)
    assert len(buffer) == 3
    assert [buffer.pop() for _ in range(4)] == [2, 3, 5, None]
    assert len(buffer) == 0


def test_push_front_jumps_the_line_and_peek_leaves_it() -> None:
    buffer: RingBuffer[int] = RingBuffer(3)
    assert buffer.peek() is None
    assert buffer.push(1) and buffer.push(2)
    assert buffer.push_front(0)
    assert not buffer.push_front(9)
    assert buffer.peek() == 0
    assert [buffer.pop() for _ in range(4)] == [0, 1, 2, None]
