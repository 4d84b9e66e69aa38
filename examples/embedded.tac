# Embedding popsrv in your own Twisted application: run with
#     twistd -n -y examples/embedded.tac
# Your own realm and checker plug into a twisted.cred Portal; POP3Factory
# serves it on any endpoint.
import os

from twisted.application.service import Application
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from popsrv import ListeningService, MemoryRealm, POP3Factory

realm = MemoryRealm()
realm.maildrop("alice").add(b"Subject: hello\r\n\r\nServed from memory.\r\n")

checker = InMemoryUsernamePasswordDatabaseDontUse()
checker.addUser(b"alice", b"secret")

factory = POP3Factory(Portal(realm, [checker]), hostname="pop.example.com")
endpoint = serverFromString(reactor, os.environ.get("POP3_LISTEN", "tcp:1110:interface=127.0.0.1"))

application = Application("my mail service")
ListeningService(endpoint, factory).setServiceParent(application)
