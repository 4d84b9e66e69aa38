"""
Tests of virtual hosting in the realm: Maildir templates (C{%u}, C{%n},
C{%d}, C{%%}), how login names are split and checked, and the
C{--maildir} option, on real temporary directories.
"""

from __future__ import annotations

import os
import poplib

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.portal import IRealm
from twisted.python import usage
from zope.interface.verify import verifyObject

from popsrv.app.listening import ListeningService
from popsrv.app.service import Options, makeService
from popsrv.interfaces import IMaildrop
from popsrv.store.maildir import deliver
from popsrv.store.realm import (
    BadMaildirTemplate,
    MaildirRealm,
    MaildirTemplate,
    UnsafeMailboxName,
    canonicalDomain,
    canonicalLogin,
    splitLogin,
)
from tests.support.servers import HOST, LISTEN_LOCAL, writePasswordFile
from tests.support.wire import SOCKET_TIMEOUT


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
    ("alice@.example.com", "domain .* empty label"),
    ("..@example.com", "local part .* not a plain file name"),
    (".alice@example.com", "local part .* not a plain file name"),
    ("alice@exa\\mple.com", "domain .* not a plain file name"),
    ("alice@exa\x7fmple.com", r"domain .* control character \(U\+007F\)"),
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
        [listener] = [child for child in service.services if isinstance(child, ListeningService)]
        realm = listener.factory.portal.realm
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
    assert second.send("QUIT").startswith(b"+OK")
    assert os.listdir(tmp_path) == ["example.com"]


# Hostile names: look-alike domains, case mappings, invisible characters


