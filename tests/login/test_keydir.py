"""edge.login.keydir: the built-in issuer's key directory, and `edge keys rotate`.

Every clock value is passed in (T0, T1, ...), so nothing here depends on how
fast the machine is. Tokens carry no exp: PyJWT would check that against the
real clock."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from conftest import ROOT
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.cli import main as cli
from edge.login import keydir
from edge.login.keys import private_pem

T0 = 1_700_000_000.0  # the directory is created
T1 = T0 + 1000  # the first rotation
OVERLAP = 3600.0
ALGS = ["ES256", "RS256"]
PROCESSES = 6


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def manifest(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "manifest.json").read_bytes())
    return data


def verify(token: str, ring: keydir.KeyRing) -> dict[str, Any]:
    """Verify as an outside consumer would: pick the JWK named by the kid."""
    keyset = jwt.PyJWKSet.from_json(ring.jwks().decode())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256", "RS256"], audience="app")
    return claims


@pytest.fixture(params=ALGS)
def alg(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def root(tmp_path: Path, alg: str) -> Path:
    path = tmp_path / "keys"
    assert keydir.ensure(path, alg, T0)
    return path


# -- ensure -----------------------------------------------------------------------


def test_ensure_creates_a_private_directory_with_one_key_and_a_secret(root: Path, alg: str) -> None:
    assert mode(root) == 0o700
    [entry] = manifest(root)["keys"]
    assert entry["alg"] == alg and entry["created"] == T0 and entry["retired"] is None
    assert mode(root / entry["file"]) == 0o600
    assert mode(root / "secret") == 0o600
    assert len(keydir.secret(root)) == 32
    ring = keydir.load(root, OVERLAP, T0)
    assert ring.current.kid == entry["kid"] and ring.keys == (ring.current,) and ring.expires is None


def test_ensure_is_idempotent(root: Path) -> None:
    before, secret = manifest(root), keydir.secret(root)
    assert not keydir.ensure(root, "RS256", T1)  # a new alg in config changes nothing here
    assert manifest(root) == before and keydir.secret(root) == secret


def test_ensure_creates_missing_parents_and_restores_a_lost_secret(tmp_path: Path) -> None:
    root = tmp_path / "var" / "edge" / "keys"
    assert keydir.ensure(root, "ES256", T0)
    kid = keydir.load(root, OVERLAP, T0).current.kid
    (root / "secret").unlink()
    assert keydir.ensure(root, "ES256", T1)
    assert len(keydir.secret(root)) == 32 and keydir.load(root, OVERLAP, T1).current.kid == kid


def _ensure_in_child(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # all children call ensure at the same moment
    results.put(keydir.ensure(path, "ES256", T0))


def test_concurrent_ensure_from_several_processes_makes_one_first_key(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    ctx = multiprocessing.get_context("spawn")  # fork from a threaded pytest is unsafe
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    children = [
        ctx.Process(target=_ensure_in_child, args=(str(root), barrier, results)) for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    created = [results.get(timeout=10) for _ in children]
    assert any(created)
    assert len(manifest(root)["keys"]) == 1
    kid = _entry(root)["kid"]
    names = {p.name for p in root.iterdir()}  # no second key, no temp file left behind
    assert names == {".lock", "manifest.json", "secret", f"{kid}.pem", f"{kid}.crt"}
    keydir.load(root, OVERLAP, T0)


def test_ensure_refuses_an_existing_directory_writable_by_others(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(keydir.KeyDirError, match="chmod 700"):
        keydir.ensure(root, "ES256", T0)
    assert list(root.iterdir()) == []


def test_bad_arguments_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="EdDSA"):
        keydir.ensure(tmp_path / "keys", "EdDSA", T0)
    with pytest.raises(ValueError, match="overlap"):
        keydir.load(tmp_path / "keys", -1, T0)


# -- load refuses what it must not use -------------------------------------------


@pytest.mark.parametrize("loose", [0o770, 0o707, 0o722])
def test_load_refuses_a_directory_writable_by_group_or_others(root: Path, loose: int) -> None:
    root.chmod(loose)
    with pytest.raises(keydir.KeyDirError) as info:
        keydir.load(root, OVERLAP, T0)
    assert str(info.value).startswith(f"{root}: permissions {loose:04o} are too open")
    assert str(info.value).endswith(f"Fix with: chmod 700 {root}")


def test_load_accepts_a_directory_readable_by_others(root: Path) -> None:
    root.chmod(0o755)  # the private files themselves are 0600
    keydir.load(root, OVERLAP, T0)


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644])
def test_load_refuses_a_private_key_readable_by_group_or_others(root: Path, loose: int) -> None:
    pem = root / manifest(root)["keys"][0]["file"]
    pem.chmod(loose)
    with pytest.raises(keydir.KeyDirError) as info:
        keydir.load(root, OVERLAP, T0)
    assert str(info.value).startswith(f"{pem}: permissions {loose:04o} are too open")
    assert str(info.value).endswith(f"Fix with: chmod 600 {pem}")


def test_secret_refuses_a_file_readable_by_others(root: Path) -> None:
    (root / "secret").chmod(0o644)
    with pytest.raises(keydir.KeyDirError, match=r"secret: permissions 0644 .* chmod 600"):
        keydir.secret(root)


def test_secret_of_the_wrong_size_is_refused(root: Path) -> None:
    (root / "secret").write_bytes(b"short")
    with pytest.raises(keydir.KeyDirError, match="expected 32 bytes, found 5"):
        keydir.secret(root)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(keydir.KeyDirError, match="does not exist"):
        keydir.load(tmp_path / "nope", OVERLAP, T0)
    with pytest.raises(keydir.KeyDirError, match="does not exist"):
        keydir.rotate(tmp_path / "nope", "ES256", OVERLAP, T0)
    assert keydir.fingerprint(tmp_path / "nope") is None


def _entry(root: Path) -> dict[str, Any]:
    entry: dict[str, Any] = manifest(root)["keys"][0]
    return entry


CORRUPT_MANIFESTS: list[tuple[str, Any, str]] = [
    ("not json", b"{", "not JSON: Input data was truncated"),
    ("wrong version", lambda e: {"version": 2, "keys": [e]}, "expected version 1, got 2"),
    ("no keys", lambda e: {"version": 1, "keys": []}, "exactly one current key"),
    (
        "two current",
        lambda e: {"version": 1, "keys": [e, {**e, "kid": "x"}]},
        "exactly one current key (retired: null), got 2",
    ),
    ("missing field", lambda e: {"version": 1, "keys": [{"kid": e["kid"]}]}, "missing required field"),
    ("bad alg", lambda e: {"version": 1, "keys": [{**e, "alg": "HS256"}]}, "expected alg ES256 or RS256"),
    ("escaping path", lambda e: {"version": 1, "keys": [{**e, "file": "../x.pem"}]}, "a plain file name"),
]


@pytest.mark.parametrize(
    ("name", "content", "message"), CORRUPT_MANIFESTS, ids=[c[0] for c in CORRUPT_MANIFESTS]
)
def test_load_refuses_a_corrupt_manifest(root: Path, name: str, content: Any, message: str) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content(_entry(root))).encode()
    (root / "manifest.json").write_bytes(data)
    with pytest.raises(keydir.KeyDirError) as info:
        keydir.load(root, OVERLAP, T0)
    text = str(info.value)
    assert text.startswith(f"{root / 'manifest.json'}: corrupt (") and message in text
    assert "restore it from a backup" in text


def test_load_refuses_a_key_file_that_does_not_match_its_kid(root: Path, alg: str) -> None:
    from edge.login.keys import generate

    pem = root / _entry(root)["file"]
    pem.write_bytes(private_pem(generate(alg)))
    with pytest.raises(keydir.KeyDirError, match="does not match its manifest entry"):
        keydir.load(root, OVERLAP, T0)


def test_load_refuses_garbage_in_a_key_file(root: Path) -> None:
    (root / _entry(root)["file"]).write_bytes(b"not a key")
    with pytest.raises(keydir.KeyDirError, match="not a usable private key"):
        keydir.load(root, OVERLAP, T0)


def test_load_names_a_missing_key_file(root: Path) -> None:
    pem = root / _entry(root)["file"]
    pem.unlink()
    with pytest.raises(keydir.KeyDirError, match=f"^{pem}: missing, but .*manifest.json lists it$"):
        keydir.load(root, OVERLAP, T0)


def test_load_refuses_a_cert_of_another_key(tmp_path: Path, root: Path, alg: str) -> None:
    other = tmp_path / "other"
    keydir.ensure(other, alg, T0)
    (root / _entry(root)["cert"]).write_bytes((other / _entry(other)["cert"]).read_bytes())
    with pytest.raises(keydir.KeyDirError, match="certifies a different key"):
        keydir.load(root, OVERLAP, T0)


# -- sign, jwks, certs ---------------------------------------------------------------


def test_sign_verifies_with_the_published_jwks(root: Path, alg: str) -> None:
    ring = keydir.load(root, OVERLAP, T0)
    token = ring.sign({"sub": "alice", "aud": ["app"]})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": ring.current.kid, "typ": "JWT"}
    assert verify(token, ring)["sub"] == "alice"
    [jwk] = json.loads(ring.jwks())["keys"]
    assert jwk["kid"] == ring.current.kid and jwk["alg"] == alg and jwk["use"] == "sig"
    assert "d" not in jwk and "key_ops" not in jwk


def test_verify_keys_are_the_rings_public_keys_by_kid(root: Path, alg: str) -> None:
    keydir.rotate(root, alg, OVERLAP, T1)
    ring = keydir.load(root, OVERLAP, T1)
    keys = keydir.verify_keys(ring)
    assert list(keys) == [k.kid for k in ring.keys]  # the current key and the previous one
    token = ring.sign({"sub": "alice", "aud": "app"})
    claims = jwt.decode(token, keys[ring.current.kid], algorithms=[alg], audience="app")
    assert claims["sub"] == "alice"


def test_certs_has_cloudflares_shape_and_matches_the_jwks(root: Path, alg: str) -> None:
    keydir.rotate(root, alg, OVERLAP, T1)
    ring = keydir.load(root, OVERLAP, T1)
    doc = json.loads(ring.certs())
    assert set(doc) == {"keys", "public_cert", "public_certs"}
    assert doc["keys"] == json.loads(ring.jwks())["keys"]
    assert doc["public_cert"] == {"kid": ring.current.kid, "cert": ring.current.cert_pem}
    assert [c["kid"] for c in doc["public_certs"]] == [k.kid for k in ring.keys]
    for entry, jwk in zip(doc["public_certs"], doc["keys"], strict=True):
        cert = x509.load_pem_x509_certificate(entry["cert"].encode())
        public = jwt.PyJWK(jwk).key
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert cert.public_key().public_bytes(*der) == public.public_bytes(*der)


def test_a_certificate_is_made_once(root: Path) -> None:
    first = keydir.load(root, OVERLAP, T0).current.cert_pem
    assert keydir.load(root, OVERLAP, T1).current.cert_pem == first


# -- rotate --------------------------------------------------------------------------


def test_rotate_keeps_the_previous_key_verifying_during_the_overlap(root: Path, alg: str) -> None:
    old_ring = keydir.load(root, OVERLAP, T0)
    old_token = old_ring.sign({"sub": "old", "aud": "app"})
    new = keydir.rotate(root, alg, OVERLAP, T1)
    assert new.kid != old_ring.current.kid and new.created == T1 and new.retired is None

    during = keydir.load(root, OVERLAP, T1 + OVERLAP - 1)
    assert [k.kid for k in during.keys] == [new.kid, old_ring.current.kid]
    assert during.keys[1].retired == T1
    assert during.expires == T1 + OVERLAP
    assert verify(old_token, during)["sub"] == "old"
    assert jwt.get_unverified_header(during.sign({"aud": "app"}))["kid"] == new.kid

    after = keydir.load(root, OVERLAP, T1 + OVERLAP)
    assert after.keys == (after.current,) and after.current.kid == new.kid and after.expires is None
    with pytest.raises(StopIteration):
        verify(old_token, after)  # its kid is no longer published


def test_rotate_deletes_keys_whose_overlap_has_ended(root: Path, alg: str) -> None:
    first = _entry(root)
    keydir.rotate(root, alg, OVERLAP, T1)
    assert (root / first["file"]).exists()  # still inside its overlap
    third = keydir.rotate(root, alg, OVERLAP, T1 + OVERLAP)
    assert not (root / first["file"]).exists() and not (root / first["cert"]).exists()
    assert [e["kid"] for e in manifest(root)["keys"]][:1] == [third.kid]
    assert len(manifest(root)["keys"]) == 2


def test_expires_is_the_earliest_end_of_an_overlap(root: Path, alg: str) -> None:
    keydir.rotate(root, alg, OVERLAP, T1)
    keydir.rotate(root, alg, OVERLAP, T1 + 10)
    ring = keydir.load(root, OVERLAP, T1 + 20)
    assert [k.retired for k in ring.keys] == [None, T1 + 10, T1]  # most recently retired first
    assert ring.expires == T1 + OVERLAP
    assert keydir.load(root, OVERLAP, T1 + OVERLAP).expires == T1 + 10 + OVERLAP


def test_rotate_with_no_overlap_drops_the_previous_key_at_once(root: Path, alg: str) -> None:
    old = _entry(root)
    keydir.rotate(root, alg, 0, T1)
    assert len(keydir.load(root, 0, T1).keys) == 1
    assert not (root / old["file"]).exists()


def test_load_with_a_longer_overlap_than_rotate_used_keeps_undeleted_keys(root: Path, alg: str) -> None:
    keydir.rotate(root, alg, OVERLAP, T1)
    assert len(keydir.load(root, 2 * OVERLAP, T1 + OVERLAP).keys) == 2


def test_rotate_to_another_algorithm_keeps_each_keys_own_alg(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    keydir.ensure(root, "ES256", T0)
    old_token = keydir.load(root, OVERLAP, T0).sign({"aud": "app"})
    keydir.rotate(root, "RS256", OVERLAP, T1)
    ring = keydir.load(root, OVERLAP, T1)
    assert [k.alg for k in ring.keys] == ["RS256", "ES256"]
    assert [k["alg"] for k in json.loads(ring.jwks())["keys"]] == ["RS256", "ES256"]
    verify(old_token, ring)
    assert jwt.get_unverified_header(ring.sign({"aud": "app"}))["alg"] == "RS256"


def test_fingerprint_changes_with_every_rotation(root: Path, alg: str) -> None:
    seen = {keydir.fingerprint(root)}
    for i in range(3):
        keydir.rotate(root, alg, OVERLAP, T1 + i)
        seen.add(keydir.fingerprint(root))
    assert len(seen) == 4 and None not in seen
    assert keydir.load(root, OVERLAP, T1).fingerprint == keydir.fingerprint(root)


def test_secret_is_kept_across_rotations(root: Path, alg: str) -> None:
    before = keydir.secret(root)
    keydir.rotate(root, alg, OVERLAP, T1)
    assert keydir.secret(root) == before


def test_load_retries_when_a_rotation_deletes_a_key_under_it(
    root: Path, alg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keydir.rotate(root, alg, OVERLAP, T1)
    real = keydir._load_key
    raced: list[bool] = []

    def racing(where: Path, entry: Any) -> keydir.SigningKey:
        if not raced:  # the rotation lands between reading the manifest and the keys
            raced.append(True)
            keydir.rotate(root, alg, 0, T1 + 1)
        return real(where, entry)

    monkeypatch.setattr(keydir, "_load_key", racing)
    ring = keydir.load(root, OVERLAP, T1 + 1)
    assert raced and len(ring.keys) == 1 and ring.fingerprint == keydir.fingerprint(root)


# -- edge keys rotate ----------------------------------------------------------------


def _fake_config(team: Any) -> Any:
    return lambda path: SimpleNamespace(team=team)


def test_cli_rotate_creates_then_rotates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """In-process, with the config loader replaced: independent of the [team] schema."""
    root = tmp_path / "keys"
    team = SimpleNamespace(key_dir=str(root), algorithm="ES256", key_overlap=OVERLAP)
    monkeypatch.setattr(cli, "load", _fake_config(team))
    assert cli.main(["keys", "rotate", "-c", "x.toml"]) == 0
    first = keydir.load(root, OVERLAP, T0).current.kid
    assert capsys.readouterr().out.splitlines() == [
        f"created {root}",
        f"kid:      {first} (ES256), signing from now on",
    ]
    assert cli.main(["keys", "rotate", "-c", "x.toml"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("kid:      ") and first not in lines[0]
    assert lines[1].startswith(f"previous: {first} (ES256) still verifies until ")
    assert lines[1].endswith(" UTC") and len(lines) == 2


def test_cli_rotate_without_a_team_table(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(cli, "load", _fake_config(None))
    assert cli.main(["keys", "rotate", "-c", "x.toml"]) == 2
    assert capsys.readouterr().err == "edge: x.toml: no [team] table, so no key directory to rotate\n"


def test_cli_rotate_reports_an_unsafe_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    root = tmp_path / "keys"
    keydir.ensure(root, "ES256", T0)
    root.chmod(0o777)
    team = SimpleNamespace(key_dir=str(root), algorithm="ES256", key_overlap=OVERLAP)
    monkeypatch.setattr(cli, "load", _fake_config(team))
    assert cli.main(["keys", "rotate", "-c", "x.toml"]) == 2
    assert capsys.readouterr().err == (
        f"edge: {root}: permissions 0777 are too open; the key directory must not be writable "
        f"by group or others. Fix with: chmod 700 {root}\n"
    )


TEAM_TOML = """
[team]
host = "team.localhost"
key_dir = "{key_dir}"
algorithm = "RS256"
key_overlap = 60

[[team.providers]]
type = "dev"

[[team.providers.users]]
email = "alice@example.com"
password = "scrypt$15$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
"""


def test_cli_rotate_from_a_real_config(tmp_path: Path) -> None:
    """The whole path, as a user runs it. Depends on the [team] schema of
    edge/config/schema.py (host, providers, key_dir, algorithm, key_overlap)."""
    root = tmp_path / "keys"
    config = tmp_path / "edge.toml"
    config.write_text(TEAM_TOML.format(key_dir=root))
    run = [sys.executable, "-m", "edge", "keys", "rotate", "-c", str(config)]
    for expected in ("created", "previous"):
        result = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
    rotated_at = max(e["created"] for e in manifest(root)["keys"])
    ring = keydir.load(root, 60, rotated_at)
    assert [k.alg for k in ring.keys] == ["RS256", "RS256"]
