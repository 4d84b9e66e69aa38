"""
Tests for L{popsrv.auth.sasl}: every mechanism against a real twisted.cred
checker, SCRAM against scramp's client, every malformed message a client can
send, and a fuzz of every step of every mechanism.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from popsrv.auth import credentials
from popsrv.auth.sasl import MECHANISMS, Challenge, CramMD5Credentials, SASLError, ScramCredentials, mechanism
from popsrv.auth.schemes import deriveScramKeys
from tests.support.scram import HandScramClient

SESSION_CHALLENGE = b"<4711.1700000000@pop.example>"
RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC2195_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"
SCRAMS = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
NAMES = [each.name for each in MECHANISMS]


def makeChecker(users=None):
    """
    Return an in-memory checker holding C{users} (bytes name to bytes
    secret), by default alice with secret "secret".
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, secret in (users or {b"alice": b"secret"}).items():
        checker.addUser(name, secret)
    return checker


def avatarId(credentials, checker=None):
    """
    Ask a checker (by default L{makeChecker}'s) for the avatar ID of
    C{credentials}; return it, or raise the checker's failure.
    """
    results = []
    (checker or makeChecker()).requestAvatarId(credentials).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def scramConversation(name: str, user: str, password: str, initialResponse: bool = True, **clientArgs):
    """
    Run a SCRAM exchange with scramp's client up to the credentials; return
    the client, the exchange and the credentials.
    """
    client = scramp.ScramClient([name], user, password, **clientArgs)
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    if not initialResponse:
        assert exchange.step(None) == Challenge(b"")
    serverFirst = exchange.step(client.get_client_first().encode("utf-8"))
    assert isinstance(serverFirst, Challenge)
    client.set_server_first(serverFirst.data.decode("ascii"))
    credentials = exchange.step(client.get_client_final().encode("utf-8"))
    return client, exchange, credentials


def plainClient(exchange, user: bytes, password: bytes):
    """
    A PLAIN client that sends an initial response.
    """
    return exchange.step(b"\0" + user + b"\0" + password)


def loginClient(exchange, user: bytes, password: bytes):
    """
    A LOGIN client that waits for both prompts.
    """
    assert exchange.step(None) == Challenge(b"Username:")
    assert exchange.step(user) == Challenge(b"Password:")
    return exchange.step(password)


def cramMD5Client(exchange, user: bytes, password: bytes):
    """
    A CRAM-MD5 client: HMAC-MD5 of the server's challenge.
    """
    challenge = exchange.step(None)
    assert challenge == Challenge(SESSION_CHALLENGE)
    digest = hmac.new(password, challenge.data, hashlib.md5).hexdigest().encode("ascii")
    return exchange.step(user + b" " + digest)


def scramClient(name: str):
    """
    Return a client function for the SCRAM mechanism C{name}, driven by
    scramp's client.
    """

    def converse(exchange, user: bytes, password: bytes):
        client = scramp.ScramClient([name], user.decode("utf-8"), password.decode("utf-8"))
        serverFirst = exchange.step(client.get_client_first().encode("utf-8"))
        client.set_server_first(serverFirst.data.decode("ascii"))
        return exchange.step(client.get_client_final().encode("utf-8"))

    return converse


CLIENTS = {
    "SCRAM-SHA-256": scramClient("SCRAM-SHA-256"),
    "SCRAM-SHA-1": scramClient("SCRAM-SHA-1"),
    "CRAM-MD5": cramMD5Client,
    "PLAIN": plainClient,
    "LOGIN": loginClient,
}


# The mechanism table


def test_mechanismsStrongestFirst():
    """
    MECHANISMS lists the five mechanisms, strongest first.
    """
    assert NAMES == ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert set(CLIENTS) == set(NAMES)


@pytest.mark.parametrize(
    "name, plaintext, interface",
    [
        ("SCRAM-SHA-256", False, IUsernameHashedPassword),
        ("SCRAM-SHA-1", False, IUsernameHashedPassword),
        ("CRAM-MD5", False, IUsernameHashedPassword),
        ("PLAIN", True, IUsernamePassword),
        ("LOGIN", True, IUsernamePassword),
    ],
)
def test_mechanismAttributes(name, plaintext, interface):
    """
    Each mechanism says whether it sends the password and which credentials
    interface its exchanges produce.
    """
    found = mechanism(name)
    assert found.name == name
    assert found.plaintext is plaintext
    assert found.credentialInterface is interface


