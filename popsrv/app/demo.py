"""
The first-run experience behind C{twistd -n popsrv --demo}: a demo user with a
random password and a Maildir holding a few real messages, kept in
C{./popsrv-demo/} and reused on the next run.
"""

from __future__ import annotations

import os
import secrets

import attr

from popsrv.store.maildir import deliver, hasMessages

__all__ = ["DEMO_USER", "DemoSetup", "MESSAGES", "QPOPPER_1997", "prepareDemo"]

DEMO_USER = "demo"

WELCOME = b"""\
From: popsrv <postmaster@localhost>
To: demo@localhost
Subject: Welcome to popsrv
Date: Sat, 21 Nov 2026 12:00:00 +0000
Message-ID: <welcome@popsrv.demo>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Hello!

This message was fetched over POP3 from a Maildir served by popsrv.
Try LIST, UIDL, TOP 1 0, RETR 2 or DELE 3 with any POP3 client; messages
you delete disappear only when the client says QUIT.

The lines below start with a dot, which POP3 doubles on the wire:
.a line that starts with a dot
..and one that starts with two
"""

# The message RETRieved in the qpopper session of 1997 in the seed article on
# POP3 (000): the article's HTML lost the <...> parts of three header lines,
# restored here so that the message is the 1100 octets that session listed.
QPOPPER_1997 = b"""\
Received: from mail1.relcom.ru (mail1.relcom.ru [193.125.152.4]) by
quest.net.kiae.su (8.7.5/8.7.3) with ESMTP id CAA09628 for
<paul@kiae.su>; Wed, 2
Jul 1997 02:51:43 +0400 (MSD)
Received: from thevni (uucp@localhost) by mail1.relcom.ru
(8.7.5.R.ML.S/Relcom-2A) with UUCP
id BAA03544 for paul;Wed, 2 Jul 1997 01:34:45 +0400 (MSD)
Received: by Relay1.relcom.ru (UUMAIL/2.0); Wed, 2 Jul 97 01:34:44 +0300
Received: by theor.vniinm.msk.su (UUPC/@ v5.06gamma, 07Feb93);
Wed, 2 Jul 1997 01:24:57 +0400
To: paul@kiae.su
References: <33B92C6B.9FA2C1A4@kiae.su>
Message-Id: <AAsQAcmWXgQ497@theor.vniinm.msk.su.relcom.uucp.kiae>
Organization: A.A. Bochvar Institute for Inorganic Materials, Theoret
From: "Alexander Z. Solontsov" <solontsov@theor.vniinm.msk.su>
Date: Wed, 2 Jul 97 01:24:56 +0400
X-Mailer: BML [MS/DOS Beauty Mail v.1.36]
Subject: life
Lines: 9
X-UIDL: 2313051b98ef908dceefe8b801d9e60d
Status: RO

To: N.M.Sergeeva

Dear H.M.,

I am still alive, publishing a lot, and this year applied to RAN.
Would be pleased to hear from you in a more derect way.
Alexander

"""

EIGHT_BIT = """\
From: =?utf-8?q?Jos=C3=A9?= <jose@example.org>
To: demo@localhost
Subject: =?utf-8?q?8-bit_body?=
Date: Sat, 21 Nov 2026 12:05:00 +0000
Message-ID: <8bit@popsrv.demo>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Привет. Это тестовое письмо.
这是一封测试邮件。
""".encode()

MESSAGES = (WELCOME, QPOPPER_1997, EIGHT_BIT)


@attr.s(frozen=True, auto_attribs=True)
class DemoSetup:
    """
    Where the demo lives and how to log in to it.
    """

    directory: str
    maildirRoot: str
    user: str
    password: str


def prepareDemo(directory: str) -> DemoSetup:
    """
    Create (or reuse) the demo directory: a password file with the demo
    user's random password, and the demo Maildir, refilled with the demo
    messages whenever it is empty.
    """
    directory = os.path.abspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    passwordFile = os.path.join(directory, "password")
    try:
        with open(passwordFile, encoding="ascii") as f:
            password = f.read().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(12)
        fd = os.open(passwordFile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(password + "\n")
    maildirRoot = os.path.join(directory, "mail")
    maildir = os.path.join(maildirRoot, DEMO_USER)
    if not hasMessages(maildir):
        for message in MESSAGES:
            deliver(maildir, message)
    return DemoSetup(directory, maildirRoot, DEMO_USER, password)
