"""An asyncio loop of its own, in a thread, for a server that must not wait behind HTTP.

The HTTP side sends netboot images with sendfile on the main loop; under a boot storm one
pass of that loop took hundreds of milliseconds and TFTP transfers (a packet per ACK) timed
out behind it. sendfile releases the GIL, so a TFTP loop in its own thread keeps running
while images go out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the thread runs its loop (the health probe of `serve`)."""
        return self._thread.is_alive() and self.loop.is_running()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on this thread's loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