@pytest.mark.parametrize("name", ["plain", "Cram-Md5", "scram-sha-256", "Scram-Sha-1", b"login", "LOGIN"])
def test_lookupIsCaseInsensitive(name):
    """
    mechanism() finds a mechanism whatever the case of its name.
    """
    found = mechanism(name)
    assert found is not None
    assert found in MECHANISMS
    assert found.name == (name.decode() if isinstance(name, bytes) else name).upper()


@pytest.mark.parametrize("name", ["NTLM", "", "PLAIN ", "SCRAM-SHA-256-PLUS", "DIGEST-MD5", "pla\u0131n", "\xffPLAIN"])
def test_lookupUnknown(name):
    """
    mechanism() returns None for a name it does not offer, including names
    that only Unicode case mapping would turn into one (a dotless i).
    """
    assert mechanism(name) is None


# Every mechanism against a real checker


@pytest.mark.parametrize("name", NAMES)
def test_loginWithEachMechanism(name):
    """
    Each mechanism's credentials log alice in through an in-memory checker
    and provide the mechanism's credentials interface.
    """
    credentials = CLIENTS[name](mechanism(name).exchange(SESSION_CHALLENGE), b"alice", b"secret")
    assert mechanism(name).credentialInterface.providedBy(credentials)
    assert credentials.username == b"alice"
    assert avatarId(credentials) == b"alice"


@pytest.mark.parametrize("name", NAMES)
def test_wrongPasswordFails(name):
    """
    Each mechanism's credentials for a wrong password fail with
    UnauthorizedLogin.
    """
    credentials = CLIENTS[name](mechanism(name).exchange(SESSION_CHALLENGE), b"alice", b"wrong")
    with pytest.raises(UnauthorizedLogin):
        avatarId(credentials)


@pytest.mark.parametrize("name", ["CRAM-MD5", "PLAIN", "LOGIN"])
def test_noSuccessDataOutsideSCRAM(name):
    """
    Only SCRAM has data to send with success.
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    avatarId(CLIENTS[name](exchange, b"alice", b"secret"))
    assert exchange.successData() is None


@pytest.mark.parametrize("name", NAMES)
def test_stepAfterCompletionFails(name):
    """
    Once an exchange produced credentials, another step is an error.
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    CLIENTS[name](exchange, b"alice", b"secret")
    with pytest.raises(SASLError):
        exchange.step(b"")


