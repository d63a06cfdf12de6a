"""Runs one SIPVicious tool from Debian's package (svmap, svwar, svcrack) from one source
address, under a User-Agent of the caller's choice (changing it is the first thing a real
attacker does once scanner names are filtered; `friendly-scanner` keeps the packaged one).

    sipvicious_as.py TOOL USER_AGENT SOURCE_IP [the tool's own arguments...]

The source address is forced on every socket the tool binds: svwar 0.3.3 takes `-b` but
never passes it on, and binds the wildcard address.
"""
import importlib
import socket
import sys

sys.path.insert(0, "/usr/share/sipvicious")
from sipvicious.libs import svhelper  # noqa: E402

tool, agent, source = sys.argv[1], sys.argv[2], sys.argv[3]
defaults = list(svhelper.makeRequest.__defaults__)
defaults[defaults.index("friendly-scanner")] = agent
svhelper.makeRequest.__defaults__ = tuple(defaults)

_bind = socket.socket.bind


def bind(sock, address):
    if address and address[0] in ("", "0.0.0.0"):
        address = (source,) + tuple(address[1:])
    return _bind(sock, address)


socket.socket.bind = bind
module = importlib.import_module("sipvicious." + tool)
sys.argv = [tool] + sys.argv[4:]
sys.exit(module.main())
