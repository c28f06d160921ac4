"""Issue #12's probes against a real server process (`python -m app.serve`, bench.common.server_process), loopback
only, every loop bounded in count and time, generous bounds (figures are printed, not asserted tightly).

The guarded server runs at `ulimit -n 1024` with short timeouts: stall 2 s, header 3 s, 16 MiB bodies, 40 streams
in all and per client. long-lstm may generate 65536 tokens: its streams outlive every test's reads.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import signal
import socket
import threading
import time

import httpx
import pytest
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families

LONG = "/sample?model=long-lstm&seed=1"
STALL_S, HEADER_S = 2.0, 3.0


@pytest.fixture(scope="module")
def guarded(artifacts):
    from bench.common import server_process

    env = {"ARSERVE_STREAM_STALL_S": str(STALL_S), "ARSERVE_HEADER_TIMEOUT_S": str(HEADER_S),
           "ARSERVE_MAX_BODY_BYTES": str(16 * 2**20), "ARSERVE_MAX_CONCURRENT_STREAMS": "40",
           "ARSERVE_MAX_STREAMS_PER_CLIENT": "40"}
    with server_process(artifacts, nofile=1024, **env) as (url, proc):
        yield url, proc


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def metric(url: str, name: str, model: str = "long-lstm") -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("model") == model:
                return s.value
    raise AssertionError(f"{name} not in /metrics")


def wait_until(check, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what} within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - start


def healthz_s(url: str) -> float:
    t0 = time.perf_counter()
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    return time.perf_counter() - t0


def raw(url: str, request: bytes, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(address(url))
    s.sendall(request)
    return s


def sse_request(url: str, path: str) -> bytes:
    host, port = address(url)
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def server_log(proc) -> str:
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


# ----- bodies --------------------------------------------------------------------------------------------


def test_100mb_body_refused_before_its_upload_ends(guarded):
    url, _ = guarded
    host, port = address(url)
    with httpx.Client(base_url=url, timeout=30) as http, connect_sse(http, "GET", LONG) as stream:
        events = stream.iter_sse()
        assert next(events).event == "token"
        # announced by Content-Length: refused before a byte of the body is sent
        s = raw(url, f"POST /logprob HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {100 * 2**20}\r\n\r\n".encode())
        head = read_until_closed(s, 30)  # the answer says Connection: close
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert b"body_too_large" in head and b"ARSERVE_MAX_BODY_BYTES" in head
        s.close()
        # chunked: counted while it arrives; the 413 comes while the client is still sending
        s = raw(url, f"POST /logprob HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n%s\r\n" % (2**20, b"[" + b"0," * (2**19 - 1) + b"0")  # 1 MiB chunks
        sent, answer, worst_healthz = 0, b"", 0.0
        while sent < 100 and not answer:
            try:
                s.sendall(chunk)
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([s], [], [], 0)[0]:
                answer = s.recv(4096)
            if sent % 4 == 0:
                worst_healthz = max(worst_healthz, healthz_s(url))
                assert next(events).event == "token"  # the running stream still flows
        if not answer:
            s.settimeout(30)
            answer = s.recv(4096)
        print(f"chunked 100 MB body: 413 after {sent} MiB sent; slowest /healthz meanwhile {worst_healthz:.3f}s")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 100, "the whole body was sent before the answer"
        assert worst_healthz < 5
        s.close()
        assert next(events).event == "token"


def test_a_million_unknown_keys_get_a_short_4xx(guarded):
    url, _ = guarded
    body = json.dumps({f"k{i}": 0 for i in range(1_000_000)}, separators=(",", ":")).encode()  # 11 MB < 16 MiB
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/logprob", content=body, headers={"content-type": "application/json"}, timeout=60)
    print(f"1M unknown keys ({len(body) / 1e6:.1f} MB): {r.status_code} in {time.perf_counter() - t0:.2f}s, "
          f"{len(r.content)} bytes")
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_fields" and len(r.content) < 500, r.text


def test_zero_bytes_as_text_are_not_echoed(guarded):
    url, _ = guarded
    r = httpx.post(f"{url}/logprob", content=b"\0" * 10_000_000, headers={"content-type": "text/plain"}, timeout=60)
    assert 400 <= r.status_code < 500 and len(r.content) < 600, r.text[:300]


# ----- connections -----------------------------------------------------------------------------------------


def test_1100_idle_connections_at_ulimit_1024(guarded):
    url, proc = guarded
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"this test process may hold only {hard} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while len(idle) < 1100 and time.monotonic() < deadline:
            try:
                idle.append(socket.create_connection(address(url), timeout=5))
            except OSError:
                break
        assert len(idle) == 1100, f"opened only {len(idle)} connections"
        took = healthz_s(url)
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        print(f"1100 idle connections: /healthz in {took:.3f}s; the server holds {fds} descriptors of 1024")
        assert took < 10 and fds < 1024
        # the header deadline reaps what is left: the server's descriptors go back down
        wait_until(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) < 200, HEADER_S + 30, "idle connections closed")
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Too many open files" not in server_log(proc)


def test_headers_must_arrive_in_time(guarded):
    url, _ = guarded
    s = raw(url, b"GET /healthz HTTP/1.1\r\nHost: slow")  # and nothing more: a slowloris
    t0 = time.monotonic()
    assert read_until_closed(s, HEADER_S + 30) == b""
    took = time.monotonic() - t0
    s.close()
    print(f"half-sent headers: closed after {took:.2f}s (ARSERVE_HEADER_TIMEOUT_S={HEADER_S:g})")
    assert took < HEADER_S + 30


def test_32_streams_that_nobody_reads_are_freed(guarded):
    url, _ = guarded
    wait_until(lambda: metric(url, "arserve_active_streams") == 0, 30, "no stream running")
    readers = [raw(url, sse_request(url, LONG + "&chunk=1"), rcvbuf=4096) for _ in range(32)]
    try:
        wait_until(lambda: metric(url, "arserve_active_streams") == 32, 60, "32 streams running")
        t0 = time.monotonic()
        freed = wait_until(lambda: metric(url, "arserve_active_streams") == 0, STALL_S + 60, "stalled streams freed")
        print(f"32 non-reading streams: every slot freed {freed:.2f}s after all had started "
              f"(ARSERVE_STREAM_STALL_S={STALL_S:g})")
        assert time.monotonic() - t0 < STALL_S + 60
        with httpx.Client(base_url=url, timeout=30) as http, connect_sse(http, "GET", LONG) as stream:
            assert next(stream.iter_sse()).event == "token"  # a new reader is served
    finally:
        for s in readers:
            s.close()


def test_post_sample_disconnect_stops_the_generation(guarded):
    url, _ = guarded
    wait_until(lambda: metric(url, "arserve_active_streams") == 0, 30, "no stream running")
    before = metric(url, "arserve_tokens_generated_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/sample", json={"model": "long-lstm", "seed": 1}, timeout=httpx.Timeout(30, read=0.5))
    wait_until(lambda: metric(url, "arserve_active_streams") == 0, 10, "the POST's slot given back")
    time.sleep(0.3)
    stopped_at = metric(url, "arserve_tokens_generated_total")
    time.sleep(0.5)
    assert metric(url, "arserve_tokens_generated_total") == stopped_at, "still generating after the disconnect"
    assert stopped_at - before < 65536


# ----- shutdown ----------------------------------------------------------------------------------------------


class SlowReader(threading.Thread):
    """Reads its stream 2 KiB at a time with a pause between reads, until the server closes it."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.sock = raw(url, sse_request(url, LONG), rcvbuf=16384)
        self.data = b""

    def run(self) -> None:
        self.sock.settimeout(60)
        chunks = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(2048)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            time.sleep(0.005)
        self.data = b"".join(chunks)
        self.sock.close()

    def events(self) -> list[str]:
        return re.findall(r"^event: (\w+)$", self.data.decode(errors="replace"), re.M)


def test_sigterm_with_slow_readers_exits_within_the_drain(artifacts):
    from bench.common import server_process

    drain_s = 3.0
    with server_process(artifacts, ARSERVE_DRAIN_S=str(drain_s), ARSERVE_STREAM_STALL_S="60") as (url, proc):
        readers = [SlowReader(url) for _ in range(4)]
        for r in readers:
            r.start()
        silent = [raw(url, sse_request(url, LONG), rcvbuf=4096) for _ in range(2)]  # never read at all
        wait_until(lambda: metric(url, "arserve_active_streams") == 6, 60, "6 streams running")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(drain_s + 30)
        took = time.monotonic() - t0
        for r in readers:
            r.join(60)
        for s in silent:
            s.close()
        print(f"SIGTERM with 4 slow readers and 2 silent ones: exited after {took:.2f}s (ARSERVE_DRAIN_S={drain_s:g})")
        log = server_log(proc)
    from app.http.drain import CLOSE_GRACE_S

    assert took < drain_s + CLOSE_GRACE_S + 5, log[-2000:]
    for r in readers:
        events = r.events()
        assert events and events[-1] == "error", events[-3:]
        assert b'"code":"shutting_down"' in r.data[-300:]
    assert "Traceback" not in log, log[-3000:]

