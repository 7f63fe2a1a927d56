"""Callbacks in one process: which URLs are refused and why (at submission and
again at the send, for DNS that changes), the signature a receiver checks, the
secret file, and the owner posting what the ledger (real SQLite) says is due to
a real local receiver, with retries, a bounded stop and claims released."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stemd.callbacks import CallbackRefused, check_callback_url
from stemd.callbacks.delivery import Callbacks
from stemd.callbacks.sender import NotDelivered, post
from stemd.callbacks.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ensure_secret,
    read_secret,
    signature,
    signed_headers,
    verify,
)
from stemd.callbacks.urls import AddrInfo, refusal, vetted_addresses
from stemd.errors import ConfigError
from stemd.ledger import DueCallback, FileStat, Ledger, LedgerUnavailable, sqlite_ledger
from stemd.profile import Profile
from support.receiver import Hanging, Receiver, refused_port
from support.waiting import wait_until

SECRET = b"0123456789abcdef0123456789abcdef"
PROFILE = Profile("p", {"model": "m", "format": "wav"}, "m")


def resolver(*answers: str) -> object:
    """A stand-in for getaddrinfo that gives these addresses, in turn per call
    (one call's answer: addresses joined by ',')."""
    calls = iter(answers)

    def resolve(host: str, port: int) -> Sequence[AddrInfo]:
        found = next(calls)
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in found.split(",")
        ]

    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/done", "only http:// and https:// URLs are called back, not ftp://"),
        ("example.com/done", "not a URL without a scheme"),
        ("http:///done", "has no host"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is link-local"),
        ("http://[fe80::1]/x", "fe80::1 is link-local (fe80::/10)"),
        ("http://[fe80::1%25eth0]:8080/x", "fe80::1 is link-local"),
        ("http://[::ffff:169.254.169.254]/x", "::ffff:a9fe:a9fe is 169.254.169.254"),
        ("http://2852039166/x", "169.254.169.254 is link-local"),  # the same, as one number
        ("http://0xa9.0xfe.0xa9.0xfe/x", "169.254.169.254 is link-local"),
        ("http://[fd00:ec2::254]/x", "fd00:ec2::254 is a cloud metadata address"),
        ("http://0.0.0.0/x", "0.0.0.0 is not an address a receiver has"),
        ("http://example.com:99999/x", "not a URL"),
        ("http://exa mple.com/x", "spaces or control characters"),
        ("", "empty"),
    ],
)
def test_urls_stemd_will_not_call_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(CallbackRefused, match=None) as refused:
        check_callback_url(url, resolve=resolver("192.0.2.1"))
    assert why in str(refused.value)


def test_a_name_is_refused_when_any_address_it_resolves_to_is_link_local() -> None:
    with pytest.raises(CallbackRefused, match=r"meta\.test resolves to 169\.254\.169\.254 is link"):
        check_callback_url("http://meta.test/x", resolve=resolver("192.0.2.7,169.254.169.254"))
    with pytest.raises(CallbackRefused, match="resolves to fe80::2"):
        check_callback_url("http://six.test/x", resolve=resolver("fe80::2"))

    def nowhere(host: str, port: int) -> Sequence[AddrInfo]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(CallbackRefused, match=r"nowhere\.test does not resolve"):
        check_callback_url("http://nowhere.test/x", resolve=nowhere)
    # a config's rule is checked without DNS; the name is checked at each send
    assert check_callback_url("http://nowhere.test/x", resolve=None) == "http://nowhere.test/x"
    with pytest.raises(CallbackRefused, match="link-local"):
        check_callback_url("http://169.254.1.1/x", resolve=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "https://[::1]/hook?token=abc",
        "http://10.0.0.5/x",
        "HTTPS://receiver.test/stemd",
        "http://user:pass@192.168.1.20:9000/",
    ],
)
def test_loopback_lan_and_public_receivers_are_allowed(url: str) -> None:
    assert check_callback_url(url, resolve=resolver("192.168.1.9")) == url


def test_the_refusal_names_the_key_and_hides_the_urls_secrets() -> None:
    url = "ftp://user:hunter2@example.com/hook/s3cret?token=t0k"
    with pytest.raises(CallbackRefused) as refused:
        check_callback_url(url)
    message = refusal("callback_url", url, refused.value)
    assert message.startswith("callback_url ftp://***@example.com/***?***: only http://")
    assert "hunter2" not in message and "s3cret" not in message and "t0k" not in message


