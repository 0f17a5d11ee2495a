"""Writers forced into the worst interleaving two processes can hit."""

from __future__ import annotations

import pyarrow as pa
from deltalake import DeltaTable

from dicomlake.lake.writer import TableWriter


class BeatenWriter(TableWriter):
    """A writer whose rival commits right after each check, before the commit: the race
    that two processes hit now and then, made to happen on every attempt it is armed."""

    def __init__(
        self, lake: str, rival: TableWriter, rival_batches: list[tuple[pa.RecordBatch, bool]]
    ) -> None:
        super().__init__(lake, max_rows=10_000)
        self.rival = rival
        self.rival_batches = rival_batches

    def _catch_up(self, dt: DeltaTable) -> None:
        super()._catch_up(dt)
        if self.rival_batches:
            rows, replace = self.rival_batches.pop(0)
            self.rival.write(rows, replace=replace)
            self.rival.flush()
