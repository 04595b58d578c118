"""Durable files and directories: every save of polytok goes through here.

Files (:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`) are written to a
temporary name in the same directory, fsync'ed and renamed over the target: a reader sees the old or the
new content, never a half-written file.

Directories (:func:`save_folder`, :func:`open_folder`) are written aside, checksummed, fsync'ed, then
swapped in whole.

A directory ``<parent>/<name>`` (a ``save_pretrained`` directory, a training checkpoint) is never written
in place. Its files go into a staging directory; a ``manifest.json`` with the size and sha256 of every file
is written last; everything is fsync'ed; then the staging directory takes the final name::

    <parent>/<name>                  the published directory
    <parent>/<name>.tmp-<pid>-<hex>  being written; left over only by a crash, pruned by the next save
    <parent>/<name>.old-<pid>-<hex>  the previous version, only between the two renames of a swap

Replacing an existing directory takes two renames (final -> ``.old-``, staging -> final), so at every
instant a complete old or new directory exists: at ``<name>`` or, after a crash between the renames, at
``<name>.old-*``, which :func:`resolve` finds and the next :func:`publish` moves back before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ChecksumError(ValueError):
    """A directory's files do not match its manifest (truncated, corrupt or modified)."""


def fsync_dir(path: str | Path) -> None:
    """Make a rename or file creation inside ``path`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# single files


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``.<name>.tmp-<pid>`` in the same directory: ``write(file)`` fills it, it is
    fsync'ed and renamed over ``path``. If anything fails the temporary file is removed, so a full disk
    or a crash in ``write`` leaves no partial file and the old ``path`` untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno is None or err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err  # name the file a full disk stopped
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write_bytes` of ``data`` as JSON."""
    return atomic_write_text(path, json.dumps(data, indent=indent))