@pytest.mark.parametrize("name", NAMES)
def test_missingResponseFails(name):
    """
    Only the first step may lack a response (AUTH without an initial
    response).
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    assert isinstance(exchange.step(None), Challenge)
    with pytest.raises(SASLError):
        exchange.step(None)


@pytest.mark.parametrize("name", NAMES)
def test_exchangesAreIndependent(name):
    """
    A mechanism is shared by all sessions: two interleaved exchanges do not
    disturb each other.
    """
    checker = makeChecker({b"alice": b"secret", b"bob": b"hunter2"})
    alice = CLIENTS[name](mechanism(name).exchange(SESSION_CHALLENGE), b"alice", b"secret")
    bob = CLIENTS[name](mechanism(name).exchange(SESSION_CHALLENGE), b"bob", b"hunter2")
    assert avatarId(bob, checker) == b"bob"
    assert avatarId(alice, checker) == b"alice"


def test_verifyCredentialsClasses():
    """
    The credentials classes of this module provide IUsernameHashedPassword.
    """
    verifyObject(IUsernameHashedPassword, CramMD5Credentials(RFC2195_CHALLENGE, b"tim", b"0" * 32))
    _, _, credentials = scramConversation("SCRAM-SHA-256", "alice", "secret")
    assert isinstance(credentials, ScramCredentials)
    verifyObject(IUsernameHashedPassword, credentials)


# SCRAM


@pytest.mark.parametrize("name", SCRAMS)
def test_scramServerFinalIsAcceptedByTheClient(name):
    """
    After the checker accepts SCRAM credentials, successData() is the
    server-final message, and scramp's client accepts its proof.
    """
    client, exchange, credentials = scramConversation(name, "alice", "secret")
    assert exchange.successData() is None
    assert avatarId(credentials) == b"alice"
    serverFinal = exchange.successData()
    assert serverFinal.startswith(b"v=")
    client.set_server_final(serverFinal.decode("ascii"))


@pytest.mark.parametrize("name", SCRAMS)
def test_scramWithoutInitialResponse(name):
    """
    AUTH SCRAM-* without an initial response gets an empty challenge, then
    the exchange runs as usual.
    """
    client, exchange, credentials = scramConversation(name, "alice", "secret", initialResponse=False)
    assert avatarId(credentials) == b"alice"
    client.set_server_final(exchange.successData().decode("ascii"))


@pytest.mark.parametrize("name", SCRAMS)
def test_scramWrongPassword(name):
    """
    SCRAM credentials made with a wrong password fail, and there is no
    server-final message.
    """
    _, exchange, credentials = scramConversation(name, "alice", "wrong")
    with pytest.raises(UnauthorizedLogin):
        avatarId(credentials)
    assert exchange.successData() is None


@pytest.mark.parametrize("name", SCRAMS)
def test_scramServerFirst(name):
    """
    The server-first message extends the client's nonce and carries a
    16-octet salt and scramp's iteration count (4096); every exchange gets
    its own salt and nonce.
    """
    firsts = []
    for _ in range(2):
        exchange = mechanism(name).exchange(SESSION_CHALLENGE)
        challenge = exchange.step(b"n,,n=alice,r=clientnonce")
        assert exchange.successData() is None
        attributes = dict(part.split("=", 1) for part in challenge.data.decode("ascii").split(","))
        assert set(attributes) == {"r", "s", "i"}
        assert attributes["r"].startswith("clientnonce")
        assert len(attributes["r"]) > len("clientnonce") + 16
        assert len(base64.b64decode(attributes["s"])) == 16
        assert attributes["i"] == "4096"
        firsts.append(attributes)
    assert firsts[0]["r"] != firsts[1]["r"]
    assert firsts[0]["s"] != firsts[1]["s"]


@pytest.mark.parametrize("name", SCRAMS)
def test_scramEscapedUsername(name):
    """
    A user name with ',' and '=' travels escaped (=2C, =3D) and comes out
    unescaped in the credentials.
    """
    client = scramp.ScramClient([name], "a,b=c", "secret")
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    clientFirst = client.get_client_first().encode("utf-8")
    assert b",n=a=2Cb=3Dc," in clientFirst
    client.set_server_first(exchange.step(clientFirst).data.decode("ascii"))
    credentials = exchange.step(client.get_client_final().encode("utf-8"))
    assert credentials.username == b"a,b=c"
    assert avatarId(credentials, makeChecker({b"a,b=c": b"secret"})) == b"a,b=c"
    client.set_server_final(exchange.successData().decode("ascii"))


@pytest.mark.parametrize("name", SCRAMS)
def test_scramUTF8(name):
    """
    A non-ASCII user name and password work; the user name is UTF-8 bytes.
    """
    user, password = "j\u00fcrgen", "p\u00e4ssw\u00f6rd\u2603"
    client, exchange, credentials = scramConversation(name, user, password)
    assert credentials.username == user.encode("utf-8")
    checker = makeChecker({user.encode("utf-8"): password.encode("utf-8")})
    assert avatarId(credentials, checker) == user.encode("utf-8")
    client.set_server_final(exchange.successData().decode("ascii"))


def test_scramCheckPasswordTakesStrOrBytes():
    """
    ScramCredentials.checkPassword accepts the secret as str or UTF-8
    bytes, and refuses bytes that are not UTF-8.
    """
    _, _, credentials = scramConversation("SCRAM-SHA-256", "alice", "s\u00e9cret")
    assert credentials.checkPassword("s\u00e9cret")
    assert credentials.checkPassword("s\u00e9cret".encode("utf-8"))
    assert not credentials.checkPassword(b"s\xe9cret")
    assert not credentials.checkPassword("secret")


def test_scramYFlagAccepted():
    """
    The gs2 flag 'y' (the client could bind, but believes the server
    cannot) is fine, since no -PLUS mechanism is offered.
    """
    client, exchange, credentials = scramConversation(
        "SCRAM-SHA-256", "alice", "secret", channel_binding=("tls-unique", b"some binding data")
    )
    assert client.gs2_header.gs2_char == "y"
    assert avatarId(credentials) == b"alice"
    client.set_server_final(exchange.successData().decode("ascii"))


@pytest.mark.parametrize(
    "clientFirst",
    [
        b"p=tls-server-end-point,,n=alice,r=nonce",
        b"p=tls-unique,,n=alice,r=nonce",
        b"n,a=bob,n=alice,r=nonce",
        b"n,a=,n=alice,r=nonce",
        b"n,a=al=ZZice,n=alice,r=nonce",
        b"n,x=alice,n=alice,r=nonce",
        b"",
        b"n,,",
        b"n,,n=alice",
        b"n,,r=nonce,n=alice",
        b"n,,n=,r=nonce",
        b"n,,n=al=ice,r=nonce",
        b"n,,m=ext,n=alice,r=nonce",
        b"n,,n=alice,r=non ce",
        b"x,,n=alice,r=nonce",
        b"n,,n=al\xffice,r=nonce",
        b"n,,n=al\0ice,r=nonce",
        b"garbage",
    ],
)
def test_scramBadClientFirst(clientFirst):
    """
    A client-first message that asks for channel binding, names an
    authorization identity other than the login name, or does not parse
    raises SASLError.
    """
    exchange = mechanism("SCRAM-SHA-256").exchange(SESSION_CHALLENGE)
    with pytest.raises(SASLError):
        exchange.step(clientFirst)


def startedScram(name="SCRAM-SHA-256"):
    """
    Return an exchange after a client-first of C{r=cnonce}, and the combined
    nonce of its server-first.
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    challenge = exchange.step(b"n,,n=alice,r=cnonce")
    nonce = challenge.data.split(b",")[0][2:]
    return exchange, nonce


