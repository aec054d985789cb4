"""The built-in issuer's signing key directory: keys, their certs, a secret.

Layout of the directory (mode 0700):

    manifest.json   {"version": 1, "keys": [{kid, alg, created, retired, file, cert}]}
    <kid>.pem       the private key (PKCS#8 PEM), 0600
    <kid>.crt       a self-signed X.509 certificate of its public key, made once
    secret          32 random bytes, 0600: the HMAC/AEAD key for login-flow data
    .lock           flock(2) target that serialises the writers

Invariants:

- manifest.json is the single source of truth and is only ever replaced whole
  (temp file, fsync, rename, fsync the directory): a reader sees the old list
  or the new one, never a mix. Exactly one entry has `retired: null`: the
  current key. Every kid is the RFC 7638 thumbprint of its key.
- A key's files are durable before a manifest names them, and are deleted only
  after a manifest without them is in place. A reader that races a rotation
  may find an old key file gone; `load` then re-reads the manifest.
- Writers (`ensure`, `rotate`) hold an exclusive flock on .lock, so processes
  starting together create one first key, and two rotations never lose one
  another. Readers take no lock, so a read-only directory still loads.
- A previous key stays in the ring while now < retired + overlap; `rotate`
  deletes keys past that point. Every clock value is passed in (`now`), so
  every worker and every test agrees on what "now" is.
- Like ssh, readers refuse a directory writable by group/others and private
  files (keys, secret) readable by them, and say which chmod fixes it.

No asyncio here: plain file I/O and crypto, called at start-up, on reload and
from `edge keys rotate`. `TeamKeys` is a worker's view of one directory: the
ring loaded from it (edge.login.keyring) and its sealer, reloaded on change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import math
import os
import secrets as _random
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

import jwt
import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from edge.access.keysets import parse_jwks
from edge.access.session import Sealer
from edge.config.schema import SIGNING_ALGORITHMS
from edge.login import keys as keylib
from edge.login.keyring import KeyRing, SigningKey
from edge.login.keys import PrivateKey

MANIFEST, SECRET, LOCK = "manifest.json", "secret", ".lock"
MANIFEST_VERSION = 1
SECRET_BYTES = 32  # a full-strength key for HMAC-SHA256 or AES-256-GCM
DIR_MODE, PRIVATE_MODE, PUBLIC_MODE = 0o700, 0o600, 0o644
# Consumers that check a JWT cert's validity at all must never see the current
# key's cert expire; keys are retired by rotation, not by their cert.
CERT_LIFETIME = dt.timedelta(days=3650)
# A rotation deletes old key files; a reader that lost that race re-reads the
# manifest. More than a few losses in a row means something rotates in a loop.
LOAD_ATTEMPTS = 3


class KeyDirError(Exception):
    """An unusable key directory; the message names the path and is ready for a user."""


class _Entry(msgspec.Struct, frozen=True):
    """One key in manifest.json. Unknown fields are ignored so that a newer
    edge may add some without breaking an older one reading the same dir."""

    kid: str
    alg: str
    created: float
    retired: float | None
    file: str
    cert: str


class _Manifest(msgspec.Struct, frozen=True):
    version: int
    keys: list[_Entry]


# -- the public functions -------------------------------------------------------


def ensure(path: str | Path, alg: str, now: float) -> bool:
    """Create the directory, its first key and its secret, whatever is missing.

    True if this call created anything. Safe to call from several processes
    at once: one of them creates the key, the others find it."""
    _check_alg(alg)
    root, now = Path(path), float(now)
    if (root / MANIFEST).exists() and (root / SECRET).exists():
        return False  # the usual start: no lock, so a read-only directory works
    with _os_errors(root, "create the key directory"):
        made_dir = _make_dir(root)
        _check_dir(root)
        with _locked(root):
            return _fill(root, alg, now) or made_dir


def load(path: str | Path, overlap: float, now: float) -> KeyRing:
    """The ring at `now`: the current key, plus previous keys while now < retired + overlap."""
    _check_overlap(overlap)
    root = Path(path)
    _check_dir(root)
    for _ in range(LOAD_ATTEMPTS):
        entries, seen = _read_manifest(root)
        try:
            return _ring(root, entries, overlap, now, seen)
        except FileNotFoundError as exc:
            if fingerprint(root) == seen:  # not a rotation in between: really missing
                raise KeyDirError(f"{exc.filename}: missing, but {root / MANIFEST} lists it") from None
    raise KeyDirError(f"{root}: the keys kept changing while being read; is something rotating in a loop?")


def rotate(path: str | Path, alg: str, overlap: float, now: float) -> SigningKey:
    """Make a new current key; the old one is retired at `now`. Keys whose
    overlap has ended (retired + overlap <= now) are deleted."""
    _check_alg(alg)
    _check_overlap(overlap)
    root, now = Path(path), float(now)
    _check_dir(root)
    with _os_errors(root, "rotate the keys"), _locked(root):
        entries, _ = _read_manifest(root)
        entry, key = _new_key(root, alg, now)
        aged = [msgspec.structs.replace(e, retired=now) if e.retired is None else e for e in entries]
        kept = [e for e in aged if _in_ring(e, overlap, now)]
        _write_manifest(root, [entry, *_newest_first(kept)])
        for old in aged:
            if old not in kept:  # only now that no manifest names its files
                (root / old.file).unlink(missing_ok=True)
                (root / old.cert).unlink(missing_ok=True)
    return key


def fingerprint(path: str | Path) -> tuple[int, int] | None:
    """Changes whenever the manifest is replaced; None if there is none.

    The inode changes on every replacement (the temp file is created while the
    old manifest still exists); the mtime covers an inode number being reused."""
    try:
        st = os.stat(Path(path) / MANIFEST)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise KeyDirError(_os_text(exc, Path(path) / MANIFEST, "read")) from None
    return _fingerprint_of(st)


def verify_keys(ring: KeyRing) -> dict[str, jwt.PyJWK]:
    """`ring`'s public keys, as the built-in issuer's key set holds them (by
    kid): what a worker's compile and `edge check`/`edge explain` verify with."""
    return parse_jwks(ring.jwks())[0]


