"""[[groups]], [[lists]] and the group, email_list, ip_list, auth_method and
login_method selectors: what loads, and each error with its key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from certs import client_certs

from edge.access.claims import Identity
from edge.access.compile import compile_config
from edge.access.subject import Subject
from edge.cli.main import EXIT_OK, main
from edge.config.errors import ConfigError
from edge.config.load import load, loads

SOURCE = "edge.toml"


def app(policy: str, action: str = "allow") -> str:
    return f"""
[[apps]]
name = "api"
domains = ["api.example.com"]
upstream = "http://127.0.0.1:9000"
[[apps.policies]]
name = "p"
action = "{action}"
{policy}
"""


STAFF = """
[[groups]]
name = "staff"
include = [{ email_domains = ["example.com"] }]
exclude = [{ email_list = ["contractors"] }]

[[lists]]
name = "contractors"
type = "email"
items = ["Carol@Example.com", "dave@example.com"]

[[lists]]
name = "office"
type = "ip"
items = ["192.0.2.0/24", "2001:db8::1"]
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, SOURCE)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{SOURCE}: ")


def test_groups_lists_and_the_new_selectors_load() -> None:
    config = loads(
        STAFF
        + """
[[groups]]
name = "admins"
include = [{ group = ["staff"] }]
require = [{ auth_method = ["mfa", "hwk"] }, { login_method = ["sso"] }]
"""
        + app('include = [{ group = ["admins", "staff"] }, { ip_list = ["office"] }]')
    )
    assert [g.name for g in config.groups] == ["staff", "admins"]
    assert config.groups[1].require[0].auth_method == ["mfa", "hwk"]
    assert [(x.name, x.type, x.items) for x in config.lists] == [
        ("contractors", "email", ["Carol@Example.com", "dave@example.com"]),
        ("office", "ip", ["192.0.2.0/24", "2001:db8::1"]),
    ]
    assert config.apps[0].policies[0].include[0].selector == "group"


def test_a_list_file_is_read_at_load(tmp_path: Path) -> None:
    listed = tmp_path / "contractors.txt"
    listed.write_text("# contractors, one a line\n\ncarol@example.com\n  dave@example.com  # until May\n")
    config = loads(
        f'[[lists]]\nname = "c"\ntype = "email"\nfile = "{listed}"\n'
        + app('include = [{ email_list = ["c"] }]')
    )
    assert config.lists[0].items == ["carol@example.com", "dave@example.com"]
    assert config.lists[0].file == str(listed)


def test_a_list_file_path_is_relative_to_the_working_directory_like_jwks_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "office.txt").write_text("10.0.0.0/8\n")
    (tmp_path / "edge.toml").write_text(
        '[[lists]]\nname = "office"\ntype = "ip"\nfile = "lists/office.txt"\n'
        + app('include = [{ ip_list = ["office"] }]')
    )
    monkeypatch.chdir(tmp_path)
    assert load("edge.toml").lists[0].items == ["10.0.0.0/8"]


def test_a_bad_list_line_names_the_file_and_line(tmp_path: Path) -> None:
    listed = tmp_path / "office.txt"
    listed.write_text("# office\n192.0.2.0/24\n\n10.0.0.300\n")
    text = f'[[lists]]\nname = "office"\ntype = "ip"\nfile = "{listed}"\n' + app(
        'include = [{ ip_list = ["office"] }]'
    )
    assert error_of(text) == (
        f"$.lists[0].file: {listed}:4: Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', "
        "got '10.0.0.300' ('10.0.0.300' does not appear to be an IPv4 or IPv6 network)"
    )


def test_a_bad_email_list_line(tmp_path: Path) -> None:
    listed = tmp_path / "c.txt"
    listed.write_text("carol@example.com\nnot an email\n")
    text = f'[[lists]]\nname = "c"\ntype = "email"\nfile = "{listed}"\n' + app(
        'include = [{ email_list = ["c"] }]'
    )
    assert error_of(text) == f"$.lists[0].file: {listed}:2: Expected an email address, got 'not an email'"


def test_a_missing_list_file(tmp_path: Path) -> None:
    text = f'[[lists]]\nname = "c"\ntype = "email"\nfile = "{tmp_path}/nope.txt"\n' + app(
        'include = [{ email_list = ["c"] }]'
    )
    assert error_of(text) == f"$.lists[0].file: cannot read '{tmp_path}/nope.txt': No such file or directory"