def test_each_send_checks_the_name_again_dns_rebinding_is_refused() -> None:
    resolve = resolver("192.0.2.10", "169.254.169.254")
    assert vetted_addresses("rebind.test", 80, resolve) == [(socket.AF_INET, ("192.0.2.10", 80))]
    with pytest.raises(CallbackRefused, match=r"rebind\.test resolves to 169\.254\.169\.254"):
        vetted_addresses("rebind.test", 80, resolve)


def test_a_post_to_a_name_that_now_resolves_to_link_local_never_connects() -> None:
    with Receiver() as receiver:
        resolve = resolver("169.254.169.254")
        with pytest.raises(NotDelivered) as err:
            post(f"http://rebind.test:{receiver.port}/x", b"{}", {}, 5.0, resolve=resolve)
        assert err.value.final and "refused now" in str(err.value)
        # the checked address is the one connected to: the receiver on loopback
        status = post(
            f"http://receiver.test:{receiver.port}/hook", b'{"a": 1}', {"X-T": "1"}, 5.0,
            resolve=resolver("127.0.0.1"),
        )  # fmt: skip
        assert status == 200
        (got,) = receiver.at("/hook")
        assert got.raw == b'{"a": 1}' and got.headers["X-T"] == "1"
        assert got.headers["Host"] == f"receiver.test:{receiver.port}"  # the name, not the address


def test_a_receiver_that_never_answers_costs_one_timeout() -> None:
    with Hanging() as hanging:
        started = time.monotonic()
        with pytest.raises(NotDelivered, match=r"no answer within 0\.5s"):
            post(f"http://127.0.0.1:{hanging.port}/x", b"{}", {}, 0.5)
        assert time.monotonic() - started < 3
    with pytest.raises(NotDelivered, match="Connection refused"):
        post(f"http://127.0.0.1:{refused_port()}/x", b"{}", {}, 2.0)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id": 7, "state": "done"}'
    # computed by hand, as the README's receiver does
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(body, SECRET, 1700000000) == f"sha256={expected}"
    headers = signed_headers(body, SECRET, now=1700000000.9)
    assert headers == {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: f"sha256={expected}"}
    now = 1700000100.0
    assert verify(body, "1700000000", headers[SIGNATURE_HEADER], SECRET, now=now)
    assert not verify(body + b" ", "1700000000", headers[SIGNATURE_HEADER], SECRET, now=now)
    assert not verify(body, "1700000001", headers[SIGNATURE_HEADER], SECRET, now=now)
    assert not verify(body, "1700000000", headers[SIGNATURE_HEADER], b"x" * 32, now=now)
    # a replay: the same request, well after it was signed
    assert not verify(body, "1700000000", headers[SIGNATURE_HEADER], SECRET, now=now + 3600)


