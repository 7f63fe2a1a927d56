"""A worker's decode-ahead: while its model separates job N, the next queued
job's input is decoded into a work folder of its own, on a thread of its own,
so job N+1 starts on the model at once. One track ahead at most; dropped
(stopped between blocks, its folder removed) when another job comes first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stemd.config import Config
from stemd.ledger import FileStat, InputRecord
from stemd.separation.engine import ModelInfo
from stemd.separation.workfiles import WorkArea
from stemd.track import Loaded, decode_track


@dataclass(frozen=True)
class DecodedAhead:
    """The next queued input, decoding on the decoder thread into a work folder
    of its own: this version of it."""

    input_id: int
    stat: FileStat
    loaded: Future[Loaded]
    dropped: threading.Event  # set: stop decoding (between blocks) and remove it


class DecodeAhead:
    def __init__(self, work_area: WorkArea, prefix: str) -> None:
        """`prefix` (the worker's name) keeps work folder names apart when
        several workers decode in one state_dir, even the same job."""
        self.work_area = work_area
        self._prefix = prefix
        self._count = 0  # makes each work folder's name new
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="stemd-decode")
        self._ahead: DecodedAhead | None = None

    def decode(
        self,
        job_id: int,
        info: ModelInfo,
        config: Config,
        path: Path,
        cancelled: Callable[[], bool],
    ) -> Loaded:
        """`path` decoded into a new work folder, on the calling thread. A failed
        decode leaves no folder behind."""
        self._count += 1
        work = self.work_area.job(f"{self._prefix}-job{job_id}-{self._count}")
        try:
            return decode_track(info, config, path, work, cancelled)
        except BaseException:
            work.remove()
            raise

    def take(self, source: InputRecord) -> Future[Loaded] | None:
        """The decode-ahead's result if it decoded this very version of `source`
        (it removed its folder if it failed); else None, and it is dropped."""
        ahead = self._ahead
        if ahead is not None and (ahead.input_id, ahead.stat) == (source.id, source.stat):
            self._ahead = None
            return ahead.loaded
        self.drop()  # another job came first (a retry, a reload)
        return None

    def forget(self, source: InputRecord) -> None:
        """Drop what is ahead if it is `source`, whose job ended without the model
        (adopted or skipped): its work folder is not left behind until the next take."""
        ahead = self._ahead
        if ahead is not None and ahead.input_id == source.id:
            self.drop()

    @property
    def busy(self) -> bool:
        return self._ahead is not None

    def start(
        self,
        job_id: int,
        source: InputRecord,
        info: ModelInfo,
        config: Config,
        stop: Callable[[], bool],
    ) -> None:
        """Begin decoding `source` for `job_id` on the decoder thread."""
        dropped = threading.Event()
        future = self._decoder.submit(
            self.decode,
            job_id,
            info,
            config,
            source.path,
            lambda: dropped.is_set() or stop(),
        )
        self._ahead = DecodedAhead(source.id, source.stat, future, dropped)

    def drop(self) -> None:
        """Forget the input decoded ahead: stop it between blocks if it is
        decoding, and remove its work folder once it is done."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        ahead.dropped.set()
        if ahead.loaded.cancel():
            return  # never started: no folder

        def remove(future: Future[Loaded]) -> None:
            if not future.cancelled() and future.exception() is None:
                future.result().work.remove()

        ahead.loaded.add_done_callback(remove)

    def shutdown(self) -> None:
        """Drop what is ahead and join the decoder thread."""
        self.drop()
        self._decoder.shutdown(wait=True, cancel_futures=True)