@pytest.mark.parametrize(
    "clientFinal",
    [
        b"",
        b"garbage",
        b"c=biws,r=cnonceWRONG,p=AAAA",
        b"c=eSws,r={nonce},p=AAAA",
        b"c=cD10bHMtdW5pcXVlLCw=,r={nonce},p=AAAA",
        b"c=b!ws,r={nonce},p=AAAA",
        b"c=biws,r={nonce},p=A!AA",
        b"c=biws,r={nonce}",
        b"r={nonce},c=biws,p=AAAA",
        b"c=biws,r={nonce},p=AAAA,x=1",
        b"c=biws,r={nonce},p=\xff",
    ],
)
def test_scramBadClientFinal(clientFinal):
    """
    A client-final message that does not parse, binds another gs2 header or
    answers another nonce raises SASLError.
    """
    exchange, nonce = startedScram()
    with pytest.raises(SASLError):
        exchange.step(clientFinal.replace(b"{nonce}", nonce))


def test_scramWrongProofFailsAtTheChecker():
    """
    A well-formed client-final whose proof is wrong (even of the wrong
    length) yields credentials that no secret verifies.
    """
    for proof in [b"AAAA", base64.b64encode(bytes(32))]:
        exchange, nonce = startedScram()
        credentials = exchange.step(b"c=biws,r=" + nonce + b",p=" + proof)
        assert credentials.username == b"alice"
        with pytest.raises(UnauthorizedLogin):
            avatarId(credentials)
        assert exchange.successData() is None


def test_scramReplayMustMatchTheServerFirst():
    """
    ScramCredentials verify nothing unless replaying the exchange reproduces
    the server-first message the client answered.
    """
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "secret")
    clientFirst = client.get_client_first()
    serverFirst = mechanism("SCRAM-SHA-256").exchange(SESSION_CHALLENGE).step(clientFirst.encode()).data.decode()
    client.set_server_first(serverFirst)
    clientFinal = client.get_client_final()
    attributes = dict(part.split("=", 1) for part in serverFirst.split(","))
    salt = base64.b64decode(attributes["s"])
    serverNonce = attributes["r"][len(str(client.c_nonce)) :]

    def credentials(sentServerFirst):
        return ScramCredentials(
            "SCRAM-SHA-256", b"alice", clientFirst, sentServerFirst, clientFinal, salt, 4096, serverNonce
        )

    assert credentials(serverFirst).checkPassword("secret")
    assert not credentials(serverFirst + ",x=1").checkPassword("secret")


