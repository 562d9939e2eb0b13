"""NET: egress, the host's services, unix sockets, netlink, other socket families."""

import fcntl
import os
import socket
import struct
import time

import pytest


def host_address():
    """One of the host's own non-loopback IPv4 addresses (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
            if not address.startswith("127."):
                return address
        except OSError:
            pass
        for _, name in socket.if_nameindex():
            request = struct.pack("16s16x", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe, 0x8915, request)  # SIOCGIFADDR
            except OSError:
                continue
            address = socket.inet_ntoa(answer[20:24])
            if not address.startswith("127."):
                return address
    return None


def test_egress_tcp_is_unreachable(sandbox):
    r = sandbox.attack("""
        results = {}
        for host, port in (("1.1.1.1", 53), ("8.8.8.8", 443), ("10.0.0.1", 80)):
            s = socket.socket()
            s.settimeout(3)
            results["%s:%d" % (host, port)] = attempt(s.connect, (host, port))
            s.close()
        s6 = socket.socket(socket.AF_INET6)
        s6.settimeout(3)
        results["[2606:4700:4700::1111]:53"] = attempt(s6.connect, ("2606:4700:4700::1111", 53))
        report(**results)
    """)
    assert r.rc == 0, r
    assert set(r.report.values()) == {"ENETUNREACH"}, r


def test_egress_udp_is_unreachable(sandbox):
    r = sandbox.attack("""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        report(v4=attempt(s.sendto, b"x", ("8.8.8.8", 53)),
               v6=attempt(s6.sendto, b"x", ("2001:4860:4860::8888", 53)))
    """)
    assert r.rc == 0, r
    assert r.report == {"v4": "ENETUNREACH", "v6": "ENETUNREACH"}, r


def test_dns_resolution_fails(sandbox):
    r = sandbox.attack("""
        try:
            answer = sorted({a[4][0] for a in socket.getaddrinfo("example.com", 443)})
        except socket.gaierror as e:
            answer = "gaierror %d" % e.errno
        report(answer=answer, resolv_conf=os.path.exists("/etc/resolv.conf"))
    """)
    assert r.rc == 0, r
    assert r.report["answer"] in ("gaierror %d" % socket.EAI_AGAIN, "gaierror %d" % socket.EAI_NONAME), r
    assert r.report["resolv_conf"] is False, r


def test_icmp_sockets_are_refused(sandbox):
    r = sandbox.attack("""
        report(raw=attempt(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
               raw6=attempt(socket.socket, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
               ping=attempt(socket.socket, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
    """)
    assert r.rc == 0, r
    # Raw sockets need CAP_NET_RAW; ping sockets are off (net.ipv4.ping_group_range).
    assert r.report == {"raw": "EPERM", "raw6": "EPERM", "ping": "EACCES"}, r


@pytest.mark.parametrize("where", ["loopback", "host_address"])
def test_host_tcp_service_is_unreachable(sandbox, where):
    address = "127.0.0.1" if where == "loopback" else host_address()
    if address is None:
        pytest.skip("the host has no non-loopback IPv4 address, so no such service can exist")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1" if where == "loopback" else "0.0.0.0", 0))
    listener.listen(16)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = sandbox.attack("""
            import sys
            s = socket.socket()
            s.settimeout(3)
            report(connect=attempt(s.connect, (sys.argv[1], int(sys.argv[2]))))
        """, args=[address, str(port)])
        assert r.rc == 0, r
        expected = "ECONNREFUSED" if where == "loopback" else "ENETUNREACH"
        assert r.report == {"connect": expected}, r
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_only_the_private_loopback_exists(posture):
    assert posture["interfaces"] == ["lo"], posture["interfaces"]


def test_host_abstract_unix_socket_is_unreachable(sandbox):
    name = "bkg-sec-abstract-%d" % os.getpid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(4)
    listener.setblocking(False)
    try:
        r = sandbox.attack("""
            import sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            report(stream=attempt(s.connect, "\\0" + sys.argv[1]),
                   dgram=attempt(d.sendto, b"x", "\\0" + sys.argv[1]))
        """, args=[name])
        assert r.rc == 0, r
        # Another network namespace (ECONNREFUSED) or Landlock's abstract-socket scope (EPERM).
        assert r.report["stream"] in ("ECONNREFUSED", "EPERM"), r
        assert r.report["dgram"] in ("ECONNREFUSED", "EPERM"), r
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_agent_socket_is_unreachable(sandbox, agent):
    r = sandbox.attack("""
        import sys
        path, state = sys.argv[1], sys.argv[2]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        defaults = {}
        for default in ("/run/bkg/agent.sock", "/var/lib/bkg", "/run"):
            defaults[default] = os.path.exists(default)
        report(exists=os.path.exists(path), connect=attempt(s.connect, path),
               state_dir=os.path.exists(state), defaults=defaults)
    """, args=[str(agent.socket), str(agent.state_dir)])
    assert r.rc == 0, r
    assert r.report == {"exists": False, "connect": "ENOENT", "state_dir": False,
                        "defaults": {"/run/bkg/agent.sock": False, "/var/lib/bkg": False, "/run": False}}, r


NETLINK = {"audit": 9, "netfilter": 12, "generic": 16, "kobject_uevent": 15, "sock_diag": 4}


@pytest.mark.parametrize("protocol", list(NETLINK))
def test_netlink_protocol_is_refused(sandbox, protocol):
    r = sandbox.attack("""
        import sys
        report(open=attempt(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, int(sys.argv[1])))
    """, args=[str(NETLINK[protocol])])
    assert r.rc == 0, r
    assert r.report == {"open": "EAFNOSUPPORT"}, r


def test_netlink_route_cannot_change_routes(sandbox):
    r = sandbox.attack("""
        import struct
        n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE opens...
        # ...but RTM_NEWROUTE (a blackhole route to 203.0.113.0/24) must be refused.
        rtm = struct.pack("BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 3, 0, 6, 0)
        rta = struct.pack("HH4s", 8, 1, socket.inet_aton("203.0.113.0"))
        header = struct.pack("IHHII", 16 + len(rtm) + len(rta), 24, 1 | 4 | 0x200 | 0x400, 1, 0)
        n.send(header + rtm + rta)
        reply = n.recv(4096)
        kind = struct.unpack("IHHII", reply[:16])[1]
        error = -struct.unpack("i", reply[16:20])[0]
        report(kind=kind, error=errno.errorcode.get(error, error))
    """)
    assert r.rc == 0, r
    assert r.report == {"kind": 2, "error": "EPERM"}, r  # NLMSG_ERROR carrying -EPERM


def test_interface_cannot_be_reconfigured(sandbox):
    r = sandbox.attack("""
        import fcntl, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        same = struct.pack("16sH14x", b"lo", flags)  # SIOCSIFFLAGS with unchanged flags
        mtu = struct.pack("16si12x", b"lo", 65536)    # SIOCSIFMTU with the current MTU
        report(flags=attempt(fcntl.ioctl, s, 0x8914, same), mtu=attempt(fcntl.ioctl, s, 0x8922, mtu))
    """)
    assert r.rc == 0, r
    assert r.report == {"flags": "EPERM", "mtu": "EPERM"}, r


FAMILIES = {"vsock": (40, socket.SOCK_STREAM), "packet": (17, socket.SOCK_RAW)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_socket_family_is_refused(sandbox, family):
    number, kind = FAMILIES[family]
    r = sandbox.attack("""
        import sys
        report(open=attempt(socket.socket, int(sys.argv[1]), int(sys.argv[2]), 0))
    """, args=[str(number), str(int(kind))])
    assert r.rc == 0, r
    assert r.report == {"open": "EAFNOSUPPORT"}, r


def test_privileged_port_bind_fails(sandbox):
    r = sandbox.attack("""
        s = socket.socket()
        report(bind=attempt(s.bind, ("127.0.0.1", 80)))
    """)
    assert r.rc == 0, r
    assert r.report == {"bind": "EACCES"}, r
