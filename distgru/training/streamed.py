"""Work prepared ahead by a thread and delivered on a device in order: the streamed panel's windows.

    for x in prefetch(lambda rows: cut(host_panel, rows, pin=True), row_blocks, device):
        ...                                   # x is on device; the next batches are being cut and uploaded

The thread runs ``produce`` (a host gather, which releases the GIL) up to ``DEPTH`` items ahead. On CUDA it also
issues each item's host→device copy on its own stream, so the copy overlaps the step the device is running; the
caller's stream waits for that copy's event before the item is used, and the item's memory is recorded on the
caller's stream so the allocator does not hand it out again while a kernel still reads it. On the CPU the item
is delivered as produced (the same thread and queue, no copy), so both devices run the same path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
DEPTH = 3
"""Items produced ahead of the one in use: enough to hide a gather and a copy behind one step."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


def prefetch(produce: Callable[[T], torch.Tensor], items: Iterable[T], device: torch.device) -> Iterator[torch.Tensor]:
    """``produce(item)`` of each item, on ``device``, in order, made ahead by one thread; an error in the thread
    is raised here, at the item where it happened."""
    ready: queue.Queue = queue.Queue(maxsize=DEPTH)
    stop = threading.Event()
    upload = _uploader(device)

    def put(obj: object) -> None:
        while not stop.is_set():  # a consumer that left early must not leave this thread blocked on a full queue
            try:
                ready.put(obj, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(upload(produce(item)))
        except BaseException as e:  # handed to the consumer, which raises it in its own thread
            put(_Failed(e))
        else:
            put(_END)

    thread = threading.Thread(target=work, name="distgru-prefetch", daemon=True)
    thread.start()
    try:
        while (got := ready.get()) is not _END:
            if isinstance(got, _Failed):
                raise got.error
            tensor, copied = got
            if copied is not None:
                stream = torch.cuda.current_stream(device)
                stream.wait_event(copied)
                tensor.record_stream(stream)
            yield tensor
    finally:
        stop.set()
        thread.join()


def _uploader(device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.cuda.Event | None]]:
    """Host tensor → (the tensor on ``device``, the event its copy completes, None without a copy)."""
    if device.type != "cuda":
        return lambda host: (host, None)
    stream = torch.cuda.Stream(device)

    def upload(host: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(stream):
            on_device = host.to(device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        return on_device, copied

    return upload