def test_scramCredentialsNeedTheSameMechanism():
    """
    A SCRAM-SHA-1 client's messages do not verify as SCRAM-SHA-256.
    """
    client = scramp.ScramClient(["SCRAM-SHA-1"], "alice", "secret")
    exchange = mechanism("SCRAM-SHA-256").exchange(SESSION_CHALLENGE)
    client.set_server_first(exchange.step(client.get_client_first().encode()).data.decode())
    credentials = exchange.step(client.get_client_final().encode())
    with pytest.raises(UnauthorizedLogin):
        avatarId(credentials)


# PLAIN


def test_plainWithInitialResponse():
    """
    PLAIN with an initial response completes in one step.
    """
    credentials = mechanism("PLAIN").exchange(SESSION_CHALLENGE).step(b"\0alice\0secret")
    assert isinstance(credentials, UsernamePassword)
    assert (credentials.username, credentials.password) == (b"alice", b"secret")


def test_plainWithoutInitialResponse():
    """
    PLAIN without an initial response asks with an empty challenge.
    """
    exchange = mechanism("PLAIN").exchange(SESSION_CHALLENGE)
    assert exchange.step(None) == Challenge(b"")
    credentials = exchange.step(b"\0alice\0secret")
    assert avatarId(credentials) == b"alice"


def test_plainAuthzidEqualToAuthcid():
    """
    An authorization identity equal to the login name is accepted.
    """
    credentials = mechanism("PLAIN").exchange(SESSION_CHALLENGE).step(b"alice\0alice\0secret")
    assert avatarId(credentials) == b"alice"


def test_plainAuthzidDifferent():
    """
    Proxy authorization (an authzid other than the authcid) is refused.
    """
    with pytest.raises(SASLError):
        mechanism("PLAIN").exchange(SESSION_CHALLENGE).step(b"bob\0alice\0secret")


def test_plainPasswordMayHoldSpacesAndUTF8():
    """
    A PLAIN password is any non-empty UTF-8 string without NUL.
    """
    password = " p\u00e4ss word ".encode("utf-8")
    credentials = mechanism("PLAIN").exchange(SESSION_CHALLENGE).step(b"\0alice\0" + password)
    assert credentials.password == password


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"alice\0secret",
        b"\0alice\0secret\0",
        b"\0alice\0sec\0ret",
        b"\0alice\0",
        b"\0\0secret",
        b"\0\0",
        b"\0al\xffice\0secret",
        b"\0alice\0s\xffcret",
        b"\xff\0alice\0secret",
    ],
)
def test_plainMalformed(message):
    """
    A PLAIN message without exactly two NULs, with an empty login name or
    password, or that is not UTF-8 raises SASLError.
    """
    exchange = mechanism("PLAIN").exchange(SESSION_CHALLENGE)
    with pytest.raises(SASLError):
        exchange.step(message)


# LOGIN


def test_loginWithoutInitialResponse():
    """
    LOGIN prompts for the user name, then for the password.
    """
    credentials = loginClient(mechanism("LOGIN").exchange(SESSION_CHALLENGE), b"alice", b"secret")
    assert isinstance(credentials, UsernamePassword)
    assert (credentials.username, credentials.password) == (b"alice", b"secret")


def test_loginWithInitialResponse():
    """
    LOGIN's initial response is the user name (curl --sasl-ir): only the
    password prompt follows.
    """
    exchange = mechanism("LOGIN").exchange(SESSION_CHALLENGE)
    assert exchange.step(b"alice") == Challenge(b"Password:")
    assert avatarId(exchange.step(b"secret")) == b"alice"


@pytest.mark.parametrize(
    "user, password",
    [
        (b"", b"secret"),
        (b"alice", b""),
        (b"al\0ice", b"secret"),
        (b"alice", b"sec\0ret"),
        (b"\xff", b"secret"),
        (b"alice", b"\xff"),
    ],
)
def test_loginMalformed(user, password):
    """
    An empty user name or password, a NUL, or bytes that are not UTF-8
    raise SASLError.
    """
    with pytest.raises(SASLError):
        loginClient(mechanism("LOGIN").exchange(SESSION_CHALLENGE), user, password)


