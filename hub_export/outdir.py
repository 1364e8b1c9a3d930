"""Output folders that are written whole or not at all, and never replace files this tool did not write.

A folder written here holds a record, ``.concat-embed-build.json``, of the files it wrote. A later
write into the same folder goes to a staging folder beside it first; only when it is complete
are the recorded files of the previous one removed and the staging folder moved into place. A
folder holding anything else (the user's files) is refused, and so is an output that contains,
equals or lies inside one of the inputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hub_export.folder import BUILD_RECORD as RECORD
from hub_export.folder import LATER_FILES, read_json, write_json

logger = logging.getLogger(__name__)


def _files_under(folder: Path) -> list[str]:
    """Relative paths of everything but directories under ``folder`` (links are listed, not followed)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root)
        found += [(base / name).relative_to(folder).as_posix() for name in files]
        found += [(base / name).relative_to(folder).as_posix() for name in dirs if (base / name).is_symlink()]
    return sorted(found)


def recorded_files(folder: Path) -> list[str] | None:
    """The files a previous write of this tool recorded in ``folder``, or None when it has no record.

    Raises:
        ValueError: If the record is not a list of relative paths inside the folder.
    """
    path = folder / RECORD
    if not path.is_file() or path.is_symlink():
        return None
    data = read_json(path)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(
        isinstance(f, str) and f and not Path(f).is_absolute() and ".." not in Path(f).parts for f in files
    ):
        raise ValueError(f"{path}: 'files' must be a list of relative paths inside the folder")
    return files