def secret(path: str | Path) -> bytes:
    """The directory's 32-byte secret: the same for every process using it."""
    root = Path(path)
    _check_dir(root)
    try:
        data = _read(root / SECRET, private=True)
    except FileNotFoundError:
        raise KeyDirError(f"{root / SECRET}: missing; the edge creates it with the key directory") from None
    if len(data) != SECRET_BYTES:
        raise KeyDirError(f"{root / SECRET}: expected {SECRET_BYTES} bytes, found {len(data)}")
    return data


# -- reading --------------------------------------------------------------------


def _ring(root: Path, entries: list[_Entry], overlap: float, now: float, seen: tuple[int, int]) -> KeyRing:
    live = _newest_first([e for e in entries if _in_ring(e, overlap, now)])
    keys = tuple(_load_key(root, e) for e in live)
    ends = [e.retired + overlap for e in live if e.retired is not None]
    return KeyRing(keys, min(ends, default=None), seen)


def _in_ring(entry: _Entry, overlap: float, now: float) -> bool:
    return entry.retired is None or now < entry.retired + overlap


def _newest_first(entries: list[_Entry]) -> list[_Entry]:
    """The current key first, then by retirement, most recent first."""
    return sorted(entries, key=lambda e: -math.inf if e.retired is None else -e.retired)