# CRAM-MD5


def test_cramMD5RFC2195Example():
    """
    The example of RFC 2195, section 2: the session challenge is sent, and
    tim's digest verifies against his secret.
    """
    exchange = mechanism("CRAM-MD5").exchange(RFC2195_CHALLENGE)
    assert exchange.step(None) == Challenge(RFC2195_CHALLENGE)
    credentials = exchange.step(RFC2195_RESPONSE)
    assert isinstance(credentials, CramMD5Credentials)
    assert credentials.username == b"tim"
    assert credentials.checkPassword(b"tanstaaftanstaaf")
    assert credentials.checkPassword("tanstaaftanstaaf")
    assert not credentials.checkPassword(b"tanstaaftanstaag")
    assert avatarId(credentials, makeChecker({b"tim": b"tanstaaftanstaaf"})) == b"tim"


def test_cramMD5UppercaseDigest():
    """
    Uppercase hex digits are accepted, and the user name is split off at the
    last space (the digest does not cover the name).
    """
    exchange = mechanism("CRAM-MD5").exchange(RFC2195_CHALLENGE)
    exchange.step(None)
    digest = RFC2195_RESPONSE.split(b" ")[1]
    credentials = exchange.step(b"t im " + digest.upper())
    assert (credentials.username, credentials.digest) == (b"t im", digest)
    assert credentials.checkPassword(b"tanstaaftanstaaf")


def test_cramMD5ComparesInConstantTime(monkeypatch):
    """
    The digest is compared with hmac.compare_digest.
    """
    calls = []

    def compareDigest(a, b):
        calls.append((a, b))
        return False

    monkeypatch.setattr(credentials.hmac, "compare_digest", compareDigest)
    assert not CramMD5Credentials(RFC2195_CHALLENGE, b"tim", b"b913a602c7eda7a495b4e6e7334d3890").checkPassword(
        b"tanstaaftanstaaf"
    )
    assert calls == [(b"b913a602c7eda7a495b4e6e7334d3890", b"b913a602c7eda7a495b4e6e7334d3890")]


@pytest.mark.parametrize("initial", [RFC2195_RESPONSE, b""])
def test_cramMD5RefusesInitialResponse(initial):
    """
    The server speaks first in CRAM-MD5, so an initial response (even an
    empty one) raises SASLError.
    """
    with pytest.raises(SASLError):
        mechanism("CRAM-MD5").exchange(RFC2195_CHALLENGE).step(initial)


@pytest.mark.parametrize(
    "response",
    [
        b"",
        b"tim",
        b"tim b913a602",
        b"timb913a602c7eda7a495b4e6e7334d3890",
        b" b913a602c7eda7a495b4e6e7334d3890",
        b"tim b913a602c7eda7a495b4e6e7334d3890 ",
        b"tim g913a602c7eda7a495b4e6e7334d3890",
        b"tim b913a602c7eda7a495b4e6e7334d38900",
        b"t\xffm b913a602c7eda7a495b4e6e7334d3890",
        b"t\0m b913a602c7eda7a495b4e6e7334d3890",
    ],
)
def test_cramMD5Malformed(response):
    """
    A response that is not a non-empty UTF-8 user name, a space and 32 hex
    digits raises SASLError.
    """
    exchange = mechanism("CRAM-MD5").exchange(RFC2195_CHALLENGE)
    exchange.step(None)
    with pytest.raises(SASLError):
        exchange.step(response)


# Fuzz


def runSteps(exchange, responses):
    """
    Feed responses to an exchange until it completes or refuses; any
    exception but SASLError escapes.  Return the last result, or None if the
    exchange refused.
    """
    result = None
    for response in responses:
        try:
            result = exchange.step(response)
        except SASLError:
            return None
        if not isinstance(result, Challenge):
            break
        assert isinstance(result.data, bytes)
    return result


