"""Where an index's media files live, and which of those folders objsearch may read.

An index stores each media item's path relative to one of its **roots**: the folder ``objsearch analyze`` read
(root 0, the ``base_dir``) and every folder ``objsearch add`` was given outside the roots it had. Paths read from an
index are data, and so are its roots: a crafted index could name ``/`` as its root and ``etc/shadow`` as an image.
So objsearch reads a media file only under a root that this machine's user chose (the threat model is
``docs/security.md``):

* a root the user analyzed or added on this machine is recorded with an HMAC-SHA256 of the index's uuid and the
  folder, keyed by a secret only this user can read (``trust.key``, 32 random bytes, mode 0600, in
  ``$OBJSEARCH_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/objsearch``, else ``~/.config/objsearch``). A file made on
  another machine, or edited (a plain sha256 re-signed), has no valid MAC for its roots;
* ``--base-dir`` names a root's folder for one command (the user chose it; it moves the root);
* ``objsearch trust INDEX`` records an index's roots as chosen (for an index the user made elsewhere, or one made
  before roots were recorded).

Every read also stays inside its root (``safe_path``: no absolute paths, no ``..``, no link out of the folder).

The MAC is HMAC-SHA256 (RFC 2104, Python's ``hmac``) over ``b"objsearch root v1\\0" + uuid + b"\\0" + folder``,
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from objsearch.errors import IndexFileError, ObjsearchError
from objsearch.types import printable

LOGGER = logging.getLogger(__name__)

CONFIG_DIR_ENV = "OBJSEARCH_CONFIG_DIR"
KEY_FILE = "trust.key"
KEY_BYTES = 32
_CONTEXT = b"objsearch root v1\0"


class UntrustedRootError(IndexFileError):
    """A media file would be read under a root folder that this machine's user did not choose (exit 3)."""


def config_dir() -> Path:
    """objsearch's per-user configuration folder: ``$OBJSEARCH_CONFIG_DIR``, ``$XDG_CONFIG_HOME/objsearch`` or
    ``~/.config/objsearch``."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "objsearch"


def key_path() -> Path:
    return config_dir() / KEY_FILE


def _read_key(path: Path) -> bytes:
    """The key at ``path``; OSError when missing; ObjsearchError when others can read it or it is not this user's."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ObjsearchError(f"the trust key {path} can be read by other users or is not yours; make it yours "
                                 f"with mode 600 (chmod 600), or delete it (the indexes it recorded must then be "
                                 f"trusted again)")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise ObjsearchError(f"the trust key {path} is not {KEY_BYTES} bytes; delete it (the indexes it recorded "
                             f"must then be trusted again)")
    return data


def user_key(*, create: bool) -> bytes:
    """This user's secret key (made, mode 0600 in a 0700 folder, when missing and ``create``).

    Created atomically (a private temporary file linked into place), so concurrent first uses agree on one key.

    Raises
    ------
    ObjsearchError
        When there is no key (and ``create`` is False), it cannot be made or read, or others can read it.
    """
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            raise ObjsearchError(f"no trust key at {path}") from None
    except OSError as exc:
        raise ObjsearchError(f"cannot read the trust key {path}: {exc.strerror}") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails when another process made it first: then its key is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return _read_key(path)
    except OSError as exc:
        raise ObjsearchError(f"cannot make the trust key {path}: {exc.strerror}") from None


def _mac(key: bytes, index_uuid: str, folder: str) -> str:
    message = _CONTEXT + str(index_uuid).encode() + b"\0" + str(folder).encode("utf-8", "surrogateescape")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_root(index_uuid: str, folder: str) -> str:
    """The MAC that records ``folder`` (an absolute path) as a root of index ``index_uuid`` chosen by this user; ""
    (and a warning in the log) when no key can be made or read, so the root stays unrecorded and reads need
    ``--base-dir``."""
    if not os.path.isabs(folder):
        return ""
    try:
        return _mac(user_key(create=True), index_uuid, folder)
    except ObjsearchError as exc:
        LOGGER.warning("%s: the index's folder %s is not recorded as yours (reading its images will need "
                       "--base-dir or `objsearch trust`)", exc, printable(folder))
        return ""


def root_trusted(index_uuid: str, folder: str, mac: str) -> bool:
    """Whether ``mac`` records ``folder`` as a root of index ``index_uuid`` chosen by this user."""
    if not mac or not os.path.isabs(folder):
        return False
    try:
        key = user_key(create=False)
    except ObjsearchError:
        return False
    return hmac.compare_digest(_mac(key, index_uuid, folder), mac)


def safe_path(base_dir: str | Path, relative: str) -> Path | None:
    """``base_dir / relative`` when it stays inside ``base_dir`` (a path read from an index is data: absolute paths,
    ``..`` and links out of the folder are refused); None otherwise."""
    base = Path(os.path.abspath(base_dir))
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    path = base / rel
    try:
        real = Path(os.path.realpath(path))
        if real != Path(os.path.realpath(base)) and Path(os.path.realpath(base)) not in real.parents:
            return None
    except (OSError, ValueError):
        return None
    return path