def _read_manifest(root: Path) -> tuple[list[_Entry], tuple[int, int]]:
    """The validated entries, and the fingerprint of exactly the file read."""
    path = root / MANIFEST
    try:
        with open(path, "rb") as f:
            seen = _fingerprint_of(os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        raise KeyDirError(f"{path}: missing; `edge keys rotate` or starting the edge creates it") from None
    except OSError as exc:
        raise KeyDirError(_os_text(exc, path, "read")) from None
    try:
        manifest = _parse_manifest(data)
    except ValueError as exc:
        raise KeyDirError(
            f"{path}: corrupt ({exc}); restore it from a backup, or move the directory "
            "away to start over with a new key (tokens already issued will then fail)"
        ) from None
    return manifest.keys, seen


def _parse_manifest(data: bytes) -> _Manifest:
    try:
        manifest = msgspec.json.decode(data, type=_Manifest)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise ValueError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    _check_manifest(manifest)
    return manifest


def _check_manifest(manifest: _Manifest) -> None:
    if manifest.version != MANIFEST_VERSION:
        raise ValueError(f"expected version {MANIFEST_VERSION}, got {manifest.version}")
    current = [e.kid for e in manifest.keys if e.retired is None]
    if len(current) != 1:
        raise ValueError(f"expected exactly one current key (retired: null), got {len(current)}")
    kids = [e.kid for e in manifest.keys]
    if len(set(kids)) != len(kids):
        raise ValueError("a kid is listed twice")
    for e in manifest.keys:
        if e.alg not in SIGNING_ALGORITHMS:
            raise ValueError(f"key {e.kid!r}: expected alg {' or '.join(SIGNING_ALGORITHMS)}, got {e.alg!r}")
        for name in (e.file, e.cert):
            # Names from the file must not reach outside the directory.
            if os.path.basename(name) != name or name in ("", ".", "..") or name.startswith("."):
                raise ValueError(f"key {e.kid!r}: expected a plain file name, got {name!r}")


def _load_key(root: Path, entry: _Entry) -> SigningKey:
    """The key an entry names, checked against its kid, alg and cert."""
    path = root / entry.file
    try:
        key = keylib.load_private(_read(path, private=True))
        alg = keylib.algorithm_of(key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyDirError(f"{path}: not a usable private key ({exc})") from None
    if alg != entry.alg or keylib.public_jwk(key)["kid"] != entry.kid:
        raise KeyDirError(f"{path}: does not match its manifest entry (kid {entry.kid}, {entry.alg})")
    cert_pem = _read(root / entry.cert, private=False).decode("ascii", "replace")
    _check_cert(root / entry.cert, cert_pem, key)
    return SigningKey(entry.kid, alg, key, entry.created, entry.retired, cert_pem)


def _check_cert(path: Path, cert_pem: str, key: PrivateKey) -> None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise KeyDirError(f"{path}: not a PEM certificate ({exc})") from None
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise KeyDirError(f"{path}: certifies a different key than {path.with_suffix('.pem').name}")


def _spki(public: CertificatePublicKeyTypes) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: Path, private: bool) -> bytes:
    """The file's bytes; a private file must be closed to group and others.

    FileNotFoundError passes through (`load` may retry); other errors become
    KeyDirError. The mode is checked on the open descriptor, not the name, so
    the file checked is the file read."""
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if private and mode & 0o077:
                raise KeyDirError(
                    f"{path}: permissions {mode:04o} are too open; a private key must not be "
                    f"accessible by group or others. Fix with: chmod 600 {shlex.quote(str(path))}"
                )
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyDirError(_os_text(exc, path, "read")) from None


def _check_dir(root: Path) -> None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise KeyDirError(f"{root}: the key directory does not exist") from None
    except OSError as exc:
        raise KeyDirError(_os_text(exc, root, "read")) from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyDirError(f"{root}: expected a key directory, found a file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:  # whoever can write here can swap in their own signing key
        raise KeyDirError(
            f"{root}: permissions {mode:04o} are too open; the key directory must not be "
            f"writable by group or others. Fix with: chmod 700 {shlex.quote(str(root))}"
        )


def _fingerprint_of(st: os.stat_result) -> tuple[int, int]:
    return (st.st_ino, st.st_mtime_ns)


# -- writing (under the lock) -------------------------------------------------------


def _fill(root: Path, alg: str, now: float) -> bool:
    """Create the secret and the first key if they are still missing."""
    created = False
    if not (root / SECRET).exists():
        _write_atomic(root / SECRET, _random.token_bytes(SECRET_BYTES), PRIVATE_MODE)
        created = True
    if not (root / MANIFEST).exists():
        entry, _ = _new_key(root, alg, now)
        _write_manifest(root, [entry])
        created = True
    return created


def _new_key(root: Path, alg: str, now: float) -> tuple[_Entry, SigningKey]:
    """Generate a key and write its files (not yet named by the manifest)."""
    private = keylib.generate(alg)
    kid: str = keylib.public_jwk(private)["kid"]
    cert_pem = _self_signed(private, kid, now)
    entry = _Entry(kid=kid, alg=alg, created=now, retired=None, file=f"{kid}.pem", cert=f"{kid}.crt")
    _write_atomic(root / entry.file, keylib.private_pem(private), PRIVATE_MODE)
    _write_atomic(root / entry.cert, cert_pem.encode(), PUBLIC_MODE)
    return entry, SigningKey(kid, alg, private, now, None, cert_pem)


def _self_signed(private: PrivateKey, kid: str, now: float) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edge {kid}")])
    start = dt.datetime.fromtimestamp(int(now), dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _write_manifest(root: Path, entries: list[_Entry]) -> None:
    manifest = _Manifest(version=MANIFEST_VERSION, keys=entries)
    _write_atomic(root / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)) + b"\n", PUBLIC_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` whole: readers see the old bytes or the new, never part."""
    tmp = path.with_name(f".{path.name}.{_random.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash only once the directory is synced


def _fsync_dir(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dir(root: Path) -> bool:
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return False
    return True


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def _os_errors(root: Path, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise KeyDirError(_os_text(exc, root, doing)) from None


# -- small helpers --------------------------------------------------------------


def _os_text(exc: OSError, path: Path, doing: str) -> str:
    return f"{exc.filename or path}: cannot {doing}: {exc.strerror or exc}"


def _check_alg(alg: str) -> None:
    if alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"Expected a signing algorithm among {', '.join(SIGNING_ALGORITHMS)}, got {alg!r}")


def _check_overlap(overlap: float) -> None:
    if not overlap >= 0:  # also refuses NaN
        raise ValueError(f"Expected a key overlap of 0 seconds or more, got {overlap!r}")


class TeamKeys:
    """The key ring and sealer of one key directory, reloaded when the
    directory changes (a rotation) or a previous key's overlap ends."""

    __slots__ = ("key_dir", "ring", "sealer")

    def __init__(self, key_dir: str, overlap: float, now: float, sealer: Sealer | None = None) -> None:
        """Raises KeyDirError. `sealer`: the one already in use (a
        reload that names another directory keeps it, as it always has)."""
        self.key_dir = key_dir
        self.ring: KeyRing = load(key_dir, overlap, now)
        self.sealer = sealer if sealer is not None else Sealer(secret(key_dir))

    def refresh(self, overlap: float, now: float) -> bool:
        """Reload the ring if needed; True if it did. Raises
        KeyDirError (the ring in use stays)."""
        ring = self.ring
        if fingerprint(self.key_dir) == ring.fingerprint and (ring.expires is None or now < ring.expires):
            return False
        self.ring = load(self.key_dir, overlap, now)
        return True
