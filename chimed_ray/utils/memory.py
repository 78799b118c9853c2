"""Host memory of this process: the peak resident set over a block of code (Linux `/proc`).

Used to report what building a model costs each rank (`memory/model_build_peak_mb`), which is how
sharded construction under ZeRO-3 shows: a rank keeps its partition, not the whole model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> Optional[int]:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakRSS:
    """`with PeakRSS() as peak: ...` then `peak.increase_mb`: the highest resident set reached
    inside the block minus the resident set on entry, in MiB (None where `/proc` is missing).

    Resets the kernel's high-water mark (`VmHWM`) on entry by writing 5 to `/proc/self/clear_refs`,
    so earlier peaks of the process do not count.
    """

    increase_mb: Optional[float] = None

    def __enter__(self) -> "PeakRSS":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _status_kb("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kb("VmHWM")
        if self._start is not None and peak is not None:
            self.increase_mb = max(0, peak - self._start) / 1024