def check_writable(path: str | Path, what: str = "output") -> None:
    """Refuse, before any work, a file destination that cannot be written: a directory, a path below a
    file, or a folder where no file can be created (read-only, no permission). Creates nothing."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {path} cannot be written: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(err.errno, f"{what} {path} cannot be written ({err.strerror})") from None


# ---------------------------------------------------------------------------------------------------------
# manifests


def write_manifest(directory: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checksum every regular file of ``directory`` (names starting with '.' excepted) and write the
    manifest last, fsync'ed; returns it."""
    directory = Path(directory)
    files = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name != MANIFEST:
            files[f.name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    manifest = {"format": FORMAT_VERSION, **dict(extra or {}), "files": files}
    atomic_write_json(directory / MANIFEST, manifest, indent=1)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of ``directory``, or None when it has none; ChecksumError when it is unreadable."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("files"), dict):
            raise KeyError("files")
    except (ValueError, KeyError, AttributeError) as err:
        raise ChecksumError(f"{path} is unreadable ({err})") from err
    return manifest


def verify_files(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Check that every file the manifest lists exists (else FileNotFoundError) with its recorded size and
    sha256 (else ChecksumError)."""
    directory = Path(directory)
    for name, meta in manifest["files"].items():
        verify_file(directory / name, meta["size"], meta["sha256"], MANIFEST)


def verify_file(path: str | Path, size: int, sha256: str, listed_by: str) -> None:
    """Check that ``path`` exists (else FileNotFoundError) with the ``size`` and ``sha256`` that
    ``listed_by`` (the manifest's name, for the message) records (else ChecksumError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {listed_by} lists it")
    found = path.stat().st_size
    if found != size:
        raise ChecksumError(f"{path} has {found} bytes, {listed_by} says {size} (truncated?)")
    if sha256_file(path) != sha256:
        raise ChecksumError(f"{path} does not match its sha256 in {listed_by} (corrupt or modified)")


# ---------------------------------------------------------------------------------------------------------
# staging and the swap


def _unique() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _siblings(final: Path, kind: str) -> list[Path]:
    """``<final>.tmp-*`` or ``<final>.old-*`` directories, oldest first."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(re.escape(final.name) + rf"\.{kind}-\d+-[0-9a-f]+$")
    found = [p for p in final.parent.iterdir() if pattern.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def is_aside(path: str | Path) -> bool:
    """True for a staging or previous-version directory (``*.tmp-*`` / ``*.old-*``), not a published one."""
    return re.search(r"\.(tmp|old)-\d+-[0-9a-f]+$", Path(path).name) is not None


def staging_dir(final: str | Path) -> Path:
    """A new, empty ``<final>.tmp-<unique>`` next to ``final`` to write the directory's files into."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f"{final.name}.tmp-{_unique()}")
    staging.mkdir()
    return staging


def resolve(final: str | Path) -> Path | None:
    """``final`` if it exists, else the previous version a crash left at ``<final>.old-*``, else None."""
    final = Path(final)
    if final.exists():
        return final
    previous = _siblings(final, "old")
    return previous[-1] if previous else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one directory at a time: its own leftovers are stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def prune_stale(final: str | Path) -> None:
    """Remove what crashed saves left next to ``final``: staging directories of dead processes and, once
    ``final`` exists, previous versions."""
    final = Path(final)
    for staging in _siblings(final, "tmp"):
        if not _pid_alive(int(staging.name.rsplit(".tmp-", 1)[1].split("-")[0])):
            shutil.rmtree(staging, ignore_errors=True)
    if final.exists():
        for previous in _siblings(final, "old"):
            shutil.rmtree(previous, ignore_errors=True)


def restore_interrupted(final: str | Path) -> None:
    """After a crash between the two renames of a swap, move the previous version back to ``final``."""
    final = Path(final)
    if not final.exists():
        previous = _siblings(final, "old")
        if previous:
            os.rename(previous[-1], final)
            fsync_dir(final.parent)


def publish(staging: str | Path, final: str | Path) -> Path:
    """Make the complete directory ``staging`` durable and give it the name ``final``, replacing a
    directory already there without a moment where neither exists (see the module docstring)."""
    staging, final = Path(staging), Path(final)
    for f in staging.iterdir():
        if f.is_file():
            fsync_file(f)
    fsync_dir(staging)
    restore_interrupted(final)
    previous = None
    if final.exists():
        previous = final.with_name(f"{final.name}.old-{_unique()}")
        os.rename(final, previous)
        fsync_dir(final.parent)
    os.rename(staging, final)
    fsync_dir(final.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    prune_stale(final)
    return final


# ---------------------------------------------------------------------------------------------------------
# saved folders: the one format of ``save_pretrained`` (tokenizers, unified models)


def check_replaceable(out: str | Path, known: set[str], what: str) -> None:
    """Refuse to replace ``out`` unless it holds only entries of a saved ``what`` (``known`` names): the
    whole directory is swapped for the new one, so anything else in it would be lost."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot save a {what} to {out}: it is a file, not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in known | {MANIFEST})
        if foreign:
            raise ValueError(
                f"refusing to save a {what} into {out}: saving replaces the whole directory, and it "
                f"holds other files ({', '.join(foreign[:5])}); choose an empty or new directory"
            )


def save_folder(
    out: str | Path,
    write: Callable[[Path], None],
    *,
    known: set[str],
    what: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a folder atomically: ``write(staging)`` fills a staging directory, the manifest (sizes and
    sha256 of its files, plus ``extra``) is written last, and the directory takes the name ``out`` whole
    (:func:`publish`). ``known``: the names a saved ``what`` holds; ``out`` holding anything else is refused
    before anything is written. Files keep the permissions the umask gives."""
    out = Path(out)
    check_replaceable(out, known, what)
    staging = staging_dir(out)
    try:
        try:
            write(staging)
        except Exception as err:
            raise as_os_error(err, out) from err
        honour_umask(staging)
        write_manifest(staging, extra)
        publish(staging, out)
    finally:
        if staging.exists():  # an exception before the rename: nothing was published
            shutil.rmtree(staging, ignore_errors=True)
    return out


def as_os_error(err: Exception, path: str | Path) -> Exception:
    """``err`` as the OSError it stands for when a writer wrapped one (safetensors reports a full disk
    as ``SafetensorError: ... I/O error: ... (os error 28)``), naming ``path``; else ``err`` itself."""
    if isinstance(err, OSError):
        return err
    found = re.search(r"I/O error.*\(os error (\d+)\)", str(err))
    if found is None:
        return err
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))


def honour_umask(directory: str | Path) -> None:
    """Give the regular files directly in ``directory`` the mode the umask gives new files (some writers,
    safetensors among them, create files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for f in Path(directory).iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def open_folder(directory: str | Path, what: str) -> Path:
    """The saved folder to read at ``directory``, its files verified against its manifest
    (:class:`ChecksumError` on a mismatch). After a crash in the middle of replacing it, the previous
    version (``<directory>.old-*``) is read, with a warning; a folder without a manifest (saved by an older
    polytok) is read unverified, with a warning."""
    import warnings

    directory = Path(directory)
    root = resolve(directory)
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    if root != directory:
        warnings.warn(
            f"{directory} is missing; reading {root.name}, the version an interrupted save left",
            RuntimeWarning,
            stacklevel=3,
        )
    manifest = read_manifest(root)
    if manifest is None:
        warnings.warn(
            f"{root} has no {MANIFEST} (saved by an older polytok): its files are not verified",
            UserWarning,
            stacklevel=3,
        )
    else:
        verify_files(root, manifest)
    return root