def test_a_missing_secret_is_made_once_owner_only_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "callback-secret"
    secret, made = ensure_secret(path)
    assert made and len(secret) == 64 and int(secret, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_secret(path) == (secret, False)
    path.write_text("too short\n")
    with pytest.raises(ConfigError, match=r"http\.callback_secret_file: .* holds 9 characters"):
        read_secret(path)
    with pytest.raises(ConfigError, match=r"http\.callback_secret_file: there is no .* cannot be"):
        ensure_secret(tmp_path / "no-such-folder" / "secret")


# -- the owner, over a real ledger and a real receiver ------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = sqlite_ledger(tmp_path / "ledger.sqlite", "node")
    yield opened
    opened.close()


def ended_job(
    ledger: Ledger,
    name: str,
    url: str,
    ino: int,
    fail: bool = False,
    profile: Profile = PROFILE,
) -> int:
    record = ledger.add_input(
        Path(f"/u/{name}"), name, FileStat(1, ino, 9, 1), "http", callback_url=url
    )
    assert record is not None
    ledger.attach(record.id, f"{ino:064x}", profile, name)
    job = ledger.claim_next(profile=profile)
    assert job is not None
    if fail:
        ledger.fail(job, "the test fails it")
    else:
        ledger.complete(job, record.id, f"out/{name}")
    return job.id


def test_due_callbacks_are_posted_signed_and_retried_until_the_receiver_takes_them(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemd")
    with Receiver(failures=(503, 500)) as receiver:
        url = f"http://127.0.0.1:{receiver.port}/cb"
        done = ended_job(ledger, "a.wav", url, 1)
        owner = Callbacks(ledger, tmp_path, SECRET, poll=0.2, retry_first=0.2)
        owner.start()
        try:
            got = receiver.wait_for("/cb", 3, 30)  # two refusals, then taken
        finally:
            owner.stop(grace=2)
        failed = ended_job(ledger, "b.wav", url, 2, fail=True)
        owner = Callbacks(ledger, tmp_path, SECRET, poll=0.2)
        owner.start()
        try:
            got = receiver.wait_for("/cb", 4, 30)
        finally:
            owner.stop(grace=2)
    bodies = [json.loads(r.raw) for r in got]
    assert [(b["id"], b["state"]) for b in bodies] == [
        (done, "done"), (done, "done"), (done, "done"), (failed, "failed")
    ]  # fmt: skip
    assert bodies[3]["error"] == "the test fails it"
    for r in got:
        assert verify(r.raw, r.headers[TIMESTAMP_HEADER], r.headers[SIGNATURE_HEADER], SECRET)
    tries = [m for m in caplog.messages if "callback for job" in m]
    assert len(tries) == 4, tries  # one line a try
    assert "answered HTTP 503 (try 1 of 10" in tries[0] and "trying again in 0.2s" in tries[0]
    assert "delivered (HTTP 200, try 3" in tries[2]
    assert ledger.due_callbacks() == []


def test_stopping_releases_what_was_not_delivered_for_the_next_start(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def claimed_by() -> list[str | None]:
        with sqlite3.connect(ledger.path) as db:
            return [row[0] for row in db.execute("SELECT callback_claim FROM inputs")]

    caplog.set_level(logging.INFO, logger="stemd")
    url = f"http://127.0.0.1:{refused_port()}/cb"
    ended_job(ledger, "a.wav", url, 1)
    owner = Callbacks(ledger, tmp_path, SECRET, poll=0.1, retry_first=60)
    owner.start()
    wait_until(lambda: "trying again in 60s" in caplog.text, 10, "the first try")
    assert claimed_by() == ["node"]
    started = time.monotonic()
    owner.stop(grace=1)
    assert time.monotonic() - started < 5  # the retry an hour away is not waited for
    assert claimed_by() == [None]  # any host posts it now
    assert [d.url for d in ledger.due_callbacks()] == [url]
    assert "1 not delivered before stopping; sent after the next start" in caplog.text


def test_the_readmes_receiver_accepts_stemds_signature_and_refuses_a_replay() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (snippet,) = [
        block.split("\n", 1)[1]
        for block in readme.split("```")
        if block.startswith("python\n") and "def from_stemd" in block
    ]
    assert len(snippet.strip().splitlines()) == 6
    scope: dict[str, object] = {}
    exec(snippet, scope)  # the README's own code, run as a reader would
    from_stemd = scope["from_stemd"]
    assert callable(from_stemd)
    body = b'{"id": 7, "state": "done"}'
    headers = signed_headers(body, SECRET)
    assert from_stemd(body, headers, SECRET) is True
    assert from_stemd(body.replace(b"done", b"fail"), headers, SECRET) is False
    old = signed_headers(body, SECRET, now=time.time() - 3600)
    assert from_stemd(body, old, SECRET) is False


def test_a_configs_callback_url_follows_the_same_rule_without_dns() -> None:
    from pydantic import BaseModel, ValidationError

    from stemd.config import CallbackUrl

    class Rule(BaseModel):
        callback_url: CallbackUrl | None = None

    assert (
        Rule(callback_url="http://receiver.invalid/x").callback_url == "http://receiver.invalid/x"
    )
    for url, why in [
        ("http://[::ffff:169.254.169.254]/", "is 169.254.169.254"),
        ("gopher://x/", "not gopher://"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(why)):
            Rule(callback_url=url)


@pytest.mark.parametrize(
    ("timestamp", "signed"),
    [
        ("1700000000²", "sha256=00"),  # a Unicode digit isdigit() takes and int() does not
        ("١٧٠٠٠٠٠٠٠٠", "sha256=00"),  # Arabic-Indic digits: int() reads them
        ("", "sha256=00"),
        (" 1700000000", "sha256=00"),
        ("-1", "sha256=00"),
        ("1" * 13, "sha256=00"),
        ("1700000000", "sha256=é"),  # compare_digest raises on non-ASCII str
        ("1700000000", "sha256=\udcff"),
    ],
)
def test_verify_says_false_and_never_raises_on_a_malformed_header(
    timestamp: str, signed: str
) -> None:
    body = b'{"id": 7}'
    assert verify(body, timestamp, signed, SECRET, now=1700000000.0) is False


def test_verify_still_takes_the_right_signature_given_as_it_is_sent() -> None:
    body = b'{"id": 7}'
    headers = signed_headers(body, SECRET, now=1700000000)
    assert verify(
        body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER], SECRET, now=1700000000
    )


def test_verify_says_false_for_a_missing_header() -> None:
    assert verify(b"{}", None, "sha256=00", SECRET) is False  # type: ignore[arg-type]
    assert verify(b"{}", "1700000000", None, SECRET) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("[64:ff9b::169.254.169.254]", "64:ff9b::a9fe:a9fe is 169.254.169.254, and"),  # NAT64
        ("[64:ff9b::a9fe:a9fe]", "is 169.254.169.254, and 169.254.169.254 is link-local"),
        ("[64:ff9b:1::a9fe:a9fe]", "is 169.254.169.254"),  # NAT64, the local-use prefix
        ("[64:ff9b::6464:64c8]", "is 100.100.100.200, and 100.100.100.200 is a cloud metadata"),
        ("[::169.254.169.254]", "::a9fe:a9fe is 169.254.169.254"),  # IPv4-compatible
        ("[::a9fe:a9fe]", "is 169.254.169.254, and 169.254.169.254 is link-local"),
        # Teredo: the client's IPv4 address is the last 32 bits, inverted
        ("[2001:0:4136:e378:8000:63bf:5601:5601]", "is 169.254.169.254, and"),
    ],
)
def test_the_metadata_address_inside_nat64_ipv4_compatible_and_teredo_is_refused(
    host: str, why: str
) -> None:
    with pytest.raises(CallbackRefused) as refused:
        check_callback_url(f"http://{host}/latest/meta-data", resolve=None)
    assert why in str(refused.value)
    address = host.strip("[]")
    with pytest.raises(CallbackRefused, match="resolves to"):
        check_callback_url("http://meta.test/x", resolve=resolver(address))
    with pytest.raises(CallbackRefused):
        vetted_addresses("meta.test", 80, resolver(address))


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::c000:201]",  # NAT64 of 192.0.2.1
        "[::1]",  # loopback, not an IPv4-compatible 0.0.0.1
        "[2001:0:4136:e378:8000:63bf:3ffd:fdfe]",  # Teredo of 192.2.2.1
        "[2001:db8::a9fe:a9fe]",  # the same last 32 bits, outside those prefixes
    ],
)
def test_nat64_ipv4_compatible_and_teredo_of_allowed_addresses_are_allowed(host: str) -> None:
    url = f"http://{host}/hook"
    assert check_callback_url(url, resolve=None) == url


