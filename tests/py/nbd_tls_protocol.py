"""NBD STARTTLS at the byte level, against a running `atrest nbd serve`.

Usage: nbd_tls_protocol.py forced|optional HOST PORT CERTDIR

CERTDIR holds ca-cert.pem, client-cert.pem and client-key.pem (the gnutls layout
libnbd uses). libnbd hides the reply codes these checks are about, so this speaks the
handshake itself; it exits non-zero with a message on the first wrong answer.
"""

import socket
import ssl
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_TLS_REQD = (1 << 31) + 5


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=30)
    greeting = recv_exact(sock, 18)
    if greeting[:8] != b"NBDMAGIC":
        fail(f"bad greeting {greeting!r}")
    sock.sendall(struct.pack(">I", 1))  # fixed newstyle
    return sock


def send_option(sock, option, data=b""):
    sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def read_reply(sock, option):
    magic, got_option, kind, length = struct.unpack(">QIII", recv_exact(sock, 20))
    if magic != REPLY_MAGIC or got_option != option:
        fail(f"bad reply header for option {option}: {magic:#x} {got_option}")
    return kind, recv_exact(sock, length)


def final_reply(sock, option):
    """The reply types up to and including the last one (ACK or an error)."""
    kinds = []
    while True:
        kind, _ = read_reply(sock, option)
        kinds.append(kind)
        if kind not in (REP_SERVER, REP_INFO, 4):
            return kinds


def name_data(name, extra=b""):
    encoded = name.encode()
    return struct.pack(">I", len(encoded)) + encoded + extra


def go_data(name):
    return name_data(name, struct.pack(">H", 0))


def meta_data(name):
    query = b"base:allocation"
    return name_data(name, struct.pack(">II", 1, len(query)) + query)


def start_tls(sock, certdir, host):
    send_option(sock, OPT_STARTTLS)
    kind, _ = read_reply(sock, OPT_STARTTLS)
    if kind != REP_ACK:
        fail(f"STARTTLS answered {kind:#x}, not ACK")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(f"{certdir}/ca-cert.pem")
    context.load_cert_chain(f"{certdir}/client-cert.pem", f"{certdir}/client-key.pem")
    return context.wrap_socket(sock, server_hostname=host)


def expect(kinds, wanted, what):
    if kinds[-1] != wanted:
        fail(f"{what}: answered {[hex(k) for k in kinds]}, expected {wanted:#x}")


def forced(host, port, certdir):
    sock = connect(host, port)
    for option, data in [
        (OPT_LIST, b""),
        (OPT_STRUCTURED_REPLY, b""),
        (OPT_INFO, go_data("b")),
        (OPT_GO, go_data("b")),
        (OPT_LIST_META_CONTEXT, meta_data("b")),
        (OPT_SET_META_CONTEXT, meta_data("b")),
        (99, b"x"),
    ]:
        send_option(sock, option, data)
        kinds = final_reply(sock, option)
        if kinds != [REP_ERR_TLS_REQD]:
            fail(f"option {option} before STARTTLS: {[hex(k) for k in kinds]}")
    tls = start_tls(sock, certdir, host)
    send_option(tls, OPT_STARTTLS)
    expect(final_reply(tls, OPT_STARTTLS), REP_ERR_INVALID, "STARTTLS twice")
    send_option(tls, OPT_LIST)
    kinds = final_reply(tls, OPT_LIST)
    expect(kinds, REP_ACK, "LIST over TLS")
    if REP_SERVER not in kinds:
        fail("LIST over TLS showed no export")
    send_option(tls, OPT_ABORT)
    expect(final_reply(tls, OPT_ABORT), REP_ACK, "ABORT over TLS")
    tls.close()

    # EXPORT_NAME cannot be answered with an error: the server hangs up.
    sock = connect(host, port)
    send_option(sock, OPT_EXPORT_NAME, b"b")
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        data = b""
    if data:
        fail("EXPORT_NAME before STARTTLS got an answer instead of a closed connection")
    sock.close()

    # Garbage instead of a ClientHello ends that connection only.
    sock = connect(host, port)
    send_option(sock, OPT_STARTTLS)
    kind, _ = read_reply(sock, OPT_STARTTLS)
    if kind != REP_ACK:
        fail(f"STARTTLS answered {kind:#x}")
    sock.sendall(b"\x00" * 7 + b"this is not a TLS ClientHello" * 10)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    sock.close()


def optional(host, port, certdir):
    sock = connect(host, port)
    # Plaintext is allowed: structured replies are negotiated before TLS ...
    send_option(sock, OPT_STRUCTURED_REPLY)
    expect(final_reply(sock, OPT_STRUCTURED_REPLY), REP_ACK, "plaintext STRUCTURED_REPLY")
    tls = start_tls(sock, certdir, host)
    # ... and forgotten by it: metadata contexts now need structured replies again.
    send_option(tls, OPT_SET_META_CONTEXT, meta_data("b"))
    expect(
        final_reply(tls, OPT_SET_META_CONTEXT),
        REP_ERR_INVALID,
        "SET_META_CONTEXT after STARTTLS without a new STRUCTURED_REPLY",
    )
    send_option(tls, OPT_STRUCTURED_REPLY)
    expect(final_reply(tls, OPT_STRUCTURED_REPLY), REP_ACK, "STRUCTURED_REPLY over TLS")
    send_option(tls, OPT_SET_META_CONTEXT, meta_data("b"))
    expect(final_reply(tls, OPT_SET_META_CONTEXT), REP_ACK, "SET_META_CONTEXT over TLS")
    send_option(tls, OPT_ABORT)
    expect(final_reply(tls, OPT_ABORT), REP_ACK, "ABORT over TLS")
    tls.close()


def main():
    mode, host, port, certdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    {"forced": forced, "optional": optional}[mode](host, port, certdir)
    print("ok")


if __name__ == "__main__":
    main()