def test_a_load_hands_back_the_list_files_bytes_and_takes_them_instead_of_the_disk(tmp_path: Path) -> None:
    """How a supervisor's workers serve the very list files it checked: its
    load records each file's bytes in `files`; a worker's load given them
    reads nothing from disk, even when the file has changed or gone."""
    office = tmp_path / "office.txt"
    office.write_bytes(b"# office\n192.0.2.0/24\n")
    text = (
        f'[[lists]]\nname = "office"\ntype = "ip"\nfile = "{office}"\n'
        f'[[lists]]\nname = "again"\ntype = "ip"\nfile = "{office}"\n'
        '[[lists]]\nname = "inline"\ntype = "ip"\nitems = ["198.51.100.0/24"]\n'
        + app('include = [{ ip_list = ["office", "again", "inline"] }]')
    )
    files: dict[str, bytes] = {}
    checked = loads(text, SOURCE, files)
    assert files == {str(office): b"# office\n192.0.2.0/24\n"}  # each file once, inline lists not at all

    office.write_bytes(b"10.0.0.0/8\n")
    assert [x.items for x in loads(text, SOURCE, dict(files)).lists] == [x.items for x in checked.lists]
    office.unlink()
    assert loads(text, SOURCE, dict(files)).lists[0].items == ["192.0.2.0/24"]
    with pytest.raises(ConfigError, match="No such file"):
        loads(text, SOURCE)  # what the disk now says
    # The bytes handed over are checked as the file's would be.
    with pytest.raises(ConfigError, match=re.escape(f"$.lists[0].file: {office}:1: Expected an IP network")):
        loads(text, SOURCE, {str(office): b"nope\n"})


GROUP = '[[groups]]\nname = "{name}"\ninclude = [{rule}]\n'


TOKEN = (
    '[[service_tokens]]\nname = "ci"\nclient_id = "ci.access"\n'
    'secret_sha256 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"\n'
)


def group(name: str, rule: str = "{ everyone = true }", extra: str = "") -> str:
    return GROUP.format(name=name, rule=rule) + extra


