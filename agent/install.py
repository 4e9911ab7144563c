"""Putting a binary into place on the host atomically, and taking it back.

Every step keeps the invariant that the live path holds a complete binary: the new file is written next
to the live one (same file system), fsynced and made executable; the live file is hard-linked to the
rollback copy; then `rename(2)` swaps the new one in and the directory is fsynced. Owner, mode and the
SELinux label (`security.selinux` xattr) of the old binary are copied to the new one first. Before a stage,
`check_unpack_space` makes sure k3s's data directory has room for the new release to unpack.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from agent.datadir import DataDir
from agent.download import NoSpace
from agent.journal import fsync_dir

SELINUX_XATTR = "security.selinux"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def staging_paths(binary: Path, sha256: str) -> tuple[Path, Path]:
    """(partial download, verified staged file) next to the live binary."""
    return (binary.with_name(f".{binary.name}.{sha256[:16]}.part"),
            binary.with_name(f".{binary.name}.{sha256[:16]}.new"))


def rollback_path(binary: Path) -> Path:
    return binary.with_name(f".{binary.name}.rollback")


def finalize_staged(part: Path, staged: Path) -> None:
    """Make the verified download the staged binary: fsync, mode 0755, rename, fsync the directory."""
    fd = os.open(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(part, 0o755)
    os.replace(part, staged)
    fsync_dir(staged.parent)


def copy_metadata(source: Path, target: Path) -> None:
    st = os.stat(source)
    if (st.st_uid, st.st_gid) != (os.stat(target).st_uid, os.stat(target).st_gid):
        os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, (st.st_mode & 0o7777) | 0o755)
    try:
        label = os.getxattr(source, SELINUX_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        return
    os.setxattr(target, SELINUX_XATTR, label)


def link_into_place(source: Path, target: Path, tmp: Path) -> None:
    """Make `target` a hard link to `source` atomically: link to `tmp`, then rename(2) it over `target`.

    When `target` already is a link to the same file (a step resumed after a crash that came after its
    rename), rename(2) "does nothing, and returns a success status", and `tmp` stays: so it is removed.
    """
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, target)
    tmp.unlink(missing_ok=True)


def keep_rollback_copy(binary: Path) -> Path:
    """Hard-link the live binary as the rollback copy (replacing an older one atomically)."""
    backup = rollback_path(binary)
    link_into_place(binary, backup, backup.with_name(backup.name + ".tmp"))
    fsync_dir(binary.parent)
    return backup


def swap_in(staged: Path, binary: Path) -> None:
    """Atomically put `staged` at `binary`, keeping the old one as the rollback copy."""
    copy_metadata(binary, staged)
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)  # its owner, mode and label on disk before it takes the binary's place
    finally:
        os.close(fd)
    keep_rollback_copy(binary)
    os.replace(staged, binary)
    fsync_dir(binary.parent)


def restore(binary: Path) -> None:
    """Atomically put the rollback copy back at `binary` (the copy stays, as a link to the same file)."""
    link_into_place(rollback_path(binary), binary, binary.with_name(f".{binary.name}.restore"))
    fsync_dir(binary.parent)


def discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


UNPACK_FACTOR = 3
"""A new k3s release unpacks about 2.7 times its binary's size into its data directory on its first start
(195 MB for a 72 MB binary: k3s issue 10586)."""


def nearest_directory(path: Path) -> Path:
    """`path`, or its nearest parent that is a directory: where a directory not created yet will be made
    (k3s makes its data directory with its parents on its first start)."""
    while not path.is_dir() and path.parent != path:
        path = path.parent
    return path


def check_unpack_space(data: DataDir, binary: Path, margin: int, downloading: bool) -> None:
    """`NoSpace` unless the new k3s can unpack its data on its first start: UNPACK_FACTOR times the live
    binary's size free in its data directory `data` (`agent.datadir.find_data_dir`; its nearest parent
    when it does not exist yet), plus the binary itself when it is still to be downloaded to the same file
    system. Checked before anything changes: on a full disk the new k3s crash-loops, and the agent's own
    journal writes, which a rollback needs, fail too."""
    size = binary.stat().st_size
    where = nearest_directory(data.path)
    needed = UNPACK_FACTOR * size
    if downloading and os.stat(where).st_dev == os.stat(binary.parent).st_dev:
        needed += size
    free = shutil.disk_usage(where).free
    if free < needed + margin:
        created = "" if where == data.path else ", not created yet"
        raise NoSpace(f"not enough free space in {where} for the new k3s to unpack its data on its first "
                      f"start: {free} bytes free, about {needed} needed ({UNPACK_FACTOR} times the binary"
                      f"{' and the binary itself' if needed > UNPACK_FACTOR * size else ''}) plus a "
                      f"{margin}-byte margin (k3s's data directory is {data.host_path}, {data.source}"
                      f"{created})")
