#!/usr/bin/env python3
"""Reproduces the attacks of issue 15 against a confab binary and measures them.

    python3 bench/abuse/repro.py --binary target/release/confab [--only NAME]

The script starts the binary itself (embedded mode, SQLite in a temporary data
dir, guest login on) on a free loopback port, once per scenario, runs the
attack, and prints a table: the server's resident memory (VmRSS from
/proc/PID/status, sampled every 100 ms) idle, at its peak and after the client
went, latencies, and what the client was told (close codes, HTTP statuses,
error codes). Python 3 standard library only; every byte goes to 127.0.0.1.
WebSocket frames are written by hand (masked, as RFC 6455 requires of
clients), since several attacks need headers no library would send.

Old binaries: the temporary config only holds keys the binary under test
knows (read from `BINARY check-config` of an empty file); a key it does not
know is left out and named in the scenario's notes.
"""

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HOST = "127.0.0.1"
SCENARIOS = [
    "baseline",
    "frame-bomb",
    "history-pipeline",
    "room-flood",
    "presence-storm",
    "slow-bodies",
    "login-burst",
]
# Not OSError: from Python 3.11 on, asyncio.TimeoutError is TimeoutError, an OSError.
NET_ERRORS = (ConnectionError, asyncio.IncompleteReadError, EOFError)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def ms(v):
    return "-" if v is None else f"{v * 1000:.1f}"


# ------------------------------------------------------------------ /proc


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_secs(pid):
    """User + system CPU time of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler:
    """Samples the server's RSS (and optionally its fd count) every `interval` s."""

    def __init__(self, pid, interval=0.1, cap_kib=None, fds=False):
        self.pid, self.interval, self.cap_kib, self.fds = pid, interval, cap_kib, fds
        self.peak_kib = 0
        self.peak_fds = 0
        self.samples = 0
        self.over_cap = asyncio.Event()
        self.task = None
        self.cpu0 = None

    def start(self):
        self.cpu0, self.t0 = cpu_secs(self.pid), time.monotonic()
        self.task = asyncio.ensure_future(self._run())
        return self

    def cpu(self):
        """Server CPU seconds since start() and the wall time, as text."""
        c = cpu_secs(self.pid)
        if c is None or self.cpu0 is None:
            return "server CPU ?"
        return f"server CPU {c - self.cpu0:.1f} s in {time.monotonic() - self.t0:.1f} s"

    async def _run(self):
        while True:
            r = rss_kib(self.pid)
            if r is not None:
                self.samples += 1
                self.peak_kib = max(self.peak_kib, r)
                if self.cap_kib and r > self.cap_kib:
                    self.over_cap.set()
            if self.fds:
                n = fd_count(self.pid)
                if n is not None:
                    self.peak_fds = max(self.peak_fds, n)
            await asyncio.sleep(self.interval)

    async def stop(self):
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


# ------------------------------------------------------------------ config


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def known_keys(binary, workdir):
    """Every `section.key` the binary's `check-config` prints for an empty file
    (its effective config), or None when that does not work."""
    empty = os.path.join(workdir, "empty.toml")
    open(empty, "w").close()
    try:
        out = subprocess.run(
            [binary, "check-config", empty],
            cwd=workdir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    keys, section = set(), ""
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]").strip()
        elif "=" in line and not line.startswith("#"):
            keys.add(f"{section}.{line.split('=', 1)[0].strip()}")
    return keys


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFAB")}
    env.pop("RUST_LOG", None)
    return env


def write_config(path, settings):
    sections = collections.OrderedDict()
    for dotted, value in settings.items():
        section, key = dotted.rsplit(".", 1)
        sections.setdefault(section, []).append((key, value))
    with open(path, "w") as f:
        for section, items in sections.items():
            f.write(f"[{section}]\n")
            for key, value in items:
                f.write(f"{key} = {toml_value(value)}\n")
            f.write("\n")


