"""Each trial's result.json, as Ray's JsonLoggerCallback writes it, without losing rows
when a trial restarts in the same driver.

Ray's logger writes result.json in the driver's staging folder and Ray copies that folder
to the search's storage at each experiment snapshot. When a trial starts again (a PBT
member's next turn, a retry), the logger first copies the storage's result.json over the
local one, "to resume it": in the same driver that copy is older than the file, so the
epochs reported since the last snapshot are lost (a PBT member's result.json read epochs
1, 2, 5 of 5), or, before the first snapshot, Ray warns "Remote file not found". Only a
driver that has no local file (a resumed search's) needs the storage's copy.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.logger import JsonLoggerCallback


class ResultLog(JsonLoggerCallback):
    """Ray's JSON logger; the storage's result.json restored only where there is none here."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if Path(trial.local_path, file_name).exists():
            return  # this driver wrote it: it is the newest
        super()._restore_from_remote(file_name, trial)
