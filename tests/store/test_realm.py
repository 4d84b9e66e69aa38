"""
Tests of virtual hosting in the realm: Maildir templates (C{%u}, C{%n},
C{%d}, C{%%}), how login names are split and checked, and the
C{--maildir} option, on real temporary directories.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.portal import IRealm
from twisted.python import usage
from zope.interface.verify import verifyObject

from popsrv.app.service import Options, makeService
from popsrv.interfaces import IMaildrop
from popsrv.store.realm import (
    BadMaildirTemplate,
    MaildirRealm,
    MaildirTemplate,
    UnsafeMailboxName,
    canonicalLogin,
    splitLogin,
)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--auth", "memory:alice:secret", *args])
    return options


@pytest.mark.parametrize("login, parts", [
    ("alice", ("alice", "")),
    ("alice@example.com", ("alice", "example.com")),
    ("Alice@Example.COM", ("Alice", "example.com")),
    ("a@b@Example.org", ("a@b", "example.org")),
    ("alice@", ("alice", "")),
    ("@example.com", ("", "example.com")),
])
def test_splitLogin(login, parts):
    """
    The local part is before the last @ and kept as given; the domain is
    after it, lower-cased, and empty without an @.
    """
    assert splitLogin(login) == parts


def test_canonicalLoginLowerCasesOnlyTheDomain():
    """
    The maildrop's name is the full login with its domain lower-cased.
    """
    assert canonicalLogin("Alice@Example.COM") == "Alice@example.com"
    assert canonicalLogin("Alice") == "Alice"


@pytest.mark.parametrize("template, login, expected", [
    ("/var/vmail/%d/%n", "alice@example.com", "/var/vmail/example.com/alice"),
    ("/var/vmail/%d/%n", "Alice@EXAMPLE.com", "/var/vmail/example.com/Alice"),
    ("/var/vmail/%d/%n/Maildir", "bob@example.org", "/var/vmail/example.org/bob/Maildir"),
    ("/var/mail/%u", "alice@Example.com", "/var/mail/alice@Example.com"),
    ("/var/mail/%n", "alice@example.com", "/var/mail/alice"),
    ("/var/mail/%n", "alice", "/var/mail/alice"),
    ("/home/user-%n@%d", "carol@example.net", "/home/user-carol@example.net"),
    ("/srv/100%%/%u", "alice", "/srv/100%/alice"),
    ("/srv/%%u/%u", "alice", "/srv/%u/alice"),
    ("/%u", "alice", "/alice"),
])
def test_expansion(template, login, expected):
    """
    Placeholders are filled in from the login; %% is a literal %.
    """
    assert MaildirTemplate(template).expand(login) == expected


def test_relativeTemplateIsMadeAbsolute(tmp_path, monkeypatch):
    """
    A relative template is relative to the directory popsrv starts in.
    """
    monkeypatch.chdir(tmp_path)
    template = MaildirTemplate("vmail/%d/%n")
    assert template.base == str(tmp_path / "vmail")
    assert template.expand("alice@example.com") == str(tmp_path / "vmail" / "example.com" / "alice")


@pytest.mark.parametrize("template, base", [
    ("/var/vmail/%d/%n", "/var/vmail"),
    ("/home/user-%u/Maildir", "/home"),
    ("/var/../srv/mail/%u", "/srv/mail"),
    ("/srv/mail//%u", "/srv/mail"),
])
def test_base(template, base):
    """
    The base is the directory the fixed text before the first placeholder
    names.
    """
    assert MaildirTemplate(template).base == base


@pytest.mark.parametrize("template, message", [
    ("/var/vmail/%x", "has %x"),
    ("/var/vmail/%U", "has %U"),
    ("/var/vmail/%u%", "lone %"),
    ("/var/vmail/%d", "needs %u or %n"),
    ("/var/vmail", "needs %u or %n"),
    ("/var/vmail/%%u", "needs %u or %n"),
    ("/var/vmail/%d/../%n", r"\.\."),
    ("/var/vmail/%n/./Maildir", r"\."),
    ("/var/vmail/%n.%d", "%n and %d without a /"),
    ("/var/vmail/%d-%u", "%d and %u without a /"),
    ("/var/vmail/%n%d", "%n and %d without a /"),
])
def test_badTemplates(template, message):
    """
    An unknown placeholder, a template that does not tell users apart (no
    %u or %n, or two placeholders without a / between them), or a . or ..
    after the first placeholder is refused.
    """
    with pytest.raises(BadMaildirTemplate, match=message):
        MaildirTemplate(template)


@pytest.mark.parametrize("login, why", [
    ("alice", "no @domain"),
    ("alice@", "no @domain"),
    ("@example.com", "local part .* empty"),
    ("alice@.example.com", "domain .* not a plain file name"),
    ("..@example.com", "local part .* not a plain file name"),
    (".alice@example.com", "local part .* not a plain file name"),
    ("alice@exa\\mple.com", "domain .* not a plain file name"),
    ("alice@exa\x7fmple.com", "domain .* control character"),
    ("a" * 256 + "@example.com", "local part .* too long"),
])
def test_unsafeOrMissingPartsAreRefused(login, why):
    """
    A login whose parts cannot fill the template fails with
    UnsafeMailboxName (a failed login), saying which part and why.
    """
    template = MaildirTemplate("/var/vmail/%d/%n")
    with pytest.raises(UnsafeMailboxName, match=why):
        template.expand(login)


def test_longComponentIsRefused():
    """
    Fixed text and a value together may not make a directory name longer
    than 255 octets.
    """
    template = MaildirTemplate("/var/vmail/users-of-%n")
    assert template.expand("a" * 246) == "/var/vmail/users-of-" + "a" * 246
    with pytest.raises(UnsafeMailboxName, match="too long"):
        template.expand("a" * 247)


def test_domainIsNotNeededWithoutPercentD():
    """
    Without %d in the template, logins without a domain work.
    """
    assert MaildirTemplate("/var/mail/%n").expand("alice") == "/var/mail/alice"
    assert MaildirTemplate("/var/mail/%u").expand("alice@") == "/var/mail/alice@"


def test_forRootIsRootSlashLogin():
    """
    A root directory is the template root/%u, even if it has a %.
    """
    assert MaildirTemplate.forRoot("/var/mail").expand("alice@example.com") == "/var/mail/alice@example.com"
    assert MaildirTemplate.forRoot("/srv/100%d").expand("alice") == "/srv/100%d/alice"


LOGIN_TEXT = st.lists(
    st.sampled_from(list("aZ.@/\\%-_\x00\n\x7f\u0085é") + ["..", "@.", "/..", "\udcff"]), max_size=12,
).map("".join)
TEMPLATES = st.sampled_from([
    "/srv/vmail/%d/%n", "/srv/vmail/%u", "/srv/vmail/%n", "/srv/vmail/x%d/.%n/Maildir",
    "/srv/vmail/%n@%d", "/srv/vmail/.%n", "/srv/vmail/%d/%u", "/srv/vmail/%%%n",
])


@settings(max_examples=2000, deadline=None)
@given(template=TEMPLATES, login=LOGIN_TEXT)
def test_noExpansionLeavesTheBase(template, login):
    """
    Whatever the login, an expansion either fails with UnsafeMailboxName or
    is a path strictly below the template's base, with no . or ..
    component, that still names a directory of its own per login part.
    """
    parsed = MaildirTemplate(template)
    try:
        path = parsed.expand(login)
    except UnsafeMailboxName:
        return
    assert path.startswith(parsed.base + os.sep)
    assert os.path.normpath(path) == path
    relative = path[len(parsed.base) + 1:]
    assert all(component not in ("", ".", "..") for component in relative.split(os.sep))
    assert "\x00" not in path


def test_realmServesTheTemplatePath(tmp_path):
    """
    A realm with a template gives each login the maildrop at its expanded
    path, named by the full login (domain lower-cased), and lock() creates
    it there and nowhere else.
    """
    realm = MaildirRealm(template=str(tmp_path / "vmail" / "%d" / "%n"))
    assert verifyObject(IRealm, realm)
    assert realm.root == str(tmp_path / "vmail")
    interface, maildrop, logout = realm.requestAvatar(b"Alice@Example.COM", None, IMaildrop)
    assert verifyObject(IMaildrop, maildrop)
    assert maildrop.name == "Alice@example.com"
    assert maildrop.path == str(tmp_path / "vmail" / "example.com" / "Alice")
    maildrop.lock()
    maildrop.release()
    assert sorted(os.listdir(tmp_path)) == ["vmail"]
    assert os.listdir(tmp_path / "vmail") == ["example.com"]
    assert os.listdir(tmp_path / "vmail" / "example.com") == ["Alice"]


def test_realmRefusesLoginWithoutDomainAndCreatesNothing(tmp_path):
    """
    With %d in the template, a login without a domain fails like a wrong
    password, and no directory is created.
    """
    realm = MaildirRealm(template=str(tmp_path / "%d" / "%n"))
    with pytest.raises(UnsafeMailboxName, match="no @domain"):
        realm.requestAvatar(b"alice", None, IMaildrop)
    assert os.listdir(tmp_path) == []


def test_realmTakesRootOrTemplate(tmp_path):
    """
    MaildirRealm(root) is MaildirRealm(template=root/%u); giving both, or
    neither, is a mistake.
    """
    realm = MaildirRealm(str(tmp_path))
    assert realm.root == str(tmp_path)
    assert realm.maildropFor("alice@Example.com").path == str(tmp_path / "alice@Example.com")
    assert realm.maildropFor("alice@Example.com").name == "alice@example.com"
    with pytest.raises(TypeError):
        MaildirRealm(str(tmp_path), template=str(tmp_path / "%u"))
    with pytest.raises(TypeError):
        MaildirRealm()


def test_maildirOption(tmp_path):
    """
    --maildir gives the realm its template; --maildir-root DIR is DIR/%u and
    stays the default (./mail).
    """
    options = parse("--maildir", str(tmp_path / "%d" / "%n"))
    assert options["maildir-template"].text == str(tmp_path / "%d" / "%n")
    assert options["maildir-root"] is None
    from twisted.internet.testing import MemoryReactorClock

    service = makeService(options, reactor=MemoryReactorClock())
    service.startService()
    try:
        realm = service.services[0].factory.portal.realm
        assert realm.maildropFor("alice@example.com").path == str(tmp_path / "example.com" / "alice")
    finally:
        service.stopService()
    assert parse()["maildir-template"].base == os.path.abspath("mail")
    assert parse("--maildir-root", str(tmp_path))["maildir-template"].expand("bob") == str(tmp_path / "bob")


@pytest.mark.parametrize("args, message", [
    (["--maildir", "/srv/%u", "--maildir-root", "/srv"], "not both"),
    (["--maildir", "/srv/%x"], "--maildir: .*%x"),
    (["--maildir", "/srv/%d"], "--maildir: .*needs %u or %n"),
])
def test_badMaildirOptions(args, message):
    """
    Both options, an unknown placeholder or a template without the user are
    usage errors at startup.
    """
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_loginDelayCountsPerMaildrop(tmp_path):
    """
    The login delay keys on the maildrop's name, the login with its domain
    lower-cased: two spellings of one domain are one user for it, and
    replies name the maildrop that way.
    """
    from popsrv.pop3.policy import LoginPolicy
    from tests.support.session import Session, makePortal

    portal, _ = makePortal(
        {"alice@Example.COM": "secret", "alice@example.com": "secret"},
        realm=MaildirRealm(template=str(tmp_path / "%d" / "%n")),
    )
    first = Session(portal, policy=LoginPolicy("always", 900))
    assert first.login("alice@Example.COM").startswith(b"+OK alice@example.com has 0 messages")
    assert first.send("QUIT").startswith(b"+OK")
    second = Session(portal, clock=first.clock, policy=first.factory.policy, timeout=3600, loginTimeout=None)
    assert second.login("alice@example.com").startswith(b"-ERR [LOGIN-DELAY]")
    first.clock.advance(900)
    assert second.login("alice@example.com").startswith(b"+OK alice@example.com has 0 messages")
    assert os.listdir(tmp_path) == ["example.com"]