def check_config(binary, path, workdir):
    try:
        out = subprocess.run(
            [binary, "check-config", path],
            cwd=workdir,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return out.returncode == 0, (out.stderr or out.stdout).strip()


def die_with_parent():
    """The server gets SIGKILL if this script dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ server


class Server:
    """One confab process on a free loopback port with a temporary data dir."""

    def __init__(self, ctx, name, extra):
        self.ctx, self.name, self.extra = ctx, name, extra
        self.dir = tempfile.mkdtemp(prefix=f"confab-abuse-{name}-", dir=ctx.tmp)
        self.port = free_port()
        self.secret = uuid.uuid4().hex
        self.skipped = []  # keys the binary does not know
        self.proc = None
        self.log_path = os.path.join(self.dir, "server.log")

    @property
    def pid(self):
        return self.proc.pid

    def rss(self):
        return rss_kib(self.pid)

    def settings(self):
        base = {
            "server.bind": f"{HOST}:{self.port}",
            "server.shutdown_grace_secs": 1,
            "auth.guest": True,
            "auth.jwt_secret": self.secret,
            "storage.data_dir": os.path.join(self.dir, "data"),
            "log.level": "warn",
        }
        wanted = dict(base)
        self.skipped = []
        known = self.ctx.keys
        for key, value in self.extra.items():
            if known is not None and key not in known:
                self.skipped.append(key)
            else:
                wanted[key] = value
        return base, wanted

    async def start(self, tries=2):
        for attempt in range(tries):
            try:
                return await self._start()
            except RuntimeError as e:
                if "exited at start" not in str(e) or attempt == tries - 1:
                    raise
                log(f"[{self.name}] {e}; trying again on another port")
                self.ctx.current.notes.append(f"first start failed ({e})")
                self.port = free_port()

    async def _start(self):
        base, wanted = self.settings()
        cfg = os.path.join(self.dir, "config.toml")
        write_config(cfg, wanted)
        ok, why = check_config(self.ctx.binary, cfg, self.dir)
        if not ok:
            # Some key the binary refuses: fall back to the minimal config.
            log(f"[{self.name}] config refused ({why}); using the minimal config")
            self.skipped = sorted(set(self.skipped) | (set(wanted) - set(base)))
            write_config(cfg, base)
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.ctx.binary, "serve", "--config", cfg],
            cwd=self.dir,
            env=child_env(),
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start (status {self.proc.returncode}): {self.log_tail()}")
            panic = self.panic_line()
            if panic:
                raise RuntimeError(f"server panicked answering GET /healthz (connection closed, no answer): {panic}")
            with contextlib.suppress(*NET_ERRORS, asyncio.TimeoutError):
                r = await http(self.port, "GET", "/healthz", timeout=1)
                if r.status == 200:
                    return self
            await asyncio.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz within 30 s: {self.log_tail()}")

    def panic_line(self):
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            for i, line in enumerate(lines):
                if "panicked at" in line:
                    text = " ".join(lines[i:i + 2]).strip()
                    text = re.sub(r"^thread .*? panicked at ", "panic at ", text)
                    return re.sub(r"/\S*/registry/src/[^/]+/", "", text)
        return None

    def log_tail(self, n=5):
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-n:])
        return ""

    async def stop(self):
        if self.proc:
            exited = self.proc.poll()
            if exited is not None:
                self.ctx.current.data["exited"] = exited
            panic = self.panic_line()
            if panic:
                self.ctx.current.data["panic"] = panic
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for _ in range(150):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self.logf.close()
        if not self.ctx.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def idle_rss(self, settle=1.5):
        await asyncio.sleep(settle)
        return self.rss()

    def mint(self, name):
        """A token signed with the server's secret (HS256), like `confab token`."""
        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": f"guest:{uuid.uuid4()}", "name": name, "exp": int(time.time()) + 3600}
        body = b64(json.dumps(claims).encode())
        sig = b64(hmac.new(self.secret.encode(), head + b"." + body, hashlib.sha256).digest())
        return (head + b"." + body + b"." + sig).decode()

    async def login(self, name):
        """A guest token from POST /api/login; minted locally if that is refused
        (the after binary limits logins per IP)."""
        with contextlib.suppress(*NET_ERRORS, asyncio.TimeoutError, ValueError):
            r = await http(self.port, "POST", "/api/login", json.dumps({"name": name}).encode())
            if r.status == 200:
                return json.loads(r.body)["token"]
        return self.mint(name)


# ------------------------------------------------------------------ HTTP


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status, self.headers, self.body, self.elapsed = status, headers, body, elapsed


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.read()
    return status, headers, body


async def http(port, method, path, body=None, headers=None, timeout=10):
    """One request on its own connection (Connection: close)."""
    t0 = time.monotonic()

    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            h = {"Host": f"{HOST}:{port}", "Connection": "close"}
            if body is not None:
                h["Content-Type"] = "application/json"
                h["Content-Length"] = str(len(body))
            h.update(headers or {})
            req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            writer.write(req.encode() + b"\r\n" + (body or b""))
            await writer.drain()
            status, hdrs, data = await read_response(reader)
            return Response(status, hdrs, data, time.monotonic() - t0)
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


# ------------------------------------------------------------------ WebSocket


def mask_bytes(payload, key):
    if not payload:
        return b""
    n = len(payload)
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")


def frame_header(opcode, length, key, fin=True):
    h = bytearray([(0x80 if fin else 0) | opcode])
    if length < 126:
        h.append(0x80 | length)
    elif length <= 0xFFFF:
        h.append(0x80 | 126)
        h += length.to_bytes(2, "big")
    else:
        h.append(0x80 | 127)
        h += length.to_bytes(8, "big")
    return bytes(h) + key


def frame(opcode, payload, fin=True):
    key = os.urandom(4)
    return frame_header(opcode, len(payload), key, fin) + mask_bytes(payload, key)


def text_frame(obj):
    data = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
    return frame(1, data.encode() if isinstance(data, str) else data)


class WsRefused(Exception):
    pass


class WS:
    """A client WebSocket spoken by hand."""

    def __init__(self, reader, writer, rest):
        self.reader, self.writer, self.buf = reader, writer, bytearray(rest)
        self.close_code = None
        self.closed_at = None
        self.eof = False

    @classmethod
    async def connect(cls, port, path, timeout=10):
        async def go():
            reader, writer = await asyncio.open_connection(HOST, port)
            key = base64.b64encode(os.urandom(16)).decode()
            req = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            writer.write(req.encode())
            await writer.drain()
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await reader.read(65536)
                if not chunk:
                    writer.close()
                    raise WsRefused("closed during the upgrade")
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                writer.close()
                raise WsRefused(head.split(b"\r\n")[0].decode(errors="replace") + " " + rest[:200].decode(errors="replace"))
            return cls(reader, writer, rest)

        return await asyncio.wait_for(go(), timeout)

    def send(self, obj):
        self.writer.write(text_frame(obj))

    async def flush(self, timeout=None):
        await asyncio.wait_for(self.writer.drain(), timeout)

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        opcode, masked, n = b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F
        at = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = int.from_bytes(b[2:10], "big"), 10
        key = None
        if masked:
            if len(b) < at + 4:
                return None
            key, at = bytes(b[at:at + 4]), at + 4
        if len(b) < at + n:
            return None
        payload = bytes(b[at:at + n])
        del b[:at + n]
        if key:
            payload = mask_bytes(payload, key)
        return opcode, payload

    async def recv(self, timeout=None):
        """The next data frame (opcode, payload); None at a close frame or EOF.
        Pings are answered; a close frame's code is kept in close_code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            f = self._parse()
            if f:
                opcode, payload = f
                if opcode == 9:
                    with contextlib.suppress(*NET_ERRORS):
                        self.writer.write(frame(10, payload))
                    continue
                if opcode == 10:
                    continue
                if opcode == 8:
                    self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    self.closed_at = time.monotonic()
                    return None
                return opcode, payload
            if self.eof:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise asyncio.TimeoutError()
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 16), left)
            except NET_ERRORS:
                chunk = b""
            if not chunk:
                self.eof = True
                if self.closed_at is None:
                    self.closed_at = time.monotonic()
                continue
            self.buf += chunk

    async def recv_json(self, timeout=None):
        f = await self.recv(timeout)
        if f is None:
            return None
        with contextlib.suppress(ValueError):
            return json.loads(f[1])
        return {"type": "?"}

    async def wait_for(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            v = await self.recv_json(max(0.001, deadline - time.monotonic()))
            if v is None:
                return None
            if pred(v):
                return v

    def abort(self):
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def closed_how(ws):
    if ws.close_code is not None:
        return f"close {ws.close_code}"
    if ws.eof:
        return "TCP closed, no close frame"
    return "still open"


# ------------------------------------------------------------------ results


class Result:
    def __init__(self, name):
        self.name = name
        self.idle = None
        self.peak = None
        self.after = None
        self.outcome = ""
        self.latency = ""
        self.notes = []
        self.data = {}

    def row(self):
        return [self.name, mib(self.idle), mib(self.peak), mib(self.after), self.outcome, self.latency or "-", "; ".join(self.notes)]


def print_table(results, out=sys.stdout):
    head = ["scenario", "idle RSS MiB", "peak RSS MiB", "RSS after MiB", "outcome", "latency", "notes"]
    print("| " + " | ".join(head) + " |", file=out)
    print("|" + "---|" * len(head), file=out)
    for r in results:
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in r.row()) + " |", file=out)


class Ctx:
    def __init__(self, args):
        self.binary = os.path.abspath(args.binary)
        self.cap_kib = args.rss_cap_mb * 1024
        self.keep = args.keep
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="confab-abuse-")
        self.keys = known_keys(self.binary, self.tmp)
        self.current = Result("-")

    def server(self, name, extra=None):
        return Server(self, name, extra or {})


async def settle_after(srv, idle, seconds, res, margin_kib=16 * 1024, early_exit=False):
    """Samples RSS for up to `seconds` after the client left; records the last
    value and when it first came within `margin_kib` of the idle RSS."""
    t0 = time.monotonic()
    back = None
    last = srv.rss()
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.25)
        last = srv.rss()
        if back is None and idle is not None and last is not None and last <= idle + margin_kib:
            back = time.monotonic() - t0
        if early_exit and back is not None and time.monotonic() - t0 > 3:
            break
    res.after = last
    res.data["after_secs"] = round(time.monotonic() - t0, 1)
    res.data["back_to_idle_secs"] = None if back is None else round(back, 2)
    return back


def note_skipped(srv, res):
    if srv.skipped:
        res.notes.append("config keys unknown to this binary, left out: " + ", ".join(srv.skipped))


# ------------------------------------------------------------------ scenarios


async def sc_baseline(ctx, res):
    srv = await ctx.server("baseline").start()
    try:
        res.idle = await srv.idle_rss(2.0)
        lat = []
        for _ in range(20):
            r = await http(srv.port, "GET", "/healthz")
            lat.append(r.elapsed)
        res.peak = res.after = srv.rss()
        res.outcome = "idle server"
        res.latency = f"/healthz p50 {ms(pct(lat, 50))} ms"
        res.data.update(fds=fd_count(srv.pid))
        res.notes.append(f"{fd_count(srv.pid)} fds open")
    finally:
        await srv.stop()


async def sc_frame_bomb(ctx, res, seconds=6.0):
    """A text frame declaring 2^62 bytes, then as much payload as the socket takes."""
    srv = await ctx.server("frame-bomb").start()
    try:
        res.idle = await srv.idle_rss()
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib).start()
        ws = await WS.connect(srv.port, "/ws/chat/general")
        key = os.urandom(4)
        chunk = mask_bytes(b"a" * 65536, key)  # 65536 % 4 == 0: the mask stays aligned
        t0 = time.monotonic()
        sent = 0
        why_stopped = f"streamed for {seconds:.0f} s"
        reader = asyncio.ensure_future(ws.recv())  # the first frame the server sends is its close
        try:
            ws.writer.write(frame_header(1, 1 << 62, key))
            while time.monotonic() - t0 < seconds:
                if reader.done():
                    why_stopped = "server ended the connection"
                    break
                # Checked here too (every MiB), not only by the 100 ms sampler:
                # loopback moves GiBs in 100 ms.
                if sampler.over_cap.is_set() or (sent % (1 << 20) == 0 and (srv.rss() or 0) > ctx.cap_kib):
                    why_stopped = f"client stopped: server RSS over the {ctx.args.rss_cap_mb} MiB cap"
                    break
                ws.writer.write(chunk)
                try:
                    await ws.flush(timeout=max(0.01, seconds - (time.monotonic() - t0)))
                except asyncio.TimeoutError:
                    why_stopped = "server stopped reading (TCP window full)"
                    break
                sent += len(chunk)
        except NET_ERRORS as e:
            why_stopped = f"write failed: {type(e).__name__}"
        stopped_at = time.monotonic() - t0
        # Give a close frame a moment to arrive.
        with contextlib.suppress(asyncio.TimeoutError, *NET_ERRORS):
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
        if not reader.done():
            reader.cancel()
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        await sampler.stop()
        at = None if ws.closed_at is None else ws.closed_at - t0
        ws.abort()
        res.outcome = closed_how(ws) + (" when the client gave up" if at is None else f" after {at:.2f} s")
        res.notes.append(f"payload written {sent / 1048576:.1f} MiB; {why_stopped} at {stopped_at:.2f} s")
        res.data.update(sent_bytes=sent, close_code=ws.close_code, close_after_s=at)
        await settle_after(srv, res.idle, 3.0, res)
        note_skipped(srv, res)
    finally:
        await srv.stop()


async def seed_room(srv, room, n, size=1900):
    """`n` messages of about `size` characters in `room` (one writer, pipelined)."""
    ws = await WS.connect(srv.port, "/ws?token=" + await srv.login("writer"))
    await ws.wait_for(lambda v: v.get("type") == "welcome")
    ws.send({"type": "join", "room": room, "history": 0})
    await ws.wait_for(lambda v: v.get("type") == "joined")
    for i in range(n):
        ws.send({"type": "send", "room": room, "content": f"{i} " + "y" * size, "ref": f"seed-{i}"})
    await ws.flush(30)
    acks, errors = 0, collections.Counter()
    deadline = time.monotonic() + 60
    while acks + sum(errors.values()) < n and time.monotonic() < deadline:
        v = await ws.recv_json(max(0.01, deadline - time.monotonic()))
        if v is None:
            break
        if v.get("type") == "ack":
            acks += 1
        elif v.get("type") == "error":
            errors[v.get("code")] += 1
    ws.abort()
    return acks, errors


async def sc_history_pipeline(ctx, res):
    """Thousands of history requests written at once, nothing read."""
    n_req = ctx.args.history_requests
    srv = await ctx.server(
        "history-pipeline",
        {
            "limits.messages_per_sec": 10000,
            "limits.message_burst": 10000,
            "limits.logins_per_minute": 0,
        },
    ).start()
    try:
        acks, errors = await seed_room(srv, "r", 200)
        if acks < 200:
            res.notes.append(f"seeding: {acks} acks, errors {dict(errors)}")
        res.idle = await srv.idle_rss(2.0)
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib).start()
        ws = await WS.connect(srv.port, "/ws?token=" + await srv.login("reader"))
        await ws.wait_for(lambda v: v.get("type") == "welcome")
        one = text_frame({"type": "history", "room": "r", "before": 201, "limit": 100})
        payload = one * n_req
        t0 = time.monotonic()
        write_state = "all written"
        try:
            ws.writer.write(payload)
            try:
                await ws.flush(5)
            except asyncio.TimeoutError:
                left = ws.writer.transport.get_write_buffer_size()
                write_state = f"{(len(payload) - left) // len(one)} of {n_req} written in 5 s (server stopped reading)"
        except NET_ERRORS as e:
            write_state = f"write failed: {type(e).__name__}"
        # Nothing read for 4 s: whatever the server queues for us stays queued.
        for _ in range(40):
            if sampler.over_cap.is_set():
                break
            await asyncio.sleep(0.1)
        peak_unread = sampler.peak_kib
        # Then read what comes, for up to 8 s, to see how it ends.
        pages, other, got = 0, collections.Counter(), 0
        read_until = time.monotonic() + (0 if sampler.over_cap.is_set() else 8)
        with contextlib.suppress(asyncio.TimeoutError):
            while time.monotonic() < read_until:
                f = await ws.recv(read_until - time.monotonic())
                if f is None:
                    break
                got += len(f[1])
                if b'"type":"history"' in f[1]:
                    pages += 1
                else:
                    with contextlib.suppress(ValueError):
                        v = json.loads(f[1])
                        other[v.get("code") or v.get("type")] += 1
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        await sampler.stop()
        at = None if ws.closed_at is None else ws.closed_at - t0
        ws.abort()
        res.outcome = closed_how(ws) + ("" if at is None else f" at {at:.1f} s")
        if ws.close_code is None and not ws.eof:
            res.outcome = f"no close; {pages} of {n_req} pages delivered"
        if sampler.over_cap.is_set():
            res.outcome += f"; client stopped: server RSS over the {ctx.args.rss_cap_mb} MiB cap"
        res.notes.append(
            f"{n_req} requests ({write_state}); peak while unread {mib(peak_unread)} MiB; "
            f"then read {pages} pages ({got / 1048576:.1f} MiB)" + (f", other {dict(other)}" if other else "")
        )
        res.data.update(pages_read=pages, close_code=ws.close_code, peak_unread_kib=peak_unread)
        back = await settle_after(srv, res.idle, 10.0, res, early_exit=True)
        res.notes.append("back within 16 MiB of idle " + (f"after {back:.1f} s" if back is not None else "never (10 s)"))
        note_skipped(srv, res)
    finally:
        await srv.stop()


async def flood_rooms(srv, ws, prefix, names, seconds, window, counts, stop_when):
    """Joins `prefix0`, `prefix1`, … (history 0) with up to `window` joins in
    flight, for `seconds` or until `names` rooms were accepted or refused for
    good. A `rate_limited` answer pauses the sending for its `retry_after_ms`
    and puts the room back in line (the attacker that gets the most rooms in
    the time)."""
    state = {"next": 0, "outstanding": 0, "pause_until": 0.0, "tried": 0}
    again = collections.deque()
    wake = asyncio.Event()
    t0 = time.monotonic()

    async def reader():
        while True:
            f = await ws.recv()
            if f is None:
                counts[f"connection ended ({closed_how(ws)})"] += 1
                wake.set()
                return
            if b'"type":"joined"' in f[1]:
                counts["joined"] += 1
                state["outstanding"] -= 1
            else:
                with contextlib.suppress(ValueError):
                    v = json.loads(f[1])
                    if v.get("type") == "error":
                        counts[v.get("code")] += 1
                        state["outstanding"] -= 1
                        if v.get("code") == "rate_limited" and v.get("room"):
                            again.append(v["room"])
                        if v.get("retry_after_ms"):
                            state["pause_until"] = max(
                                state["pause_until"], time.monotonic() + v["retry_after_ms"] / 1000
                            )
            wake.set()

    rt = asyncio.ensure_future(reader())
    try:
        while (state["next"] < names or again or state["outstanding"]) and time.monotonic() - t0 < seconds and not stop_when():
            if rt.done():
                break
            now = time.monotonic()
            if now < state["pause_until"]:
                await asyncio.sleep(min(state["pause_until"] - now, 0.05))
                continue
            n = min(window - state["outstanding"], names - state["next"] + len(again))
            if n <= 0:
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.5)
                continue
            batch = []
            while len(batch) < n and again:
                batch.append(again.popleft())
            while len(batch) < n:
                batch.append(f"{prefix}{state['next']}")
                state["next"] += 1
            ws.writer.write(b"".join(text_frame({"type": "join", "room": r, "history": 0}) for r in batch))
            state["tried"] += len(batch)
            state["outstanding"] += len(batch)
            await ws.flush(max(0.01, seconds - (time.monotonic() - t0)))
        # The answers still on their way.
        deadline = time.monotonic() + 3
        while state["outstanding"] > 0 and time.monotonic() < deadline and not rt.done():
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.2)
    except (asyncio.TimeoutError, *NET_ERRORS) as e:
        counts[f"client {type(e).__name__}"] += 1
    finally:
        rt.cancel()
    return state["tried"], time.monotonic() - t0


async def sc_room_flood(ctx, res, seconds=15.0, most=100_000):
    users = ctx.args.flood_users
    srv = await ctx.server("room-flood", {"limits.logins_per_minute": 0}).start()
    conns = []
    try:
        res.idle = await srv.idle_rss()
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib).start()
        for u in range(users):
            ws = await WS.connect(srv.port, "/ws?token=" + await srv.login(f"flooder{u}"))
            conns.append(ws)
            await ws.wait_for(lambda v: v.get("type") == "welcome")
        counts = collections.Counter()
        prefixes = ["r"] if users == 1 else [f"u{u}-r" for u in range(users)]
        done = await asyncio.gather(*(
            flood_rooms(srv, ws, prefix, most // users, seconds, 100 if users == 1 else 10, counts, sampler.over_cap.is_set)
            for ws, prefix in zip(conns, prefixes)
        ))
        sent = sum(d[0] for d in done)
        took = max(d[1] for d in done)
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        during = srv.rss()
        rooms = {}
        with contextlib.suppress(asyncio.TimeoutError, *NET_ERRORS):
            r = await http(srv.port, "GET", "/api/rooms", timeout=30)
            rooms = {"status": r.status, "bytes": len(r.body), "ms": round(r.elapsed * 1000, 1)}
            with contextlib.suppress(ValueError):
                body = json.loads(r.body)
                rooms["listed"] = len(body.get("rooms", []))
                rooms["next_after"] = body.get("next_after")
        await sampler.stop()
        for ws in conns:
            ws.abort()
        conns = []
        joined = counts.pop("joined", 0)
        who = "one connection" if users == 1 else f"{users} connections (one guest each)"
        res.outcome = f"{who}: {joined} joins accepted of {sent} join frames in {took:.1f} s; " + (
            ", ".join(f"{k}: {v}" for k, v in counts.most_common()) or "no errors"
        )
        if sampler.over_cap.is_set():
            res.outcome += f"; client stopped: server RSS over the {ctx.args.rss_cap_mb} MiB cap"
        res.latency = f"GET /api/rooms {rooms.get('ms', '-')} ms"
        res.notes.append(
            f"GET /api/rooms: {rooms.get('bytes', '-')} bytes, {rooms.get('listed', '-')} rooms listed"
            + (f", next_after {rooms['next_after']!r}" if rooms.get("next_after") else "")
        )
        res.notes.append(f"RSS with the client connected {mib(during)} MiB")
        res.data.update(joined=joined, sent=sent, secs=took, errors=dict(counts), rooms=rooms)
        await settle_after(srv, res.idle, 15.0, res)
        res.notes.append(f"RSS after = {res.data['after_secs']} s after the client closed")
        note_skipped(srv, res)
    finally:
        for ws in conns:
            ws.abort()
        await srv.stop()


def attacker_process(port, token, seconds, window, out):
    """Toggles join/leave in `storm` as fast as the server answers, `window`
    requests in flight (its own process, so the measuring clients are not
    slowed down by it)."""

    async def go():
        ws = await WS.connect(port, "/ws?token=" + token)
        await ws.wait_for(lambda v: v.get("type") == "welcome")
        counts = collections.Counter()
        sent = 0
        outstanding = 0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < seconds:
                while outstanding < window:
                    kind = "join" if sent % 2 == 0 else "leave"
                    msg = {"type": kind, "room": "storm"}
                    if kind == "join":
                        msg["history"] = 0
                    ws.send(msg)
                    sent += 1
                    outstanding += 1
                await ws.flush(5)
                v = await ws.recv_json(5)
                if v is None:
                    counts[f"connection ended ({closed_how(ws)})"] += 1
                    break
                t = v.get("type")
                if t in ("joined", "left"):
                    counts[t] += 1
                    outstanding -= 1
                elif t == "error":
                    counts[v.get("code")] += 1
                    outstanding -= 1
        except (asyncio.TimeoutError, *NET_ERRORS) as e:
            counts[type(e).__name__] += 1
        ws.abort()
        return sent, dict(counts)

    try:
        out.put(asyncio.run(go()))
    except Exception as e:
        out.put((0, {"attacker failed": repr(e)}))


def members_process(port, tokens, counting, stop, out):
    """The room's members: joined, reading everything. Member 0 parses its
    frames and counts its `presence` frames; all count bytes and presence
    frames (by their text) while `counting` is set."""

    async def go():
        sem = asyncio.Semaphore(20)

        async def member(token):
            async with sem:
                ws = await WS.connect(port, "/ws?token=" + token)
                await ws.wait_for(lambda v: v.get("type") == "welcome")
                ws.send({"type": "join", "room": "storm", "history": 0})
                await ws.wait_for(lambda v: v.get("type") == "joined")
                return ws

        conns = await asyncio.gather(*(member(t) for t in tokens))
        out.put("ready")
        c = {"presence0": 0, "frames0": 0, "presence_all": 0, "bytes_all": 0, "ended": collections.Counter()}

        async def first(ws):
            while True:
                f = await ws.recv()
                if f is None:
                    c["ended"][closed_how(ws)] += 1
                    return
                if counting.is_set():
                    c["frames0"] += 1
                    c["bytes_all"] += len(f[1])
                    if b'"type":"presence"' in f[1]:
                        c["presence0"] += 1
                        c["presence_all"] += 1

        async def rest(ws):
            while True:
                try:
                    chunk = await ws.reader.read(1 << 16)
                except NET_ERRORS:
                    chunk = b""
                if not chunk:
                    c["ended"]["TCP closed"] += 1
                    return
                if counting.is_set():
                    c["bytes_all"] += len(chunk)
                    c["presence_all"] += chunk.count(b'"type":"presence"')

        tasks = [asyncio.ensure_future(first(conns[0]))] + [asyncio.ensure_future(rest(ws)) for ws in conns[1:]]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stop.wait)
        for t in tasks:
            t.cancel()
        for ws in conns:
            ws.abort()
        c["ended"] = dict(c["ended"])
        return c

    try:
        out.put(asyncio.run(go()))
    except Exception as e:
        out.put({"failed": repr(e)})


async def sc_presence_storm(ctx, res, members=100, seconds=10.0):
    srv = await ctx.server(
        "presence-storm",
        {
            "limits.logins_per_minute": 0,
            "limits.messages_per_sec": 100,
            "limits.message_burst": 100,
        },
    ).start()
    procs = []
    pair = []
    loop = asyncio.get_running_loop()
    mp = multiprocessing.get_context("spawn")
    try:
        res.idle = await srv.idle_rss()
        tokens = []
        for i in range(members):
            tokens.append(await srv.login(f"m{i}"))
        counting, stop = mp.Event(), mp.Event()
        mq, aq = mp.Queue(), mp.Queue()
        mproc = mp.Process(target=members_process, args=(srv.port, tokens, counting, stop, mq), daemon=True)
        mproc.start()
        procs.append(mproc)
        ready = await loop.run_in_executor(None, mq.get, True, 60)
        if ready != "ready":
            raise RuntimeError(f"members: {ready}")

        async def joined(name):
            ws = await WS.connect(srv.port, "/ws?token=" + await srv.login(name))
            pair.append(ws)
            await ws.wait_for(lambda v: v.get("type") == "welcome")
            ws.send({"type": "join", "room": "storm", "history": 0})
            await ws.wait_for(lambda v: v.get("type") == "joined")
            return ws

        sender = await joined("sender")
        receiver = await joined("receiver")
        sent_at, lat = {}, {"quiet": [], "storm": []}
        phase = {"name": "quiet"}

        async def receive():
            while True:
                f = await receiver.recv()
                if f is None:
                    return
                if b'"type":"message"' in f[1]:
                    with contextlib.suppress(ValueError, KeyError):
                        v = json.loads(f[1])
                        t = sent_at.pop(v["content"], None)
                        if t:
                            lat[t[1]].append(time.monotonic() - t[0])

        async def drain_sender():
            while await sender.recv() is not None:
                pass

        helpers = [asyncio.ensure_future(receive()), asyncio.ensure_future(drain_sender())]

        async def send_every(until):
            i = 0
            while time.monotonic() < until:
                content = f"lat {phase['name']} {i}"
                sent_at[content] = (time.monotonic(), phase["name"])
                sender.send({"type": "send", "room": "storm", "content": content, "ref": f"lat-{phase['name']}-{i}"})
                with contextlib.suppress(asyncio.TimeoutError, *NET_ERRORS):
                    await sender.flush(5)
                i += 1
                await asyncio.sleep(0.2)

        await asyncio.sleep(1.0)  # the members' own presence settles
        await send_every(time.monotonic() + 2.0)  # quiet: 10 messages
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib).start()
        phase["name"] = "storm"
        counting.set()
        aproc = mp.Process(
            target=attacker_process,
            args=(srv.port, await srv.login("attacker"), seconds, 16, aq),
            daemon=True,
        )
        aproc.start()
        procs.append(aproc)
        await send_every(time.monotonic() + seconds)
        try:
            a_sent, a_counts = await loop.run_in_executor(None, aq.get, True, 30)
        except Exception as e:  # queue.Empty: the process died
            a_sent, a_counts = 0, {"attacker failed": repr(e)}
        await asyncio.sleep(1.0)  # late messages and presence
        counting.clear()
        stop.set()
        try:
            m = await loop.run_in_executor(None, mq.get, True, 30)
        except Exception as e:
            m = {"failed": repr(e)}
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        await sampler.stop()
        lost = sum(1 for _, ph in sent_at.values() if ph == "storm")
        q50, q99 = pct(lat["quiet"], 50), pct(lat["quiet"], 99)
        s50, s99, smax = pct(lat["storm"], 50), pct(lat["storm"], 99), max(lat["storm"], default=None)
        res.latency = (
            f"send→receive quiet p50 {ms(q50)} / p99 {ms(q99)} ms; "
            f"storm p50 {ms(s50)} / p99 {ms(s99)} / max {ms(smax)} ms ({len(lat['storm'])} msgs, {lost} lost)"
        )
        res.outcome = (
            f"member 0 got {m.get('presence0', '?')} presence frames; "
            f"attacker sent {a_sent} join/leave: " + ", ".join(f"{k} {v}" for k, v in sorted(a_counts.items(), key=str))
        )
        res.notes.append(
            f"{members} members got {m.get('presence_all', '?')} presence frames, "
            f"{m.get('bytes_all', 0) / 1048576:.1f} MiB in all during the storm"
        )
        if m.get("ended"):
            res.notes.append(f"member connections ended: {m['ended']}")
        if m.get("failed"):
            res.notes.append(f"members process failed: {m['failed']}")
        res.data.update(
            presence0=m.get("presence0"), presence_all=m.get("presence_all"), attacker_sent=a_sent,
            attacker=a_counts, lat_quiet=[q50, q99], lat_storm=[s50, s99, smax], lost=lost,
        )
        for t in helpers:
            t.cancel()
        for ws in pair:
            ws.abort()
        pair = []
        for p in procs:
            p.join(5)
        await settle_after(srv, res.idle, 5.0, res)
        note_skipped(srv, res)
    finally:
        for ws in pair:
            ws.abort()
        for p in procs:
            if p.is_alive():
                p.kill()
        await srv.stop()


async def sc_slow_bodies(ctx, res, seconds=15.0):
    n = ctx.args.slow_conns
    length = ctx.args.slow_content_length
    # Logins unlimited: the slow requests meet the request timeout, not the login limit.
    srv = await ctx.server("slow-bodies", {"limits.logins_per_minute": 0}).start()
    conns = []
    try:
        res.idle = await srv.idle_rss()
        idle_fds = fd_count(srv.pid)
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib, fds=True).start()
        answers = collections.Counter()
        answer_times = collections.defaultdict(list)
        t0 = time.monotonic()
        stop = asyncio.Event()

        sem = asyncio.Semaphore(100)  # connects in flight at once

        async def slow(i):
            try:
                async with sem:
                    reader, writer = await asyncio.open_connection(HOST, srv.port)
            except (OSError, *NET_ERRORS) as e:
                answers[f"connect failed ({type(e).__name__})"] += 1
                return
            conns.append(writer)
            opened = time.monotonic()
            writer.write(
                (
                    f"POST /api/login HTTP/1.1\r\nHost: {HOST}:{srv.port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {length}\r\n\r\n"
                ).encode()
            )

            async def drip():
                body = b'{"name":"' + b"a" * min(length, 1000)
                k = 0
                with contextlib.suppress(*NET_ERRORS):
                    while not stop.is_set():
                        writer.write(body[k:k + 1])
                        k += 1
                        await writer.drain()
                        await asyncio.sleep(1.0)

            dt = asyncio.ensure_future(drip())
            try:
                status, _, _ = await read_response(reader)
                answers[str(status)] += 1
                answer_times[str(status)].append(time.monotonic() - opened)
            except asyncio.CancelledError:
                answers["no answer"] += 1
            except (asyncio.IncompleteReadError, *NET_ERRORS) as e:
                if stop.is_set():
                    answers["no answer"] += 1
                else:
                    what = f"closed without answer ({type(e).__name__})"
                    answers[what] += 1
                    answer_times[what].append(time.monotonic() - opened)
            finally:
                dt.cancel()

        slows = [asyncio.ensure_future(slow(i)) for i in range(n)]
        health = []  # (ok, latency)

        async def pinger():
            while time.monotonic() - t0 < seconds:
                t = time.monotonic()
                try:
                    r = await http(srv.port, "GET", "/healthz", timeout=2)
                    health.append((r.status == 200, r.elapsed, r.status))
                except (asyncio.TimeoutError, *NET_ERRORS) as e:
                    health.append((False, time.monotonic() - t, type(e).__name__))
                await asyncio.sleep(max(0, 0.5 - (time.monotonic() - t)))

        await pinger()
        fds_during = fd_count(srv.pid)
        stop.set()
        for t in slows:
            t.cancel()
        await asyncio.gather(*slows, return_exceptions=True)
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        peak_fds = sampler.peak_fds
        await sampler.stop()
        for w in conns:
            with contextlib.suppress(Exception):
                w.transport.abort()
        await asyncio.sleep(2.0)
        fds_after = fd_count(srv.pid)
        res.after = srv.rss()
        ok = [h for h in health if h[0]]
        failed = collections.Counter(str(h[2]) for h in health if not h[0])
        res.outcome = f"{n} slow POSTs (Content-Length {length}): " + ", ".join(
            f"{k}: {v}" + (f" (median {statistics.median(answer_times[k]):.1f} s)" if answer_times[k] else "")
            for k, v in answers.most_common()
        )
        res.latency = (
            f"/healthz {len(ok)}/{len(health)} ok, p50 {ms(pct([h[1] for h in ok], 50))} / max {ms(max((h[1] for h in ok), default=None))} ms"
            + (f"; failed: {dict(failed)}" if failed else "")
        )
        res.notes.append(f"server fds idle {idle_fds}, peak {peak_fds}, at {seconds:.0f} s {fds_during}, 2 s after close {fds_after}")
        res.data.update(answers=dict(answers), health_ok=len(ok), health_total=len(health), fds=[idle_fds, peak_fds, fds_during, fds_after])
        note_skipped(srv, res)
    finally:
        for w in conns:
            with contextlib.suppress(Exception):
                w.transport.abort()
        await srv.stop()


async def sc_login_burst(ctx, res, n_logins=1000, n_rooms=2000, n_conns=4):
    srv = await ctx.server(
        "login-burst",
        {
            "limits.rooms_per_connection": n_rooms,
            "limits.joins_per_sec": 100000,
            "limits.messages_per_sec": 100000,
            "limits.message_burst": 100000,
        },
    ).start()
    conns = []
    try:
        res.idle = await srv.idle_rss()
        sampler = Sampler(srv.pid, cap_kib=ctx.cap_kib).start()
        statuses = collections.Counter()
        tokens = []
        lat = []
        queue = list(range(n_logins))

        async def worker():
            while queue:
                i = queue.pop()
                try:
                    r = await http(srv.port, "POST", "/api/login", json.dumps({"name": f"b{i}"}).encode())
                    lat.append(r.elapsed)
                    code = ""
                    if r.status != 200:
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            code = " " + json.loads(r.body)["error"]["code"]
                    statuses[f"{r.status}{code}"] += 1
                    if r.status == 200 and len(tokens) < n_conns:
                        tokens.append(json.loads(r.body)["token"])
                except (asyncio.TimeoutError, *NET_ERRORS) as e:
                    statuses[type(e).__name__] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(50)))
        burst_s = time.monotonic() - t0
        res.outcome = f"{n_logins} logins in {burst_s:.1f} s: " + ", ".join(f"{k}: {v}" for k, v in statuses.most_common())
        res.latency = f"login p50 {ms(pct(lat, 50))} / p99 {ms(pct(lat, 99))} ms"
        while len(tokens) < n_conns:
            tokens.append(srv.mint("roomer"))

        m0 = await http(srv.port, "GET", "/metrics")
        metrics_before = len(m0.body)

        # n_rooms rooms, each joined and given one message (per-room series
        # come from the analytics counters, i.e. from messages).
        per = n_rooms // n_conns
        counts = collections.Counter()

        async def roomer(c, token):
            ws = await WS.connect(srv.port, "/ws?token=" + token)
            conns.append(ws)
            await ws.wait_for(lambda v: v.get("type") == "welcome")
            names = [f"m{c}-{i}" for i in range(per)]
            for step in ("join", "send"):
                for i, room in enumerate(names):
                    if step == "join":
                        ws.send({"type": "join", "room": room, "history": 0})
                    else:
                        ws.send({"type": "send", "room": room, "content": f"hello {room}", "ref": f"x-{room}"})
                await ws.flush(30)
                want, got = len(names), 0
                deadline = time.monotonic() + 60
                while got < want and time.monotonic() < deadline:
                    v = await ws.recv_json(max(0.01, deadline - time.monotonic()))
                    if v is None:
                        return
                    t = v.get("type")
                    if t in ("joined", "ack"):
                        counts[t] += 1
                        got += 1
                    elif t == "error":
                        counts[f"{step} {v.get('code')}"] += 1
                        got += 1

        await asyncio.gather(*(roomer(c, tok) for c, tok in enumerate(tokens)), return_exceptions=True)
        # Room series are refreshed every few seconds: poll until stable.
        best = (0, 0, 0)
        stable = 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            await asyncio.sleep(2.5)
            with contextlib.suppress(asyncio.TimeoutError, *NET_ERRORS):
                r = await http(srv.port, "GET", "/metrics", timeout=10)
                text = r.body.decode(errors="replace")
                series = sum(1 for line in text.splitlines() if line.startswith("confab_room_"))
                now = (len(r.body), series, r.elapsed)
                stable = stable + 1 if series == best[1] and series > 0 else 0
                if now[0] >= best[0]:
                    best = now
                if stable >= 2:
                    break
        res.peak = sampler.peak_kib
        res.data['cpu'] = sampler.cpu()
        await sampler.stop()
        res.notes.append(
            f"{counts['joined']} rooms joined, {counts['ack']} messages acked"
            + "".join(f", {k} {v}" for k, v in counts.items() if k not in ("joined", "ack"))
        )
        res.notes.append(
            f"/metrics {metrics_before} bytes before, {best[0]} bytes with {n_rooms} rooms "
            f"({best[1]} confab_room_* series, {best[2] * 1000:.0f} ms)"
        )
        res.data.update(statuses=dict(statuses), metrics_before=metrics_before, metrics_bytes=best[0], room_series=best[1])
        for ws in conns:
            ws.abort()
        conns = []
        await settle_after(srv, res.idle, 3.0, res)
        note_skipped(srv, res)
    finally:
        for ws in conns:
            ws.abort()
        await srv.stop()


RUNNERS = {
    "baseline": (sc_baseline, 60),
    "frame-bomb": (sc_frame_bomb, 60),
    "history-pipeline": (sc_history_pipeline, 120),
    "room-flood": (sc_room_flood, 120),
    "presence-storm": (sc_presence_storm, 120),
    "slow-bodies": (sc_slow_bodies, 90),
    "login-burst": (sc_login_burst, 150),
}


async def main(args):
    ctx = Ctx(args)
    version = "?"
    with contextlib.suppress(Exception):
        version = subprocess.run([ctx.binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    names = SCENARIOS if not args.only else [n for n in SCENARIOS if n in args.only]
    log(f"binary {ctx.binary} ({version}); {len(ctx.keys or [])} config keys known; scenarios: {', '.join(names)}")
    results = []
    started = time.monotonic()
    try:
        for name in names:
            fn, limit = RUNNERS[name]
            res = Result(name)
            ctx.current = res
            log(f"{name} ...")
            t = time.monotonic()
            try:
                await asyncio.wait_for(fn(ctx, res), limit)
            except asyncio.TimeoutError:
                res.outcome = (res.outcome + "; " if res.outcome else "") + f"scenario timed out after {limit} s"
            except Exception as e:  # one scenario failing does not stop the others
                res.outcome = (res.outcome + "; " if res.outcome else "") + f"failed: {type(e).__name__}: {e}"
            if res.data.get("panic") and "panicked" not in res.outcome:
                res.notes.append(f"server log: {res.data['panic']}")
            if res.data.get("exited") is not None:
                res.notes.append(f"server exited by itself (status {res.data['exited']})")
            if res.data.get("cpu"):
                res.notes.append(res.data["cpu"])
            res.data["secs"] = round(time.monotonic() - t, 1)
            log(f"{name} done in {res.data['secs']} s: {res.outcome}")
            results.append(res)
    finally:
        if not ctx.keep:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    print(f"\nconfab abuse repro: {ctx.binary} ({version}), {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"total {time.monotonic() - started:.0f} s\n")
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"binary": ctx.binary, "version": version, "results": [
                    {"name": r.name, "row": r.row(), "idle_kib": r.idle, "peak_kib": r.peak, "after_kib": r.after, "data": r.data}
                    for r in results
                ]},
                f, indent=2, default=str,
            )


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="path to a confab binary")
    p.add_argument("--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    p.add_argument("--rss-cap-mb", type=int, default=1024,
                   help="stop an attack when the server's RSS passes this (protects the machine; default 1024)")
    p.add_argument("--history-requests", type=int, default=3000, help="history frames pipelined (default 3000)")
    p.add_argument("--slow-conns", type=int, default=400, help="slow-body connections (default 400)")
    p.add_argument("--flood-users", type=int, default=1,
                   help="room-flood: connections, one guest user each, flooding at once (default 1)")
    p.add_argument("--slow-content-length", type=int, default=1_000_000,
                   help="Content-Length the slow bodies declare (default 1000000)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs and server logs")
    return p.parse_args()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"not an executable: {args.binary}")
    asyncio.run(main(args))
