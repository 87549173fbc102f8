"""Shared helpers for the end-to-end tests (not a test module itself).

Endpoints come from the environment as host:port, so the same tests can run
against the peer servers directly or through `straw client`:
  STRAW_E2E_POP3 (127.0.0.1:10110)  STRAW_E2E_IMAP (127.0.0.1:10143)
  STRAW_E2E_SMTP (127.0.0.1:10025)  STRAW_E2E_HTTP (127.0.0.1:10080)
  STRAW_E2E_TIMEOUT seconds per network operation (30)
  STRAW_STATE   state folder written by scripts/peers (<repo>/.state)

Byte-exactness: scripts/peers seeds Maildir files with CRLF line endings
(Dovecot serves CRLF files unchanged), so what POP3/IMAP deliver must equal
the Maildir file exactly, and the Maildir file must equal the corpus file
minus its mbox "From " line with LF -> CRLF (see expected_from_corpus).
"""

import glob
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("STRAW_STATE", REPO / ".state"))
PEERS = STATE / "peers"
TIMEOUT = float(os.environ.get("STRAW_E2E_TIMEOUT", "30"))

USER_A = "alice"
USER_B = "bob"
PASSWORD = "straw-pass"
DOMAIN = "straw.test"
UIDVALIDITY = 1700000000  # fixed by scripts/lib/peers_seed.py


def endpoint(proto: str, default_port: int) -> tuple[str, int]:
    val = os.environ.get(f"STRAW_E2E_{proto.upper()}", f"127.0.0.1:{default_port}")
    host, _, port = val.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"STRAW_E2E_{proto.upper()}={val!r}: expected host:port")
    return host, int(port)


POP3 = endpoint("pop3", 10110)
IMAP = endpoint("imap", 10143)
SMTP = endpoint("smtp", 10025)
HTTP = endpoint("http", 10080)


@dataclass
class Seeded:
    user: str
    uid: int
    base: str  # Maildir base name (flags suffix ":2,..." may change)
    dir: Path
    corpus_file: Path
    size: int
    sha256: str

    def maildir_path(self) -> Path:
        hits = glob.glob(str(self.dir / glob.escape(self.base)) + ":2,*")
        if len(hits) != 1:
            raise AssertionError(f"expected one Maildir file for {self.base}, found {hits}")
        return Path(hits[0])

    def maildir_bytes(self) -> bytes:
        return self.maildir_path().read_bytes()


def manifest(user: str) -> list[Seeded]:
    path = PEERS / "manifest.tsv"
    if not path.exists():
        raise AssertionError(f"{path} missing: run scripts/peers up first")
    rows = []
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[0] == "user", "unexpected manifest header"
    for line in lines[1:]:
        u, uid, base, d, corpus, size, sha = line.split("\t")
        if u == user:
            rows.append(Seeded(u, int(uid), base, PEERS / d, Path(corpus), int(size), sha))
    rows.sort(key=lambda r: r.uid)
    return rows


def expected_from_corpus(raw: bytes) -> bytes:
    """Corpus file -> bytes a POP3/IMAP client must receive (and Maildir file)."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    return raw.replace(b"\n", b"\r\n")


def header_block(msg: bytes) -> bytes:
    """Header section including the empty line that ends it."""
    i = msg.find(b"\r\n\r\n")
    assert i >= 0, "message has no header/body separator"
    return msg[: i + 4]


def header_value(msg: bytes, name: str) -> bytes | None:
    """Unfolded value of the first header `name` (case-insensitive)."""
    m = re.search(
        rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*(.*(?:\r?\n[ \t].*)*)",
        header_block(msg) if b"\r\n\r\n" in msg else msg,
    )
    if not m:
        return None
    return re.sub(rb"\r?\n[ \t]+", b" ", m.group(1)).strip()


def corpus_message(name_prefix: str) -> tuple[bytes, bytes]:
    """A corpus message from the seed set (LF endings, mbox From line removed),
    with its Message-ID replaced by a fresh unique one. Returns (msg, msgid)."""
    seeded = manifest(USER_A)
    set_dir = seeded[0].corpus_file.parent
    hits = sorted(set_dir.glob(name_prefix + ".*.txt"))
    assert hits, f"no corpus file {name_prefix} in {set_dir}"
    raw = hits[0].read_bytes()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    head, sep, body = raw.partition(b"\n\n")
    # Drop the original Message-ID (with any folded continuation lines).
    head = re.sub(rb"(?im)^message-id:.*(?:\n[ \t].*)*\n?", b"", head + b"\n").rstrip(b"\n")
    msgid = f"<straw-e2e-{uuid.uuid4().hex}@{DOMAIN}>".encode()
    return b"Message-ID: " + msgid + b"\n" + head + sep + body, msgid


def lf_to_crlf(b: bytes) -> bytes:
    return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wait_for_delivery(user: str, msgid: bytes, timeout: float = TIMEOUT, header: bytes = b"Message-ID") -> Path:
    """Poll the user's Maildir (new/ and cur/) for a file with this Message-ID
    (or this value of another `header`)."""
    md = PEERS / "mail" / user / "Maildir"
    deadline = time.monotonic() + timeout
    needle = b"\n" + header + b": " + msgid + b"\n"
    while True:
        for sub in ("new", "cur"):
            for p in (md / sub).iterdir():
                try:
                    if needle in p.read_bytes():
                        return p
                except FileNotFoundError:  # renamed new/ -> cur/ meanwhile
                    pass
        if time.monotonic() > deadline:
            raise AssertionError(f"message {msgid!r} not delivered to {md} within {timeout}s")
        time.sleep(0.1)


# OpenSMTPD's maildir delivery prepends exactly these headers, in this order;
# everything after them must be the submitted message with CRLF -> LF.
ADDED_BY_MTA = (b"Return-Path", b"Delivered-To", b"Received")


def strip_mta_headers(delivered: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    rest = delivered
    added = {}
    for name in ADDED_BY_MTA:
        m = re.match(re.escape(name) + rb": (.*(?:\n[ \t].*)*)\n", rest)
        if not m:
            raise AssertionError(f"delivered message does not start with {name!r}: {rest[:200]!r}")
        added[name] = m.group(1)
        rest = rest[m.end():]
    return rest, added