# -- a try has one deadline, whatever the receiver does ----------------------------


class Dripping:
    """Takes each connection, reads the request, then answers `answer` one byte
    every `every` seconds (a receiver that holds a sender by never going quiet
    for a whole socket timeout), for `lasts` seconds at most."""

    def __init__(self, answer: bytes, every: float = 0.2, lasts: float = 8.0) -> None:
        self.answer, self.every, self.lasts = answer, every, lasts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    ends = time.monotonic() + self.lasts
                    for byte in self.answer:
                        if self._stop.wait(self.every) or time.monotonic() > ends:
                            break
                        conn.sendall(bytes([byte]))

    def __enter__(self) -> Dripping:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()


# a status line that never ends, and one that is followed by headers that never end
ENDLESS_STATUS = b"HTTP/1.1 200 OK" + b" " * 1000
ENDLESS_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 1000


def test_a_receiver_dripping_its_status_line_costs_one_timeout_not_hours() -> None:
    with Dripping(ENDLESS_STATUS) as dripping:
        started = time.monotonic()
        with pytest.raises(NotDelivered, match=r"no answer within 1s"):
            post(f"http://127.0.0.1:{dripping.port}/x", b"{}", {}, 1.0)
        took = time.monotonic() - started
    assert took < 1.8, took  # the try's one deadline, not a timeout per byte


def test_only_the_status_line_is_read_headers_dripped_after_it_do_not_hold_the_sender() -> None:
    with Dripping(ENDLESS_HEADERS, every=0.01) as dripping:
        started = time.monotonic()
        assert post(f"http://127.0.0.1:{dripping.port}/x", b"{}", {}, 1.0) == 200
        took = time.monotonic() - started
    assert took < 1.0, took


