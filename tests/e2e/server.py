# The e2e suite's test server, one per pod (and one on the external host): answers every TCP
# connection on 8080 and 8081 and every UDP datagram on 5353 with "<name> <client-ip>", the
# client address as this host sees it (a v4-mapped "::ffff:" prefix stripped), from the address
# the client sent to.
#
# Invariants: raw sockets only (no http.server, no name lookups); dual-stack sockets bound to
# "::" with IPV6_V6ONLY off, so IPv4 and IPv6 are both served; prints "ready" once every socket
# is bound; exits when its stdin closes, so a test process that dies leaves no server behind.
import os
import socket
import sys
import threading

NAME = sys.argv[1]
TCP_PORTS = (8080, 8081)
UDP_PORTS = (5353,)


def peer(addr):
    ip = addr[0]
    return ip[len("::ffff:"):] if ip.startswith("::ffff:") else ip


def bound(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s


def serve_tcp(s):
    s.listen(1024)
    while True:
        c, addr = s.accept()
        try:
            c.sendall(("%s %s" % (NAME, peer(addr))).encode())
        except OSError:
            pass
        c.close()


def serve_udp(s):
    # Reply from the address the query was sent to (IPV6_PKTINFO, IPv4-mapped for IPv4): ext
    # owns whole address ranges, and a reply from another address never reaches the client.
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    while True:
        _, ancillary, _, addr = s.recvmsg(512, socket.CMSG_SPACE(20))
        info = [(l, t, d) for l, t, d in ancillary
                if l == socket.IPPROTO_IPV6 and t == socket.IPV6_PKTINFO]
        try:
            s.sendmsg([("%s %s" % (NAME, peer(addr))).encode()], info, 0, addr)
        except OSError:
            pass


sockets = [(serve_tcp, bound(socket.SOCK_STREAM, p)) for p in TCP_PORTS]
sockets += [(serve_udp, bound(socket.SOCK_DGRAM, p)) for p in UDP_PORTS]
for serve, s in sockets:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
os._exit(0)