def check_output(output: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output folder this tool may not write; return it as a path.

    Allowed: a new path, an empty folder, or a folder that holds only the files a previous write
    of this tool recorded (plus :data:`LATER_FILES`).

    Raises:
        ValueError: Naming the folder and the reason (a foreign file, a link, an input overlap).
    """
    output = Path(output)
    if output.is_symlink():
        raise ValueError(f"output folder {output} is a symbolic link; give a real folder")
    if output.exists() and not output.is_dir():
        raise ValueError(f"output folder {output} is a file; give a new or empty folder")
    target = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or source in target.parents:
            raise ValueError(
                f"output folder {output} is inside the source {source}; choose a folder outside every source"
            )
        if target in source.parents:
            raise ValueError(
                f"the source {source} is inside the output folder {output}, which a build replaces; move one of them"
            )
    if output.is_dir():
        present = [name for name in _files_under(output) if name != RECORD]
        recorded = recorded_files(output)
        if present and recorded is None:
            raise ValueError(
                f"output folder {output} is not empty and was not written by concat-embed (it holds {present[0]!r}); "
                "choose a new or empty folder"
            )
        foreign = [name for name in present if name not in set(recorded or []) | set(LATER_FILES)]
        if foreign:
            raise ValueError(
                f"output folder {output} holds files concat-embed did not write ({foreign[:3]}); "
                "move them away or choose another folder"
            )
    return output


def _owner() -> str:
    """This process as staging folders name it: a short hash of the host name and the process id."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]}-{os.getpid()}"


def staging_folder(output: Path) -> Path:
    """A new empty folder beside ``output`` to write into (same file system, so the final move is a rename).

    It is named ``.<output>.<host hash>-<pid>.<random>.partial``; staging folders of ``output`` that a process
    of this host left behind and that no longer runs (killed mid-write) are removed first.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.{_owner()}.", suffix=".partial", dir=output.parent))


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove this tool's staging folders of ``output`` whose process (on this host) has ended; return them.

    Only real folders named as :func:`staging_folder` names them count: links, other hosts' folders, running
    processes' folders and anything else beside ``output`` are left alone.
    """
    host = _owner().split("-")[0]
    pattern = re.compile(rf"\.{re.escape(output.name)}\.{host}-(\d+)\.[A-Za-z0-9_]+\.partial")
    removed = []
    for candidate in output.parent.iterdir() if output.parent.is_dir() else []:
        match = pattern.fullmatch(candidate.name)
        if not match or candidate.is_symlink() or not candidate.is_dir() or _running(int(match.group(1))):
            continue
        shutil.rmtree(candidate)
        logger.info("removed %s, left behind by a run that ended before it finished", candidate)
        removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    """Whether a process with this id runs on this host (one that cannot be signalled counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def commit_output(staging: Path, output: Path) -> Path:
    """Record the staged files, remove the previous write's recorded files, move the staging folder in place."""
    write_json(staging / RECORD, {"files": _files_under(staging)})
    if output.is_dir():
        for name in set(recorded_files(output) or []) | set(LATER_FILES) | {RECORD}:
            path = output / name
            if path.is_symlink() or path.is_file():
                path.unlink()
        for root, _, _ in sorted(os.walk(output), key=lambda entry: -len(entry[0])):
            if root != str(output) and not os.listdir(root):
                os.rmdir(root)
        if any(output.iterdir()):
            raise ValueError(f"output folder {output} changed while building; the new model is in {staging}")
        output.rmdir()
    os.replace(staging, output)
    return output


def write_whole(output: Path, write: Callable[[Path], object]) -> Path:
    """Run ``write(staging)`` into a staging folder beside ``output`` and move the result into place;
    a failed write removes the staging folder and leaves ``output`` as it was."""
    staging = staging_folder(output)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return commit_output(staging, output)


def check_addable(folder: Path, names: Iterable[str]) -> None:
    """Refuse to add files to ``folder`` where one of ``names`` exists and is not recorded as this tool's.

    Raises:
        ValueError: Naming the files in the way.
    """
    recorded = set(recorded_files(folder) or [])
    names = list(names)
    linked = sorted(
        {
            Path(*Path(name).parts[:depth]).as_posix()
            for name in names
            for depth in range(1, len(Path(name).parts))
            if (folder / Path(*Path(name).parts[:depth])).is_symlink()
        }
    )
    if linked:  # a file added below a linked folder would land outside this folder
        raise ValueError(f"{folder}: {linked[:3]} is a symbolic link; replace it with a real folder first")
    foreign = [
        name for name in names if (folder / name).is_symlink() or ((folder / name).exists() and name not in recorded)
    ]
    if foreign:
        raise ValueError(
            f"{folder} already holds {foreign[:3]}, which concat-embed did not write; move them away first"
        )


def add_files(folder: Path, staged: Path) -> list[str]:
    """Move the files staged in ``staged`` into ``folder`` (same relative paths) and record them there.

    A file that exists in ``folder`` is replaced only when this tool's record lists it; the record
    is updated before any file moves, so a later rebuild removes the added files too.

    Raises:
        ValueError: Naming a file in the way that this tool did not write (nothing is moved then).
    """
    folder = Path(folder)
    names = _files_under(staged)
    check_addable(folder, names)
    record = {"files": sorted(set(recorded_files(folder) or []) | set(names))}
    write_json(folder / RECORD, record)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, folder / name)
    return names


CACHE_KIND = "concat-embed cache"
IDENTITY_FILE = "identity.json"


def cache_folder(work: Path, identity: dict[str, Any]) -> Path:
    """A cache folder of this tool's for inputs ``identity`` (``identity.json`` pins them): created, or reused when
    it was made for the same inputs (distill's work folder and shared teacher vectors, select's candidate vectors).

    Raises:
        ValueError: If the folder is a link, holds files this tool did not write, or was made for other inputs
            (naming what changed); nothing is changed then.
    """
    record = work / IDENTITY_FILE
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise ValueError(f"{work} is a link or a file; move it away (concat-embed keeps cached vectors there)")
    if work.is_dir():
        previous = read_json(record) if record.is_file() and not record.is_symlink() else None
        if not isinstance(previous, dict) or previous.get("kind") != CACHE_KIND:
            raise ValueError(f"{work} holds files concat-embed did not write; move it away or choose another folder")
        if previous.get("identity") != identity:
            old = previous.get("identity") if isinstance(previous.get("identity"), dict) else {}
            changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
            raise ValueError(
                f"{work} caches the vectors of other inputs: {changed} (cached, now) changed since; "
                f"use another output or cache folder, or delete {work} to encode anew"
            )
        return work
    work.mkdir(parents=True)
    write_json(record, {"kind": CACHE_KIND, "identity": identity})
    return work
