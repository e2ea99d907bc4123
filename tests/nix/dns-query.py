"""One DNS A query per name to 127.0.0.1:PORT over UDP, retried while nothing answers.

    python3 tests/nix/dns-query.py PORT NAME...

Prints, per name, "RCODE:ADDRESS,ADDRESS" (addresses sorted), space-separated; exits 1
when a name gets no answer within 5 s. No dig on Debian without dnsutils, hence this.
"""

import socket
import struct
import sys
import time


def query(port, name):
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    deadline = time.time() + 5
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(packet, ("127.0.0.1", port))
                data = s.recv(4096)
                break
            except OSError:
                if time.time() > deadline:
                    return None
                time.sleep(0.1)
    rcode, count = data[3] & 15, struct.unpack(">H", data[6:8])[0]
    pos, addresses = 12 + len(qname) + 4, []
    for _ in range(count):
        # The answer's name: a compression pointer (2 bytes) or the name again.
        pos += 2 if data[pos] & 0xC0 == 0xC0 else len(qname)
        rtype, _, _, length = struct.unpack(">HHIH", data[pos : pos + 10])
        if rtype == 1:
            addresses.append(socket.inet_ntoa(data[pos + 10 : pos + 14]))
        pos += 10 + length
    return "%d:%s" % (rcode, ",".join(sorted(addresses)))


def main():
    port = int(sys.argv[1])
    answers = [query(port, name) for name in sys.argv[2:]]
    if None in answers:
        print("no answer from 127.0.0.1:%d" % port)
        sys.exit(1)
    print(" ".join(answers))


main()
