#!/usr/bin/python3
"""Fail-closed latency: time from `atrest kms disable-key` returning to the first read
that fails on an attached NBD export, and from `enable-key` returning to the first read
that succeeds again on the same connection.

    benches/disable-latency.py [--rounds 10] [--key-check-interval 1s] [--no-build]

A client reads 4 KiB blocks in a loop (1 ms apart) over one connection while the key is
disabled and enabled `--rounds` times; the medians are compared with issue #5's
targets (<= 1 s with polling, <= 100 ms with the keystore watch). Needs the python
module `nbd` (Debian python3-libnbd), which Debian installs for /usr/bin/python3.
See benches/README.md.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import nbd
except ImportError:
    sys.exit(
        f"disable-latency: the python module 'nbd' (Debian package python3-libnbd) is not "
        f"importable by {sys.executable}; run this script with /usr/bin/python3"
    )

KEY = "alias/bench"
EXPORT = "bench"
BLOCK = 4096
READ_GAP = 0.001
WAIT_LIMIT = 10.0


class Reader(threading.Thread):
    """Reads over one NBD connection until stopped, recording when the outcome of a read
    flips from success to failure and back."""

    def __init__(self, uri):
        super().__init__(daemon=True)
        self.handle = nbd.NBD()
        self.handle.connect_uri(uri)
        self.lock = threading.Lock()
        self.last_ok = None
        self.flips = []  # (monotonic time, ok) at each change of outcome
        self.fatal = None
        self.stop = threading.Event()

    def run(self):
        offset = 0
        while not self.stop.is_set():
            try:
                self.handle.pread(BLOCK, offset)
                ok = True
            except nbd.Error as e:
                if self.handle.aio_is_dead() or self.handle.aio_is_closed():
                    self.fatal = f"the connection died: {e}"
                    return
                ok = False
            now = time.monotonic()
            with self.lock:
                if ok != self.last_ok:
                    self.flips.append((now, ok))
                    self.last_ok = ok
            offset = (offset + BLOCK) % (1 << 20)
            time.sleep(READ_GAP)

    def wait_for(self, ok, since):
        """Returns the time of the first change of outcome to `ok` at or after `since`,
        or None after WAIT_LIMIT seconds."""
        deadline = time.monotonic() + WAIT_LIMIT
        while time.monotonic() < deadline:
            if self.fatal:
                sys.exit(f"disable-latency: {self.fatal}")
            with self.lock:
                for t, o in self.flips:
                    if o == ok and t >= since:
                        return t
            time.sleep(0.002)
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def atrest_cmd(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"disable-latency: atrest {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--key-check-interval", help="passed to atrest nbd serve (default: its own)")
    ap.add_argument("--atrest-bin", help="use this binary instead of target/release/atrest")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    repo = Path(__file__).resolve().parent.parent
    binary = args.atrest_bin or str(repo / "target/release/atrest")
    if not args.atrest_bin and not args.no_build:
        print("building atrest (cargo build --release --bin atrest)", file=sys.stderr)
        r = subprocess.run(["cargo", "build", "--release", "--bin", "atrest"], cwd=repo)
        if r.returncode != 0:
            sys.exit("disable-latency: cargo build --release failed")
    if not os.access(binary, os.X_OK):
        sys.exit(f"disable-latency: no atrest binary at {binary}")

    work = Path(tempfile.mkdtemp(prefix="disable-latency."))
    os.environ["ATREST_HOME"] = str(work / "home")
    server = None
    try:
        atrest_cmd(binary, "kms", "create-key", "--alias", KEY)
        vol = work / "bench.vol"
        atrest_cmd(binary, "volume", "create", str(vol), "--size", "64M", "--key-id", KEY)
        port = free_port()
        cmd = [binary, "nbd", "serve", "--listen", f"127.0.0.1:{port}", "--export", f"{EXPORT}={vol}"]
        if args.key_check_interval:
            cmd += ["--key-check-interval", args.key_check_interval]
        log = open(work / "server.log", "w")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        uri = f"nbd://127.0.0.1:{port}/{EXPORT}"
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                sys.exit(f"disable-latency: atrest nbd serve exited: {(work / 'server.log').read_text()[-500:]}")
            try:
                h = nbd.NBD()
                h.connect_uri(uri)
                h.pwrite(os.urandom(1 << 20), 0)
                h.flush()
                h.shutdown()
                break
            except nbd.Error:
                if time.monotonic() > deadline:
                    sys.exit(f"disable-latency: no NBD answer at {uri} within 30 s")
                time.sleep(0.2)

        reader = Reader(uri)
        reader.start()
        if reader.wait_for(True, 0.0) is None:
            sys.exit("disable-latency: reads do not succeed on a fresh export")

        to_fail, to_resume = [], []
        for i in range(1, args.rounds + 1):
            # The server may act before the CLI process has exited, so a change of
            # outcome counts from the command's start and is clamped to 0 below.
            started = time.monotonic()
            atrest_cmd(binary, "kms", "disable-key", "--key-id", KEY)
            returned = time.monotonic()
            failed_at = reader.wait_for(False, started)
            if failed_at is None:
                sys.exit(f"disable-latency: reads still succeed {WAIT_LIMIT:.0f} s after disable-key (round {i})")
            to_fail.append(max(0.0, failed_at - returned))
            started = time.monotonic()
            atrest_cmd(binary, "kms", "enable-key", "--key-id", KEY)
            returned = time.monotonic()
            ok_at = reader.wait_for(True, started)
            if ok_at is None:
                sys.exit(f"disable-latency: reads still fail {WAIT_LIMIT:.0f} s after enable-key (round {i})")
            to_resume.append(max(0.0, ok_at - returned))
            print(f"round {i}: first failed read {to_fail[-1] * 1000:7.1f} ms after disable-key, "
                  f"first good read {to_resume[-1] * 1000:7.1f} ms after enable-key", file=sys.stderr)
        reader.stop.set()
        reader.join()

        def ms(xs):
            return f"median {statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"

        print(f"\nFail-closed latency over one NBD connection, {args.rounds} rounds")
        print(f"  disable-key -> first failed read : {ms(to_fail)}")
        print(f"  enable-key  -> first good read   : {ms(to_resume)}")
        med = statistics.median(to_fail)
        print("targets (issue #5):")
        print(f"  <= 1000 ms (polling)        {'met' if med <= 1.0 else 'MISSED'}")
        print(f"  <=  100 ms (keystore watch) {'met' if med <= 0.1 else 'MISSED'}")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
