"""The host tier's copy pipeline: candidates computed in host RAM, chunk by chunk, copied to the device.

When the checkpoints' stacks do not fit on the GPU but do in host RAM, the weighted sum
is computed by the CPU (it reads the K stacks at host-memory bandwidth) and only the
candidate, P elements in the live dtype, crosses PCIe. The candidate goes through two
pinned chunk buffers: while the GPU's copy engine copies chunk ``i`` out of one buffer
(on a side stream), the CPU computes chunk ``i + 1`` into the other, so the copy is
hidden behind the computation. The stacks themselves stay in pageable memory: pinning
hundreds of gigabytes would lock them out of the kernel's reach and gain nothing, since
they never cross PCIe.

On a CPU device (the tests) the same chunks are copied synchronously.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Elements per chunk: 32 MB of float32, large enough for the copies to reach PCIe bandwidth.
HOST_CHUNK_ELEMENTS = 8 * 1024 * 1024


class ChunkPipeline:
    """Double-buffered, overlapped copies of host-computed chunks into device tensors.

    Args:
        device: Where the destination tensors live.
        chunk: Elements per buffer.
        pin: Pin the buffers (default: when ``device`` is CUDA).
    """

    def __init__(self, device: torch.device, chunk: int, pin: bool | None = None) -> None:
        import torch

        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin is None else pin
        self._buffers: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        self._events: dict[tuple[torch.dtype, int], Any] = {}
        self._stream: Any = torch.cuda.Stream(self.device) if self.cuda else None
        self._next = 0
        self._slot: tuple[torch.dtype, int] | None = None
        self.copies = 0

    def begin(self) -> None:
        """Order the copies after work already queued on the device (the last scoring)."""
        import torch

        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))

    def buffer(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        """The next free host buffer, ``n`` elements of ``dtype`` (its previous copy has completed)."""
        import torch

        if n > self.chunk:
            raise ValueError(f"a chunk of {n} elements does not fit the pipeline's {self.chunk}")
        slot = (dtype, self._next)
        self._next ^= 1
        event = self._events.pop(slot, None)
        if event is not None:
            event.synchronize()
        self._slot = slot
        buf = self._buffers.get(slot)
        if buf is None:
            buf = torch.empty(self.chunk, dtype=dtype, pin_memory=self.pin)
            self._buffers[slot] = buf
        return buf[:n]

    def send(self, dest: torch.Tensor, buf: torch.Tensor) -> None:
        """Copy ``buf`` (from :meth:`buffer`) into ``dest`` on the device; returns before it completes on CUDA."""
        import torch

        self.copies += 1
        if self._stream is None:
            dest.copy_(buf)
            return
        slot = self._slot
        assert slot is not None and self._buffers[slot].data_ptr() == buf.data_ptr(), "send the last buffer"
        with torch.cuda.stream(self._stream):
            dest.copy_(buf, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._events[slot] = event

    def finish(self) -> None:
        """Make the device's current stream wait for every copy sent (the scorer then sees the weights)."""
        import torch

        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)

    @property
    def nbytes(self) -> int:
        """Host bytes held by the chunk buffers."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())