@settings(deadline=None)
@given(
    name=st.sampled_from(NAMES),
    first=st.none() | st.binary(max_size=200),
    rest=st.lists(st.binary(max_size=200), max_size=4),
    secret=st.binary(max_size=20) | st.text(max_size=20),
)
def test_fuzzEveryStep(name, first, rest, secret):
    """
    Arbitrary bytes at every step of every mechanism either advance the
    exchange or raise SASLError; credentials that come out answer
    checkPassword with a bool.
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    result = runSteps(exchange, [first, *rest])
    if result is not None and not isinstance(result, Challenge):
        assert mechanism(name).credentialInterface.providedBy(result)
        assert isinstance(result.checkPassword(secret), bool)
        assert exchange.successData() is None or isinstance(exchange.successData(), bytes)


SCRAM_PIECES = st.sampled_from(
    [
        "n",
        "y",
        "p",
        "=",
        ",",
        "a",
        "c",
        "r",
        "s",
        "i",
        "v",
        "e",
        "biws",
        "eSws",
        "AAAA",
        "=2C",
        "=3D",
        "\0",
        "\xff",
        "alice",
    ]
)


@settings(deadline=None)
@given(
    name=st.sampled_from(SCRAMS),
    firstPieces=st.lists(SCRAM_PIECES, max_size=12),
    finalPieces=st.lists(SCRAM_PIECES | st.just("{nonce}"), max_size=12),
    useRealFirst=st.booleans(),
)
def test_fuzzSCRAMNearMisses(name, firstPieces, finalPieces, useRealFirst):
    """
    SCRAM messages built from SCRAM's own syntax (so they get deep into the
    parser) either advance the exchange or raise SASLError.
    """
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    first = "n,,n=alice,r=cnonce" if useRealFirst else "".join(firstPieces)
    try:
        challenge = exchange.step(first.encode("utf-8"))
    except SASLError:
        return
    nonce = challenge.data.split(b",")[0][2:].decode("ascii")
    final = "".join(finalPieces).replace("{nonce}", nonce)
    try:
        credentials = exchange.step(final.encode("utf-8"))
    except SASLError:
        return
    assert credentials.checkPassword("secret") is False


def handConversation(name, client, binding=""):
    exchange = mechanism(name).exchange(SESSION_CHALLENGE)
    serverFirst = exchange.step(client.first())
    return exchange, exchange.step(client.final(serverFirst.data, binding))


@pytest.mark.parametrize("name", SCRAMS)
@pytest.mark.parametrize("authzid, flag", [("", "n"), ("alice", "n"), ("alice", "y")])
def test_scramAuthzidEqualToTheUser(name, authzid, flag):
    """
    An authorization identity equal to the user (n,a=alice,n=alice) logs
    in, against a plaintext secret and against stored keys, and the server's
    final message proves the server; without one the same client logs in
    through scramp's own check.
    """
    exchange, credentials = handConversation(name, HandScramClient(name, "alice", "secret", authzid, flag))
    assert avatarId(credentials) == b"alice"
    client = HandScramClient(name, "alice", "secret", authzid, flag)
    exchange, credentials = handConversation(name, client)
    keys = deriveScramKeys(name, b"secret", credentials.salt, credentials.iterations)
    assert credentials.checkKeys(keys.storedKey, keys.serverKey)
    assert client.serverSignatureIs(credentials.serverFinal)
    wrong = HandScramClient(name, "alice", "wrong", authzid, flag)
    _, credentials = handConversation(name, wrong)
    with pytest.raises(UnauthorizedLogin):
        avatarId(credentials)


def test_scramAuthzidEscapesAndMismatches():
    """
    Escaped names compare unescaped; another identity, or a channel binding
    that is not the header as sent, is refused.
    """
    name = "SCRAM-SHA-256"
    _, credentials = handConversation(name, HandScramClient(name, "al=ice,x", "pw", "al=ice,x"))
    assert avatarId(credentials, makeChecker({b"al=ice,x": b"pw"})) == b"al=ice,x"
    with pytest.raises(SASLError, match="is not the login name"):
        handConversation(name, HandScramClient(name, "alice", "secret", "bob"))
    with pytest.raises(SASLError, match="channel binding"):
        handConversation(name, HandScramClient(name, "alice", "secret", "alice"), binding="biws")