@pytest.mark.parametrize("domain, canonical", [
    ("", ""),
    ("example.com", "example.com"),
    ("Example.COM", "example.com"),
    ("under_score.Example", "under_score.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("Bücher.EXAMPLE", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("\u0131cloud.example", "xn--cloud-m4a.example"),
    ("公司.example", "xn--55qx5d.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
])
def test_canonicalDomain(domain, canonical):
    """
    A domain's canonical form is ASCII: A to Z lower-cased and nothing else,
    U-labels turned into their A-labels.  A dotless i is a letter of its
    own, not an i.
    """
    assert canonicalDomain(domain) == canonical


HOSTILE_DOMAINS = [
    ("\u212aey.com", "IDNA.*U\\+212A"),
    ("\u212aEY.COM", "IDNA.*U\\+212A"),
    ("\u0130cloud.com", "IDNA.*U\\+0130"),
    ("B\u00dcCHER.example", "IDNA.*U\\+00DC"),
    ("\uff45xample.com", "IDNA.*U\\+FF45"),
    ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "IDNA.*U\\+FF25"),
    ("example\uff0ecom", "IDNA.*U\\+FF0E"),
    ("example\u3002com", "IDNA.*U\\+3002"),
    ("e\u0301xample.com", "IDNA.*normalization form C"),
    ("exa\u202emple.com", "bidirectional control character \\(U\\+202E\\)"),
    ("exa\u200dmple.com", "format character \\(U\\+200D\\)"),
    ("exa\u00admple.com", "format character \\(U\\+00AD\\)"),
    ("exa\x00mple.com", "control character \\(U\\+0000\\)"),
    ("exa\x1bmple.com", "control character \\(U\\+001B\\)"),
    ("exa\udcffmple.com", "not UTF-8"),
    ("xn--.com", "IDNA"),
    ("xn--zz.com", "IDNA"),
    ("xn--abc.com", "IDNA"),
    ("xn--ls8h.com", "IDNA"),
    ("xn--bcher-kva-.com", "IDNA"),
    ("a" * 64 + ".com", "label longer than 63 octets"),
    ("\u00fc" * 58 + ".com", "IDNA.*too long"),
    (".".join(["a" * 63] * 4), "longer than 253 octets"),
    ("example..com", "empty label"),
    ("example.com.", "empty label"),
]


@pytest.mark.parametrize("domain, why", HOSTILE_DOMAINS, ids=ascii)
def test_hostileDomainsAreRefused(domain, why):
    """
    A domain that is neither ASCII nor valid IDNA 2008 as given (no Unicode
    case or look-alike mapping applied), or has an invisible or control
    character, an invalid xn-- label, an empty label, or a label or length
    too long for DNS, is refused, with the reason in plain ASCII; whatever
    the template, as the maildrop's name needs the domain too.
    """
    with pytest.raises(UnsafeMailboxName, match="domain of the login name .*" + why) as caught:
        canonicalDomain(domain)
    assert str(caught.value).isascii()
    login = "bob@" + domain
    for refuse in (canonicalLogin, splitLogin, MaildirTemplate("/var/vmail/%d/%n").expand,
                   MaildirTemplate.forRoot("/var/vmail").expand):
        with pytest.raises(UnsafeMailboxName, match="domain of the login name"):
            refuse(login)


def test_aKelvinSignDomainDoesNotReachTheOtherDomainsMaildir(tmp_path):
    """
    bob@\u212aey.com (a Kelvin sign, which Unicode lower-cases to k) is not
    bob@key.com: the realm refuses it, with either kind of template, and
    creates nothing.
    """
    for realm in (MaildirRealm(template=str(tmp_path / "vmail" / "%d" / "%n")), MaildirRealm(str(tmp_path / "mail"))):
        assert realm.maildropFor("bob@key.com").name == "bob@key.com"
        for avatarId in ("bob@\u212aey.com", "bob@\u212aey.com".encode()):
            with pytest.raises(UnsafeMailboxName, match="U\\+212A"):
                realm.requestAvatar(avatarId, None, IMaildrop)
    assert os.listdir(tmp_path) == []


LOOK_ALIKE_LOCAL_PARTS = [
    "Kate", "kate", "\u212aate", "\uff4bate", "\uff2bate",
    "i", "I", "\u0131", "\u0130", "i\u0307",
    "\u00df", "ss", "SS", "\u1e9e",
    "\u00e9", "e\u0301",
    "\ufb01le", "file",
]


def test_localPartsAreKeptAsGiven():
    """
    Local parts are never case-mapped or normalized: names that Unicode
    case folding or normalization would make one (a Kelvin sign and a K,
    full-width letters, dotless and dotted i, sharp s and ss, precomposed
    and combining accents, ligatures) name distinct Maildirs, each its own
    name octet for octet.
    """
    template = MaildirTemplate("/var/vmail/%d/%n")
    paths = [template.expand(local + "@Example.com") for local in LOOK_ALIKE_LOCAL_PARTS]
    assert paths == [f"/var/vmail/example.com/{local}" for local in LOOK_ALIKE_LOCAL_PARTS]
    assert len(set(paths)) == len(paths)
    names = [canonicalLogin(local + "@Example.com") for local in LOOK_ALIKE_LOCAL_PARTS]
    assert names == [local + "@example.com" for local in LOOK_ALIKE_LOCAL_PARTS]
    root = MaildirTemplate.forRoot("/var/mail")
    assert len({root.expand(local) for local in LOOK_ALIKE_LOCAL_PARTS}) == len(LOOK_ALIKE_LOCAL_PARTS)


REFUSED_CHARACTERS = [
    ("\u202e", "bidirectional"), ("\u202a", "bidirectional"), ("\u202c", "bidirectional"),
    ("\u2066", "bidirectional"), ("\u2069", "bidirectional"), ("\u200e", "bidirectional"),
    ("\u200f", "bidirectional"), ("\u061c", "bidirectional"),
    ("\u200d", "format"), ("\u200c", "format"), ("\u200b", "format"), ("\u00ad", "format"),
    ("\u2060", "format"), ("\ufeff", "format"), ("\U000e0041", "format"),
    ("\x00", "control"), ("\x01", "control"), ("\t", "control"), ("\n", "control"), ("\r", "control"),
    ("\x1b", "control"), ("\x1f", "control"), ("\x7f", "control"), ("\x85", "control"), ("\x9f", "control"),
]


@pytest.mark.parametrize("char, kind", REFUSED_CHARACTERS, ids=ascii)
def test_invisibleAndControlCharactersAreRefusedAnywhere(tmp_path, char, kind):
    """
    A bidirectional control, another format character (invisible: joiners,
    soft hyphen, byte order mark, tags) or a control character anywhere in
    a login name fails the login, whichever parts the template uses, names
    the character, and creates nothing.
    """
    code = f"U\\+{ord(char):04X}"
    logins = [f"{char}bob@example.com", f"bo{char}b@example.com", f"bob{char}@example.com",
              f"bob@{char}example.com", f"bob@exam{char}ple.com", f"bob@example.com{char}", f"bo{char}b"]
    realms = [MaildirRealm(template=str(tmp_path / "vmail" / "%d" / "%n")), MaildirRealm(str(tmp_path / "mail")),
              MaildirRealm(template=str(tmp_path / "home" / "%n" / "Maildir"))]
    for login in logins:
        for realm in realms:
            for avatarId in (login, login.encode("utf-8")):
                with pytest.raises(UnsafeMailboxName, match=f"{kind}.* character \\({code}\\)"):
                    realm.requestAvatar(avatarId, None, IMaildrop)
            with pytest.raises(UnsafeMailboxName, match=code):
                realm.template.expand(login)
    assert os.listdir(tmp_path) == []


LOOK_ALIKES = ["k", "K", "\u212a", "\uff4b", "i", "I", "\u0131", "\u0130", "\u0307", "\u00fc", "\u00dc", "u\u0308",
               "s", "\u00df", "e", "\u0301", "\u00e9", "."]


def _uLabels(domain: str) -> list:
    """
    A domain's labels, A-labels decoded.
    """
    return [idna.ulabel(label) if label.startswith("xn--") else label for label in domain.split(".")]


@settings(max_examples=1000, deadline=None)
@given(
    local=st.lists(st.sampled_from(LOOK_ALIKES[:-1]), min_size=1, max_size=4).map("".join),
    domain=st.lists(st.sampled_from(LOOK_ALIKES + ["xn--", "tda", "bcher-kva", "\uff0e"]), min_size=1, max_size=5)
    .map("".join),
)
def test_onlyASCIICaseAndIDNAEncodingAreFolded(local, domain):
    """
    Whatever the login, the local part is kept as it is, and the domain is
    either refused or changed only by lower-casing A to Z and by turning
    U-labels into A-labels (decoded, it is the domain given, ASCII letters
    lower-cased): two logins share a Maildir only if they are two spellings
    of one login in those two ways.
    """
    template = MaildirTemplate("/var/vmail/%d/%n")
    try:
        path = template.expand(f"{local}@{domain}")
    except UnsafeMailboxName:
        return
    canonical = canonicalDomain(domain)
    assert path == f"/var/vmail/{canonical}/{local}"
    assert canonical.isascii() and canonical == canonical.lower()
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in domain)
    assert _uLabels(canonical) == _uLabels(lowered)
    assert not set(domain) & {"\u212a", "\uff4b", "\u0130", "\u00dc", "\uff0e"}