def test_connecting_to_several_addresses_that_never_accept_costs_one_timeout() -> None:
    # a listener whose backlog is full: the kernel drops further SYNs, connect hangs
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            started = time.monotonic()
            with pytest.raises(NotDelivered, match=r"no answer within 1s"):
                post(
                    f"http://many.test:{port}/x", b"{}", {}, 1.0,
                    resolve=resolver("127.0.0.1,127.0.0.1,127.0.0.1"),
                )  # fmt: skip
            took = time.monotonic() - started
    assert took < 1.8, took  # not 3 s: one per address


class Redirecting:
    """A receiver that answers 302 to `target`, and records the paths it was asked."""

    def __init__(self, target: str) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.paths.append(self.path)
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Redirecting:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def test_a_redirect_is_not_followed_it_is_a_failed_try() -> None:
    with Receiver() as target, Redirecting(f"http://127.0.0.1:{target.port}/moved") as moved:
        with pytest.raises(NotDelivered, match="answered HTTP 302") as err:
            post(f"http://127.0.0.1:{moved.port}/hook", b"{}", {}, 2.0)
        assert not err.value.final  # tried again later, like any other status
        assert moved.paths == ["/hook"]
        assert target.received == []  # nothing reached the redirect's target


def test_a_dripping_receiver_holds_its_sender_one_timeout_then_the_next_is_delivered(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemd")
    with Dripping(ENDLESS_STATUS) as dripping, Receiver() as receiver:
        ended_job(ledger, "slow.wav", f"http://127.0.0.1:{dripping.port}/slow", 1)
        ended_job(ledger, "next.wav", f"http://127.0.0.1:{receiver.port}/next", 2)
        # one sender: the dripping receiver is tried first, and holds it
        owner = Callbacks(
            ledger, tmp_path, SECRET, senders=1, timeout=1.0, poll=0.2, retry_first=60
        )
        started = time.monotonic()
        owner.start()
        try:
            receiver.wait_for("/next", 1, 4)
            took = time.monotonic() - started
        finally:
            owner.stop(grace=1)
    assert took < 3, took
    assert dripping.connections == 1
    (slow,) = [m for m in caplog.messages if "(slow.wav)" in m]
    assert "no answer within 1s (try 1 of 10" in slow, slow


# -- one callback that fails oddly stops only itself ----------------------------------


def test_a_job_whose_body_cannot_be_made_is_given_up_and_the_next_is_still_delivered(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemd")
    # parameters no stemd writes (a ledger edited by hand, or some other version):
    # the job's JSON cannot be made (stems that are not a list: TypeError)
    odd = ended_job(
        ledger,
        "odd.wav",
        "http://127.0.0.1:1/odd",
        1,
        profile=Profile("o", {"model": "m", "stems": 7}, "m"),
    )
    with Receiver() as receiver:
        owner = Callbacks(ledger, tmp_path, SECRET, senders=1, poll=0.2)
        owner.start()
        try:
            wait_until(lambda: "(odd.wav)" in caplog.text, 10, "the odd callback's line")
            ended_job(ledger, "next.wav", f"http://127.0.0.1:{receiver.port}/next", 2)
            owner.wake()
            (got,) = receiver.wait_for("/next", 1, 10)
            threads = {t.name: t.is_alive() for t in [owner._dispatcher, *owner._senders]}
        finally:
            owner.stop(grace=1)
    assert json.loads(got.raw)["state"] == "done"
    assert threads == {"stemd-callbacks": True, "stemd-callback-1": True}
    (line,) = [m for m in caplog.messages if "(odd.wav)" in m]
    assert f"callback for job {odd} (odd.wav)" in line and "TypeError" in line, line
    assert line.endswith("given up"), line
    assert ledger.due_callbacks() == []  # given up: not claimed again at every look


def test_a_send_that_fails_unexpectedly_is_given_up_and_the_sender_lives_on(
    ledger: Ledger,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stemd.callbacks.delivery as delivery

    real_post = delivery.post

    def post_or_break(url: str, *args: object, **kwargs: object) -> int:
        if url.endswith("/boom"):
            raise RuntimeError("a bug in the sender")
        return real_post(url, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "post", post_or_break)
    caplog.set_level(logging.INFO, logger="stemd")
    with Receiver() as receiver:
        ended_job(ledger, "boom.wav", f"http://127.0.0.1:{receiver.port}/boom", 1)
        ended_job(ledger, "next.wav", f"http://127.0.0.1:{receiver.port}/next", 2)
        owner = Callbacks(ledger, tmp_path, SECRET, senders=1, poll=0.2, retry_first=0.2)
        owner.start()
        try:
            receiver.wait_for("/next", 1, 10)
            wait_until(lambda: ledger.due_callbacks() == [], 10, "both marked posted")
            alive = owner._senders[0].is_alive()
        finally:
            owner.stop(grace=1)
        assert receiver.at("/boom") == []
    assert alive
    (line,) = [m for m in caplog.messages if "(boom.wav)" in m]
    assert "RuntimeError: a bug in the sender (try 1" in line and line.endswith("given up"), line


# -- stop stays bounded when the ledger does not answer ------------------------------


def claimed_by(ledger: Ledger) -> list[str | None]:
    with sqlite3.connect(ledger.path) as db:
        return [row[0] for row in db.execute("SELECT callback_claim FROM inputs ORDER BY id")]


def test_stopping_with_the_ledger_down_asks_it_once_and_leaves_the_claims_for_the_next_start(
    ledger: Ledger,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="stemd")
    url = f"http://127.0.0.1:{refused_port()}/cb"
    for n in range(5):
        ended_job(ledger, f"{n}.wav", url, n + 1)
    owner = Callbacks(ledger, tmp_path, SECRET, poll=0.1, retry_first=60)
    owner.start()
    wait_until(lambda: caplog.text.count("trying again in 60s") == 5, 10, "the first tries")
    asked: list[int] = []

    def down(due: DueCallback) -> None:
        asked.append(due.input_id)
        raise LedgerUnavailable("the test's ledger is down")

    monkeypatch.setattr(ledger, "release_callback", down)
    owner.stop(grace=0.5)
    assert len(asked) == 1  # one call that fails, not one per callback (each a timeout)
    assert claimed_by(ledger) == ["node"] * 5
    assert "5 not delivered before stopping stay claimed here" in caplog.text
    # which is no loss: this node's own claims are due again after its restart
    assert [d.input_id for d in ledger.due_callbacks()] == [1, 2, 3, 4, 5]


def test_stopping_while_the_dispatcher_is_stuck_in_the_ledger_leaves_the_ledger_alone(
    ledger: Ledger,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="stemd")
    ended_job(ledger, "a.wav", f"http://127.0.0.1:{refused_port()}/cb", 1)
    owner = Callbacks(ledger, tmp_path, SECRET, poll=0.1, retry_first=60)
    owner.start()
    wait_until(lambda: "trying again in 60s" in caplog.text, 10, "the first try")
    real_due = ledger.due_callbacks
    stuck, gate = threading.Event(), threading.Event()
    used_by_stop: list[str] = []

    def slow_due(*args: object, **kwargs: object) -> list[DueCallback]:
        stuck.set()
        gate.wait(30)  # a ledger that takes its time (a connect timeout, a lock)
        return real_due(*args, **kwargs)  # type: ignore[arg-type]

    def noted(name: str) -> object:
        real = getattr(ledger, name)

        def call(*args: object, **kwargs: object) -> object:
            if threading.current_thread() is threading.main_thread():
                used_by_stop.append(name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(ledger, "due_callbacks", slow_due)
    for name in ("release_callback", "finish_callback"):
        monkeypatch.setattr(ledger, name, noted(name))
    try:
        assert stuck.wait(5)
        started = time.monotonic()
        owner.stop(grace=0.2)
        took = time.monotonic() - started
    finally:
        gate.set()
        owner._dispatcher.join(10)
    assert took < 3, took
    assert used_by_stop == []  # not the dispatcher's connection, from another thread
    assert claimed_by(ledger) == ["node"]  # due again after the next start
    assert "the ledger is still busy with the callbacks thread" in caplog.text


def test_an_interim_100_continue_is_skipped_for_the_final_status() -> None:
    answer = b"HTTP/1.1 100 Continue\r\nX-A: b\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    with Dripping(answer, every=0.001) as dripping:
        assert post(f"http://127.0.0.1:{dripping.port}/x", b"{}", {}, 2.0) == 204
    endless = Dripping(b"HTTP/1.1 102 Processing\r\n\r\n" * 400, every=0.0)
    with endless, pytest.raises(NotDelivered, match="no final status within 8192 bytes"):
        post(f"http://127.0.0.1:{endless.port}/x", b"{}", {}, 2.0)
