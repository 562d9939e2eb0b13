"""EGR: a sandbox given hosts (`bkg exe --net`) reaches only them, through the agent's proxy.

One agent of its own, whose policy (`--egress-allow`) opens every public name and the host's
loopback on one port only (ALLOWED, a listener of this module). DENIED is another listener on the
host's loopback that nothing may reach: each row checks it accepted nothing. Every destination
outside this machine is a documentation address (192.0.2.0/24) or a name under .invalid, and
every attempt is refused before a packet leaves the machine.
"""

import os
import socket
import threading

import pytest

import bkgsec
from conftest import Sandbox


class Listener:
    """A TCP listener on the host's loopback that counts connections and answers HTTP 200."""

    def __init__(self, body):
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self.requests = []
        body = body.encode()
        self.answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            with connection:
                connection.settimeout(5)
                try:
                    self.requests.append(connection.recv(65536))
                    connection.sendall(self.answer)
                except OSError:
                    pass

    def close(self):
        self.socket.close()


@pytest.fixture(scope="module")
def listeners():
    allowed, denied = Listener("allowed-service"), Listener("must-not-be-reached")
    yield allowed, denied
    allowed.close()
    denied.close()


@pytest.fixture(scope="module")
def egress_sandbox(listeners):
    if os.environ.get("BKG_SEC_DRYRUN_HOST") == "1":
        pytest.skip("BKG_SEC_DRYRUN_HOST=1: no agent is started in the dry-run demonstration")
    allowed, _ = listeners
    instance = bkgsec.Agent("egress", warm_pool=1,
                            extra_args=["--egress-allow", "*,host.bkg.internal:%d" % allowed.port])
    try:
        instance.start()
        yield Sandbox(instance)
    finally:
        instance.remove()


def net(listeners, *extra):
    allowed, _ = listeners
    return ("--net", ",".join(("host.bkg.internal:%d" % allowed.port,) + extra))


def denials(outcome):
    return {(d["transport"], d["destination"]) for d in outcome.result.get("network_denials", [])}


FETCH = """
import http.client, sys, urllib.request, urllib.error
def fetch(url):
    # As a client that honours HTTP_PROXY does it.
    try:
        return urllib.request.urlopen(url, timeout=20).read().decode()
    except urllib.error.HTTPError as error:
        return "HTTP %d" % error.code
def via_proxy(url):
    # Straight to the proxy, for the addresses NO_PROXY would keep a client from sending it.
    connection = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
    connection.request("GET", url)
    answer = connection.getresponse()
    return answer.read().decode() if answer.status == 200 else "HTTP %d" % answer.status
"""


def test_the_allowed_host_answers(egress_sandbox, listeners):
    """EGR-01 (control): host.bkg.internal:ALLOWED reaches the host's loopback service."""
    allowed, _ = listeners
    r = egress_sandbox.attack(FETCH + """
report(body=fetch("http://host.bkg.internal:%s/" % sys.argv[1]))
""", *net(listeners), args=[str(allowed.port)])
    assert r.rc == 0, r
    assert r.report == {"body": "allowed-service"}, r
    assert denials(r) == set(), r


def test_a_host_not_on_the_list_is_refused_and_reported(egress_sandbox, listeners):
    """EGR-02: by name through the proxy (HTTP and CONNECT), to a host the run did not name."""
    r = egress_sandbox.attack(FETCH + """
import http.client
tunnel = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
tunnel.set_tunnel("elsewhere.invalid", 443)
try:
    tunnel.connect()
    connect = "OK"
except OSError as error:
    connect = str(error)[:40]
report(http=fetch("http://not-listed.invalid/"), connect=connect)
""", *net(listeners))
    assert r.rc == 0, r
    assert r.report["http"] == "HTTP 403", r
    assert "403" in r.report["connect"], r
    assert {("proxy", "not-listed.invalid:80"), ("proxy", "elsewhere.invalid:443")} <= denials(r), r


def assert_the_denied_port_is_refused(egress_sandbox, listeners, *flags):
    """A run given `flags` asks for host.bkg.internal:DENIED: 403, a denial, and DENIED accepts
    nothing."""
    _, denied = listeners
    before = denied.accepted
    r = egress_sandbox.attack(FETCH + """
report(body=fetch("http://host.bkg.internal:%s/" % sys.argv[1]))
""", *flags, args=[str(denied.port)])
    assert r.rc == 0, r
    assert r.report == {"body": "HTTP 403"}, r
    assert ("proxy", "host.bkg.internal:%d" % denied.port) in denials(r), r
    assert denied.accepted == before


def test_another_port_of_the_host_is_refused(egress_sandbox, listeners):
    """EGR-03: host.bkg.internal on a port the run did not name; DENIED accepts nothing."""
    assert_the_denied_port_is_refused(egress_sandbox, listeners, *net(listeners))