def is_under(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or inside it (absolute paths compared, links not followed)."""
    p, f = os.path.abspath(path), os.path.abspath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def parse_base_dirs(values, recorded: list[str]) -> dict[int, Path]:
    """``--base-dir`` values -> {root: folder}. A value ``OLD=NEW`` (OLD a recorded root folder) or ``N=NEW`` (N a
    root's number) moves that root; a plain ``NEW`` moves the first root not named otherwise (so one ``--base-dir
    NEW`` moves root 0, as it always did).

    Raises
    ------
    ObjsearchError
        For a folder that does not exist, a root named twice, or more folders than roots.
    """
    moved: dict[int, Path] = {}
    plain = []
    for value in [values] if isinstance(values, (str, os.PathLike)) else list(values or []):
        text = os.fspath(value)
        for i, old in enumerate(recorded):
            if old and text.startswith(old.rstrip("/") + "=") or text.startswith(f"{i}="):
                target = text.split("=", 1)[1] if text.startswith(f"{i}=") else text[len(old.rstrip("/")) + 1:]
                if i in moved:
                    raise ObjsearchError(f"--base-dir names root {i} ({printable(old)}) twice")
                moved[i] = Path(target)
                break
        else:
            plain.append(Path(text))
    free = [i for i in range(len(recorded)) if i not in moved]
    if len(plain) > len(free):
        raise ObjsearchError(f"--base-dir was given {len(plain)} folders for {len(free)} roots of the index; name "
                             f"each root as --base-dir OLD=NEW")
    moved.update(zip(free, plain))
    for i, folder in moved.items():
        if not folder.is_dir():
            raise ObjsearchError(f"--base-dir {printable(str(folder))} is not a folder")
    return moved


@dataclass
class Roots:
    """An open index's roots as this command may use them.

    Attributes
    ----------
    index : Path, the index file (named in messages)
    recorded : list of str, the root folders the index records
    folders : list of Path, where each root is now (``--base-dir`` moves one; otherwise the recorded folder)
    trusted : list of bool, whether each may be read: recorded by this user (a valid MAC) or named now
    moved : dict of int to Path, the roots named now (``move``)
    """

    index: Path
    recorded: list[str]
    folders: list[Path]
    trusted: list[bool]
    moved: dict = field(default_factory=dict)

    @classmethod
    def of(cls, catalog, base_dirs=None) -> Roots:
        """The roots of ``catalog`` (a Catalog or CatalogWriter), with ``base_dirs`` (``--base-dir`` values, see
        ``parse_base_dirs``) moving some.

        Raises
        ------
        ObjsearchError
            For a bad ``--base-dir`` (see ``parse_base_dirs``).
        """
        recorded, macs = list(catalog.roots), list(catalog.root_macs)
        uid = str(catalog.attrs.get("uuid", ""))
        trusted = [root_trusted(uid, folder, mac) for folder, mac in zip(recorded, macs)]
        roots = cls(Path(catalog.path), recorded, [Path(r) for r in recorded], trusted)
        for i, folder in parse_base_dirs(base_dirs, recorded).items():
            roots.move(i, folder)
        return roots

    def move(self, root: int, folder: str | Path) -> None:
        """Root ``root`` is at ``folder`` now, as the user said (so it may be read)."""
        self.folders[root] = Path(folder)
        self.trusted[root] = True
        self.moved[root] = Path(folder)

    def refusal(self, root: int) -> UntrustedRootError:
        """The one-line error for reading under an untrusted root."""
        hint = ""
        try:
            user_key(create=False)
        except ObjsearchError as exc:
            if "no trust key" not in str(exc):
                hint = f" ({exc})"
        return UntrustedRootError(
            f"{self.index}: its images under {printable(self.recorded[root]) or 'an unnamed folder'} were not "
            f"recorded by you on this machine (an index made elsewhere, before roots were recorded, or edited){hint}; "
            f"pass --base-dir FOLDER to say where they are, or run `objsearch trust {self.index}` if you made it")

    def folder(self, root: int) -> Path:
        """Where root ``root`` is. Raises UntrustedRootError when it may not be read."""
        if not self.trusted[root]:
            raise self.refusal(root)
        return self.folders[root]

    def resolve(self, root: int, relative: str) -> Path | None:
        """The file of an indexed path under its root; None when the path leaves the root (``safe_path``).

        Raises
        ------
        UntrustedRootError
            When the root may not be read.
        """
        return safe_path(self.folder(root), relative)

    def locate(self, path: str | Path) -> tuple[int, str] | None:
        """(root, path relative to it) of a file: the deepest readable root that holds it; None when none does."""
        best = None
        for i, folder in enumerate(self.folders):
            if self.trusted[i] and is_under(path, folder):
                if best is None or len(os.path.abspath(folder)) > len(os.path.abspath(self.folders[best])):
                    best = i
        if best is None:
            return None
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.folders[best])).as_posix()
        return best, rel

    def describe(self) -> list[str]:
        """One line per root: number, folder, and whether it may be read (and why)."""
        lines = []
        for i, (recorded, folder, ok) in enumerate(zip(self.recorded, self.folders, self.trusted)):
            where = printable(str(folder)) + ("" if str(folder) == recorded else f" (recorded {printable(recorded)})")
            lines.append(f"root {i}: {where}, {'yours' if ok else 'not recorded by you: reads refused'}")
        return lines
