"""Internal errors (a bug, not the user's input): the traceback goes to a log file, and a person
sees one line naming it. The headless runner and the lab both write through here."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from difflab import __version__

ERROR_LOG = "internal-error.log"


def write_crash_log(details: str, folder: Path | None = None) -> Path | None:
    """Append the traceback to FOLDER/internal-error.log (a run folder), else to a file in the
    temporary folder; None when neither can be written."""
    text = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} difflab {__version__}: "
            f"{' '.join(['difflab', *sys.argv[1:]])}\n{details.rstrip()}\n")
    candidates = [Path(folder) / ERROR_LOG] if folder else []
    candidates.append(Path(tempfile.gettempdir()) / f"difflab-internal-error-{os.getpid()}.log")
    for path in candidates:
        try:
            with path.open("a", encoding="utf-8") as log:
                log.write(text)
        except OSError:
            continue
        return path
    return None


def internal_error_line(summary: str, log: Path | None) -> str:
    """The one line a person sees."""
    line = summary.strip().splitlines()[0] if summary.strip() else "unknown error"
    where = f"the traceback is in {log}, please attach it to a bug report" if log else "no log file could be written"
    return f"internal error: {line} (a bug in difflab; {where})"