def test_a_domain_wildcard_does_not_name_the_host(egress_sandbox, listeners):
    """EGR-10: `*.internal` and `*.bkg.internal` (which the agent's `*` lets a run ask for) do
    not reach host.bkg.internal, on a port the run did not name (found by a new-user trial: they
    reached every port of the host's loopback); DENIED accepts nothing."""
    assert_the_denied_port_is_refused(egress_sandbox, listeners, "--net", "*.internal,*.bkg.internal")


def test_direct_addresses_are_refused_and_reported(egress_sandbox, listeners):
    """EGR-04: TCP to addresses past the proxy: a public one, metadata, the host's gateway side."""
    r = egress_sandbox.attack("""
results = {}
for host, port in (("192.0.2.10", 443), ("169.254.169.254", 80), ("10.253.0.1", 22)):
    s = socket.socket()
    s.settimeout(20)
    results["%s:%d" % (host, port)] = attempt(s.connect, (host, port))
    s.close()
report(**results)
""", *net(listeners))
    assert r.rc == 0, r
    assert set(r.report.values()) == {"ECONNREFUSED"}, r
    assert {("tcp", "192.0.2.10:443"), ("tcp", "169.254.169.254:80"), ("tcp", "10.253.0.1:22")} <= denials(r), r


def test_addresses_through_the_proxy_are_refused(egress_sandbox, listeners):
    """EGR-05: the proxy asked for an address (metadata, the host's loopback) instead of a name."""
    _, denied = listeners
    before = denied.accepted
    r = egress_sandbox.attack(FETCH + """
report(metadata=fetch("http://169.254.169.254/latest/meta-data/"),
       loopback=via_proxy("http://127.0.0.1:%s/" % sys.argv[1]))
""", *net(listeners), args=[str(denied.port)])
    assert r.rc == 0, r
    assert r.report == {"metadata": "HTTP 403", "loopback": "HTTP 403"}, r
    assert {("proxy", "169.254.169.254:80"), ("proxy", "127.0.0.1:%d" % denied.port)} <= denials(r), r
    assert denied.accepted == before


def test_a_name_resolving_to_an_internal_address_is_refused(egress_sandbox, listeners):
    """EGR-06: `--net 2130706433:PORT` is a name within `*` that the host's resolver turns into
    127.0.0.1 without DNS; `localhost` itself is refused before the run (bkg_schema::egress)."""
    _, denied = listeners
    before = denied.accepted
    disguised = "2130706433:%d" % denied.port
    r = egress_sandbox.attack(FETCH + """
report(body=via_proxy("http://%s/" % sys.argv[1]))
""", *net(listeners, disguised), args=[disguised])
    assert r.rc == 0, r
    assert r.report == {"body": "HTTP 403"}, r
    assert ("proxy", disguised) in denials(r), r
    refused = egress_sandbox.agent.exe("print(1)", *net(listeners, "localhost:%d" % denied.port))
    assert refused.rc == 125 and "localhost in a sandbox is the sandbox's own loopback" in refused.err, refused.describe()
    assert denied.accepted == before


def test_udp_and_dns_are_refused_and_reported(egress_sandbox, listeners):
    """EGR-07: UDP datagrams (a DNS query to a public resolver) never leave."""
    r = egress_sandbox.attack("""
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(20)
u.connect(("192.0.2.53", 53))
u.send(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01")
report(answer=attempt(u.recv, 512))
""", *net(listeners))
    assert r.rc == 0, r
    assert r.report == {"answer": "ECONNREFUSED"}, r
    assert ("udp", "192.0.2.53:53") in denials(r), r


def test_a_second_request_on_a_proxied_connection_stays_with_its_host(egress_sandbox, listeners):
    """EGR-08: pipelining a request for DENIED behind one for ALLOWED on one proxy connection."""
    allowed, denied = listeners
    before = denied.accepted
    r = egress_sandbox.attack("""
import sys
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
first = "GET http://host.bkg.internal:%s/ HTTP/1.1\\r\\nHost: host.bkg.internal\\r\\n\\r\\n" % sys.argv[1]
second = "GET http://host.bkg.internal:%s/ HTTP/1.1\\r\\nHost: host.bkg.internal\\r\\n\\r\\n" % sys.argv[2]
s.sendall((first + second).encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
report(answers=data.decode().count("HTTP/1.1 200"), body=("allowed-service" in data.decode()))
""", *net(listeners), args=[str(allowed.port), str(denied.port)])
    assert r.rc == 0, r
    assert r.report["body"] is True, r
    assert denied.accepted == before, "the second request reached DENIED"


def test_the_agents_policy_caps_what_a_run_may_name(egress_sandbox, listeners):
    """EGR-09: a run naming a host port or an address the policy does not name never runs."""
    _, denied = listeners
    for rule in ("host.bkg.internal:%d" % denied.port, "host.bkg.internal", "10.0.0.1:443", "169.254.169.254"):
        r = egress_sandbox.attack("report(ran=True)", "--net", rule)
        assert r.rc == 125, r
        assert "outside this agent's egress policy" in r.text("stderr"), r
        assert "BKG-REPORT" not in r.out, r
