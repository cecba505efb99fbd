"""Taking an output folder for a run: one run at a time, and never over another run's results.

A run holds a lock on its folder while it works (`.lock`, an flock: the kernel drops it when the process
ends, however it ends, so a killed run never blocks the next one; the next one takes the lock over and says
so). A folder that holds a run — finished, or unfinished with checkpoints — or anything else is refused,
unless the new run continues it (`--resume`) or replaces it (`--overwrite`). A replacing run trains in a
folder beside the old one (`config.checkpoints.replacement_dir`) and takes its place only once it has
finished: a crash or a kill on the way leaves the old run as it was.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hf_cnn_ft.config.checkpoints import NO_RESUME, RESUME_LATEST, checkpoints, replacement_dir
from hf_cnn_ft.config.paths import check_output_folder
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.share.run_dir import COMPLETION_MARKER, STAGING_DIR

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_OWN = {LOCK_FILE, STAGING_DIR}
SHOWN = 3  # file names quoted when a folder is not empty


@dataclass
class RunFolder:
    """Where a run works and where it ends up, with the locks it holds until `release`."""

    output_dir: Path  # where the finished run will be
    work_dir: Path  # where it trains and writes: output_dir, or the replacement folder beside it
    locks: list[TextIO] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # folders made for the run: removed again if left empty

    @property
    def replaces(self) -> bool:
        return self.work_dir != self.output_dir

    def finish(self) -> None:
        """Puts a replacing run in the place of the old one (two renames; the old run is deleted after)."""
        if not self.replaces:
            return
        retired = self.output_dir.with_name(f".{self.output_dir.name}.replaced-{os.getpid()}")
        os.rename(self.output_dir, retired)
        os.rename(self.work_dir, self.output_dir)
        shutil.rmtree(retired, ignore_errors=True)
        logger.info("the new run has replaced the one that was in %s", self.output_dir)
        self.work_dir = self.output_dir

    def release(self) -> None:
        """Drops the locks and deletes their files: a lock file left behind marks a run that was killed."""
        ours = {os.fstat(handle.fileno()).st_ino for handle in self.locks}
        for path in {self.output_dir / LOCK_FILE, self.work_dir / LOCK_FILE}:
            try:
                if os.stat(path).st_ino in ours:
                    path.unlink()
            except FileNotFoundError:
                pass
        for handle in self.locks:
            handle.close()
        self.locks.clear()
        for folder in reversed(self.created):  # a run refused before it wrote anything leaves nothing
            try:
                folder.rmdir()
            except OSError:  # not empty (another run may be writing beside it), or gone already
                pass


def _holder() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _lock(folder: Path) -> TextIO:
    """An exclusive lock on `folder`; one line naming the holder when another run has it."""
    path = folder / LOCK_FILE
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"training.output_dir: {folder} is in use by another run ({holder}): wait for it to finish, "
                "or choose another output_dir"
            ) from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # not a file the previous holder unlinked as we opened it
            break
        handle.close()
    handle.seek(0)
    left = handle.read().strip()
    if left:
        logger.warning("took over the lock on %s that a killed run left (%s)", folder, left)
    handle.seek(0)
    handle.truncate()
    handle.write(_holder() + "\n")
    handle.flush()
    return handle


def _in_the_way(folder: Path, resume: bool) -> str | None:
    """Why a run cannot write into `folder` as it is (None: it can)."""
    if not folder.is_dir():
        return None
    if (folder / COMPLETION_MARKER).is_file():
        return f"holds a finished run ({COMPLETION_MARKER})"
    if resume:
        return None
    if checkpoints(folder):
        return "holds checkpoints of an unfinished run (--resume continues it)"
    others = sorted(p.name for p in folder.iterdir() if p.name not in _OWN)
    if others:
        return f"is not empty ({', '.join(others[:SHOWN])}{', ...' if len(others) > SHOWN else ''})"
    return None


def _refuse(folder: Path, reason: str) -> UserError:
    return UserError(
        f"training.output_dir: {folder} {reason}: choose another output_dir, or pass --overwrite to replace it "
        "once the new run has finished"
    )


def claim_output_dir(output_dir: str | Path, resume_from: str | None, overwrite: bool, is_main: bool) -> RunFolder:
    """Checks and locks the folder a run writes into, before any work: it must be writable and hold no other
    run's results (see the module's docstring). Processes other than the main one only learn where it is."""
    output_dir = Path(output_dir).expanduser()
    resume = resume_from is not None and str(resume_from).lower() not in NO_RESUME
    latest = resume and str(resume_from).lower() in RESUME_LATEST
    continue_replacement = overwrite and latest and replacement_dir(output_dir).is_dir()
    if not is_main:
        replaces = overwrite and (_in_the_way(output_dir, resume=False) is not None or continue_replacement)
        return RunFolder(output_dir, replacement_dir(output_dir) if replaces else output_dir)
    folder = RunFolder(output_dir, output_dir, created=_make(output_dir))
    try:
        folder.locks.append(_lock(output_dir))
        reason = _in_the_way(output_dir, resume and not overwrite)
        if reason is None and not continue_replacement:
            return folder
        if not overwrite:
            raise _refuse(output_dir, reason)
        folder.work_dir = replacement_dir(output_dir)
        folder.created += _make(folder.work_dir)
        folder.locks.append(_lock(folder.work_dir))
        if not continue_replacement:
            _clear(folder.work_dir)
        logger.info("%s %s: the run trains in %s and replaces it when it finishes", output_dir, reason, folder.work_dir)
        return folder
    except BaseException:
        folder.release()
        raise


def _make(folder: Path) -> list[Path]:
    """Makes `folder` (checked to be writable first); returns the folders that did not exist, outermost first."""
    check_output_folder(folder, "training.output_dir")
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _clear(folder: Path) -> None:
    """Empties the replacement folder of a replacing run that was killed before it finished."""
    left = [p for p in folder.iterdir() if p.name != LOCK_FILE]
    if left:
        logger.warning("removing what a replacing run that did not finish left in %s", folder)
    for path in left:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