@pytest.mark.parametrize("workers", [1, 2])
def test_aKelvinSignDomainOverPOP3(launcher, tmp_path, workers):
    """
    End to end, in one process and with two workers: with --maildir
    vmail/%d/%n and a checker that knows both bob@key.com and
    bob@\u212aey.com (a Kelvin sign), the second logs in with its own right
    password and gets the same -ERR as a wrong password, never
    bob@key.com's maildrop; the log says why; nothing is created.
    """
    users = {"bob@key.com": "bobs password", "bob@\u212aey.com": "kelvins password"}
    vmail = tmp_path / "vmail"
    deliver(str(vmail / "key.com" / "bob"), b"Subject: for bob@key.com only\r\n\r\nsecret\r\n")
    before = sorted(str(path.relative_to(vmail)) for path in vmail.rglob("*"))
    passwords = writePasswordFile(tmp_path / "passwd", users)
    process = launcher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir", f"{vmail}/%d/%n", "--auth", f"file:{passwords}",
         "--workers", str(workers)], tmp_path,
    )
    port = process.waitListening()
    for index in range(workers if workers > 1 else 0):
        process.waitFor(rf"worker {index}\] worker ready", timeout=30)

    def refusal(user: str, password: str) -> str:
        client = poplib.POP3(HOST, port, timeout=SOCKET_TIMEOUT)
        try:
            client.user(user)
            with pytest.raises(poplib.error_proto) as caught:
                client.pass_(password)
            return caught.value.args[0]
        finally:
            client.close()

    kelvin = refusal("bob@\u212aey.com", "kelvins password")
    assert kelvin == refusal("bob@\u212aey.com", "wrong") == refusal("bob@key.com", "wrong")
    assert kelvin == b"-ERR [AUTH] invalid user name or password"
    process.waitFor(r"login failed for bob@\?\?\?ey\.com from 127\.0\.0\.1:\d+ with USER/PASS: .*U\+212A")
    assert sorted(str(path.relative_to(vmail)) for path in vmail.rglob("*")) == before
    client = poplib.POP3(HOST, port, timeout=SOCKET_TIMEOUT)
    try:
        client.user("bob@key.com")
        assert client.pass_("bobs password").startswith(b"+OK bob@key.com has 1 message")
    finally:
        client.quit()