ERRORS = [
    # unknown names, from a policy and from a group
    (
        app('include = [{ group = ["staff"] }]'),
        "$.apps[0].policies[0].include[0].group[0]: Expected the name of a [[groups]] entry, got 'staff' "
        "(none are configured)",
    ),
    (
        group("staff") + app('include = [{ email_domains = ["x.com"] }]\nrequire = [{ group = ["staf"] }]'),
        "$.apps[0].policies[0].require[0].group[0]: Expected the name of a [[groups]] entry, got 'staf' "
        "(known: staff)",
    ),
    (
        group("a", '{ group = ["b"] }') + app('include = [{ group = ["a"] }]'),
        "$.groups[0].include[0].group[0]: Expected the name of a [[groups]] entry, got 'b' (known: a)",
    ),
    # cycles: two groups, and a group naming itself
    (
        group("a", '{ group = ["b"] }')
        + group("b", '{ group = ["a"] }')
        + app('include = [{ group = ["a"] }]'),
        "$.groups[0].include[0].group[0]: Expected no cycle of groups, got a -> b -> a",
    ),
    (
        group("a", "{ everyone = true }", 'exclude = [{ group = ["a"] }]\n')
        + app('include = [{ group = ["a"] }]'),
        "$.groups[0].exclude[0].group[0]: Expected no cycle of groups, got a -> a",
    ),
    (
        group("a", '{ group = ["b"] }')
        + group("b", '{ group = ["c"] }')
        + group("c", "{ everyone = true }", 'require = [{ group = ["b"] }]\n')
        + app('include = [{ group = ["a"] }]'),
        "$.groups[1].include[0].group[0]: Expected no cycle of groups, got b -> c -> b",
    ),
    (
        group("a") + group("a") + app('include = [{ group = ["a"] }]'),
        "$.groups[1].name: 'a' is already used by $.groups[0]",
    ),
    (
        '[[groups]]\nname = "a"\ninclude = []\n' + app('include = [{ group = ["a"] }]'),
        "$.groups[0].include: Expected at least one rule",
    ),
    (
        group("a", "{ group = [] }") + app('include = [{ group = ["a"] }]'),
        "$.groups[0].include[0].group: Expected at least one value",
    ),
    # lists: unknown, wrong type, and the list's own keys
    (
        STAFF + app('include = [{ email_list = ["vendors"] }]'),
        "$.apps[0].policies[0].include[0].email_list[0]: Expected the name of a [[lists]] entry, "
        "got 'vendors' (known: contractors, office)",
    ),
    (
        STAFF + app('include = [{ ip_list = ["contractors"] }]'),
        "$.apps[0].policies[0].include[0].ip_list[0]: Expected a list of type 'ip', "
        "got 'contractors' of type 'email'",
    ),
    (
        STAFF + app('include = [{ email_list = ["office"] }]'),
        "$.apps[0].policies[0].include[0].email_list[0]: Expected a list of type 'email', "
        "got 'office' of type 'ip'",
    ),
    (
        '[[lists]]\nname = "x"\ntype = "phone"\nitems = ["1"]\n' + app("include = [{ everyone = true }]"),
        "$.lists[0].type: Expected one of email, ip, got 'phone'",
    ),
    (
        '[[lists]]\nname = "x"\ntype = "ip"\n' + app("include = [{ everyone = true }]"),
        "$.lists[0]: Expected exactly one of items or file, got none",
    ),
    (
        '[[lists]]\nname = "x"\ntype = "ip"\nitems = []\nfile = "x.txt"\n'
        + app("include = [{ everyone = true }]"),
        "$.lists[0]: Expected exactly one of items or file, got items and file",
    ),
    (
        '[[lists]]\nname = "x"\ntype = "ip"\nitems = ["10.0.0.1/8"]\n'
        + app("include = [{ everyone = true }]"),
        "$.lists[0].items[0]: Expected an IP network like '10.0.0.0/8' or '2001:db8::/32', got '10.0.0.1/8' "
        "(10.0.0.1/8 has host bits set)",
    ),
    (
        '[[lists]]\nname = "x"\ntype = "email"\nitems = ["nobody"]\n'
        + app("include = [{ everyone = true }]"),
        "$.lists[0].items[0]: Expected an email address, got 'nobody'",
    ),
    (
        STAFF
        + '[[lists]]\nname = "office"\ntype = "ip"\nitems = []\n'
        + app("include = [{ everyone = true }]"),
        "$.lists[2].name: 'office' is already used by $.lists[1]",
    ),
    # ... and inside groups, also in a group no policy uses
    (
        STAFF + group("remote", '{ email_list = ["vendors"] }') + app('include = [{ group = ["staff"] }]'),
        "$.groups[1].include[0].email_list[0]: Expected the name of a [[lists]] entry, "
        "got 'vendors' (known: contractors, office)",
    ),
    (
        STAFF
        + group("remote", "{ everyone = true }", 'require = [{ ip_list = ["contractors"] }]\n')
        + group("outer", '{ group = ["remote"] }')
        + app('include = [{ group = ["outer"] }]'),
        "$.groups[1].require[0].ip_list[0]: Expected a list of type 'ip', got 'contractors' of type 'email'",
    ),
    # the selectors' values
    (
        app("include = [{ auth_method = [] }]"),
        "$.apps[0].policies[0].include[0].auth_method: Expected at least one value",
    ),
    (
        app('include = [{ login_method = [""] }]'),
        "$.apps[0].policies[0].include[0].login_method[0]: Expected a non-empty printable string, got ''",
    ),
    # service token names are checked inside groups as in policies: directly, two deep, and in a
    # group no policy uses yet (like group and list names)
    (
        group("machines", '{ service_tokens = ["nope"] }')
        + app('include = [{ group = ["machines"] }]', "service_auth"),
        "$.groups[0].include[0].service_tokens[0]: Expected the name of a [[service_tokens]] entry, "
        "got 'nope' (none are configured)",
    ),
    (
        TOKEN
        + group("deploy", '{ service_tokens = ["ci"] }', 'exclude = [{ service_tokens = ["c1"] }]\n')
        + group("machines", '{ group = ["deploy"] }')
        + app('include = [{ group = ["machines"] }]', "service_auth"),
        "$.groups[0].exclude[0].service_tokens[0]: Expected the name of a [[service_tokens]] entry, "
        "got 'c1' (known: ci)",
    ),
    (
        TOKEN + group("spare", '{ service_tokens = ["ci", "cd"] }') + app("include = [{ everyone = true }]"),
        "$.groups[0].include[0].service_tokens[1]: Expected the name of a [[service_tokens]] entry, "
        "got 'cd' (known: ci)",
    ),
    # identity selectors are for allow/deny policies, also through groups
    (
        app('include = [{ auth_method = ["mfa"] }]', action="bypass"),
        "$.apps[0].policies[0].include[0].auth_method: Expected no identity selector in a bypass policy: "
        "it is decided without a user token",
    ),
    (
        STAFF + app('include = [{ group = ["staff"] }]', action="bypass"),
        "$.apps[0].policies[0].include[0].group[0]: Expected no identity selector in group 'staff': it is "
        "used by a bypass policy, which is decided without a user token",
    ),
    (
        STAFF
        + group("outer", '{ group = ["staff"] }')
        + app('include = [{ group = ["outer"] }]', "service_auth"),
        "$.apps[0].policies[0].include[0].group[0]: Expected no identity selector in group 'outer': it is "
        "used by a service_auth policy, which is decided without a user token",
    ),
    (
        group("machines", "{ everyone = true }", "exclude = [{ any_service_token = true }]\n")
        + group("outer", '{ group = ["machines"] }')
        + app('include = [{ group = ["outer"] }]', "deny"),
        "$.apps[0].policies[0].include[0].group[0]: Expected no service token selector in group 'outer': "
        "it is used by a deny policy (service tokens count only in service_auth policies)",
    ),
    (
        group("machines", "{ any_service_token = true }") + app('include = [{ group = ["machines"] }]'),
        "$.apps[0].policies[0].include[0].group[0]: Expected no service token selector in group 'machines': "
        "it is used by an allow policy (service tokens count only in service_auth policies)",
    ),
    # ... and in a bypass policy, as inline (a bypass policy is decided without any token)
    (
        TOKEN
        + group("machines", '{ service_tokens = ["ci"] }')
        + group("outer", '{ group = ["machines"] }')
        + app('include = [{ group = ["outer"] }]', "bypass"),
        "$.apps[0].policies[0].include[0].group[0]: Expected no service token selector in group 'outer': "
        "it is used by a bypass policy (service tokens count only in service_auth policies)",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors(text: str, message: str) -> None:
    assert error_of(text) == message


def test_ip_lists_may_serve_bypass_policies() -> None:
    config = loads(STAFF + app('include = [{ ip_list = ["office"] }]', action="bypass"))
    assert config.apps[0].policies[0].include[0].ip_list == ["office"]


def test_dev_users_report_pwd_unless_they_say_otherwise() -> None:
    password = "scrypt$15$8$1$ajQGKN8a2FLTxJ-7BZEQ3Q$exJqGh1glOXTKS5C-Zm_XqPh-A37Hy4nMsBCA4JIiZQ"
    text = f"""
[team]
host = "auth.localhost"
[[team.providers]]
type = "dev"
users = [
  {{ email = "alice@example.com", password = "{password}", amr = ["pwd", "mfa"] }},
  {{ email = "bob@example.com", password = "{password}" }},
]
"""
    config = loads(text)
    assert config.team is not None
    users = config.team.providers[0].users  # type: ignore[union-attr]
    assert [u.amr for u in users] == [["pwd", "mfa"], ["pwd"]]
    with pytest.raises(
        ConfigError, match=r"\$\.team\.providers\[0\]\.users\[0\]\.amr\[0\]: Expected a non-empty"
    ):
        loads(text.replace('amr = ["pwd", "mfa"]', 'amr = [""]'))


# -- the worked example, conf/team.toml ---------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def person(
    email: str, groups: tuple[str, ...] = (), amr: tuple[str, ...] = ("pwd",), idp: str = "dev"
) -> Identity:
    return Identity(
        token=b"t",
        iss="i",
        aud=frozenset({"a"}),
        exp=0,
        iat=0,
        email=email,
        groups=frozenset(groups),
        amr=frozenset(amr),
        idp=idp,
        email_lower=email.lower(),
        email_domain=email.rpartition("@")[2].lower(),
    )


ALICE = person("alice@example.com", ("admins",), ("pwd", "mfa"))
CAROL = person("carol@example.com")
MALLORY = person("mallory@example.com", ("admins",))


@pytest.mark.parametrize(
    ("app", "who", "ip", "allowed"),
    [
        ("wiki", ALICE, "203.0.113.9", True),
        ("wiki", CAROL, "127.0.0.1", True),  # a contractor, from the office
        ("wiki", CAROL, "203.0.113.9", False),
        ("wiki", person("eve@elsewhere.test"), "127.0.0.1", False),
        ("admin", ALICE, "203.0.113.9", True),
        ("admin", MALLORY, "127.0.0.1", False),  # no second factor
        ("admin", person("alice@example.com", ("admins",), ("pwd", "mfa"), "sso"), "127.0.0.1", False),
        ("admin", person("carol@example.com", ("admins",), ("mfa",)), "127.0.0.1", False),  # not staff
    ],
)
def test_the_worked_example_decides_as_it_says(
    monkeypatch: pytest.MonkeyPatch, app: str, who: Identity, ip: str, allowed: bool
) -> None:
    monkeypatch.chdir(ROOT)
    compiled = compile_config(load("conf/team.toml"), "conf/team.toml")
    policies = next(a for a in compiled.apps if a.name == app).policies
    found, _ = policies.second_phase(Subject(ip, [], (), identity=who), None)
    assert (found is not None and found.action == "allow") is allowed


# The certificate block is commented out (the example serves plain HTTP): used
# as its comment says, every "#> " removed and real files for /etc/edge/*.
UNCOMMENT = re.compile(r"^#> ?", re.MULTILINE)
CERT_FILES = ("/etc/edge/server.pem", "/etc/edge/server-key.pem", "/etc/edge/client-ca.pem")


def uncommented(tmp_path: Path) -> tuple[str, Path]:
    """The example with its certificate block, and the client CA's file."""
    text = UNCOMMENT.sub("", (ROOT / "conf" / "team.toml").read_text())
    certs = client_certs(tmp_path / "certs")
    real = (certs.server.cert, certs.server.key, certs.client_ca.cert_path)
    for placeholder, path in zip(CERT_FILES, real, strict=True):
        assert placeholder in text
        text = text.replace(placeholder, str(path))
    return text, certs.client_ca.cert_path


def test_the_certificate_block_checks_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [g.name for g in load(ROOT / "conf" / "team.toml").groups] == ["staff", "admins"]  # as shipped
    monkeypatch.chdir(ROOT)
    text, ca = uncommented(tmp_path)
    path = tmp_path / "team.toml"
    path.write_text(text)
    assert main(["check", "-c", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"  client_ca:  {ca} (client certificates asked for, optional)" in out
    assert '  group "machines": 1 include, 0 require, 0 exclude; used by api/machines' in out


def test_the_certificate_block_needs_its_tls_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What its comment says: the rules alone are refused."""
    monkeypatch.chdir(ROOT)
    text, _ = uncommented(tmp_path)
    text = re.sub(r"^\[server\.tls\]\n(.*\n){3}", "", text, flags=re.MULTILINE)
    with pytest.raises(
        ConfigError, match=r"require\[0\]\.valid_certificate: Expected \[server\.tls\] client_ca"
    ):
        loads(text, SOURCE)


@pytest.mark.parametrize(
    ("cn", "who", "decided_by"),
    [
        ("build-bot", None, "machines"),  # the certificate alone: no service token, no login
        ("backup-bot", None, "machines"),
        ("build-bot", MALLORY, "machines"),
        ("svc-a", None, None),  # from client_ca, but not one of the machines
        (None, None, None),
        ("alice", ALICE, "admins on a managed device"),
        (None, ALICE, None),  # an admin, but no certificate
        ("", ALICE, "admins on a managed device"),  # a verified certificate without a CN
        ("mallory", MALLORY, None),  # a certificate, but no second factor
    ],
)
def test_the_certificate_block_decides_as_it_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cn: str | None,
    who: Identity | None,
    decided_by: str | None,
) -> None:
    monkeypatch.chdir(ROOT)
    text, _ = uncommented(tmp_path)
    policies = next(a for a in compile_config(loads(text, SOURCE)).apps if a.name == "api").policies
    subject = Subject("203.0.113.9", [], (), identity=who, client_cn=cn)
    found = policies.first_phase(subject, None)
    if found is None:
        found, _ = policies.second_phase(subject, None)
    assert (found.name if found is not None else None) == decided_by
