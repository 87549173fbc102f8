#!/usr/bin/env python3
"""Seed the peer servers' data: Maildirs for alice/bob, a manifest, the www folder.

Called by scripts/peers on every `up`; it resets everything to a known state.

Maildir files are written with CRLF line endings: Dovecot serves LF files
converted to CRLF, but serves CRLF files unchanged, so with CRLF on disk a
message fetched over POP3/IMAP is byte-identical to its Maildir file.
"""

import argparse
import hashlib
import os
import random
import shutil
import sys

UIDVALIDITY = 1700000000  # fixed, so IMAP UIDs and POP3 UIDLs are stable
BASE_TIME = 1000000000  # Maildir name prefix and mtime (= IMAP INTERNALDATE)
SEED_SET = "easy-ham-2"  # held out from training: tests and benches measure on unseen mail
USERS = [("alice", 14, 44), ("bob", 44, 54)]  # slices of the sorted set; alice's last has a dot line

WWW_TEXT_SET = "easy-ham-2"  # filler text for the web pages

# Appended as the LAST message of bob's mailbox (earlier UIDs unchanged): a
# ~300 KB mail with a real binary attachment, for the link-cut tests.
ATTACH_USER = "bob"
ATTACH_CANDIDATES = [
    "/usr/share/doc/nodejs/contributing/doc_img/scatter-plot.png",
    "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
    "/usr/share/doc/valgrind/html/images/dh-tree.png",
]


# Text attachments after the picture: Debian always ships them.
ATTACH_TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GPL-2"]


def attachment_sources() -> list:
    """A real PNG/PDF of 150-260 KB from the machine plus the licence texts:
    the mail is ~300 KB with base64."""
    texts = [p for p in ATTACH_TEXTS if os.path.isfile(p)]
    for p in ATTACH_CANDIDATES:
        if os.path.isfile(p) and 150_000 <= os.path.getsize(p) <= 260_000:
            return [p] + texts
    for root in ("/usr/share/doc", "/usr/share"):
        for d, _, names in sorted(os.walk(root)):
            for n in sorted(names):
                p = os.path.join(d, n)
                if n.endswith((".png", ".pdf")) and 150_000 <= os.path.getsize(p) <= 260_000:
                    return [p] + texts
    sys.exit("peers_seed: no PNG or PDF of 150-260 KB under /usr/share")


def attachment_message(paths: list) -> bytes:
    """A MIME mail (CRLF) carrying `paths` base64-encoded, fixed headers."""
    import base64
    head = (
        "From: Alice Example <alice@example.org>\r\n"
        "To: bob@example.org\r\n"
        "Subject: the plot you asked for\r\n"
        "Date: Mon, 09 Sep 2002 10:00:00 +0000\r\n"
        "Message-ID: <attachment.1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="straw-boundary"\r\n'
        "\r\n"
        "--straw-boundary\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Here it is.\r\n\r\n"
    )
    parts = []
    for path in paths:
        with open(path, "rb") as f:
            blob = f.read()
        name = os.path.basename(path)
        ctype = ("application/pdf" if name.endswith(".pdf") else
                 "image/png" if name.endswith(".png") else "text/plain; charset=us-ascii")
        b64 = base64.encodebytes(blob).decode().replace("\n", "\r\n")
        parts.append(
            "--straw-boundary\r\n"
            f'Content-Type: {ctype}; name="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
            + b64
        )
    return (head + "".join(parts) + "--straw-boundary--\r\n").encode()


def maildir_bytes(raw: bytes) -> bytes:
    """Corpus file -> Maildir file: drop the mbox 'From ' line, LF -> CRLF."""
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if raw and not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


def write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def seed_mail(corpus: str, peers: str) -> None:
    set_dir = os.path.join(corpus, SEED_SET)
    files = sorted(n for n in os.listdir(set_dir) if n.endswith(".txt"))
    need = max(end for _, _, end in USERS)
    if len(files) < need:
        sys.exit(f"peers_seed: {set_dir} has {len(files)} messages, need {need}")
    rows = []
    for user, start, end in USERS:
        home = os.path.join(peers, "mail", user)
        md = os.path.join(home, "Maildir")
        if os.path.exists(md):
            shutil.rmtree(md)  # also drops Dovecot's index/uidlist: fresh state
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub))
        uidlist = [f"3 V{UIDVALIDITY} N{end - start + 1}\n"]
        for uid, name in enumerate(files[start:end], 1):
            src = os.path.join(set_dir, name)
            with open(src, "rb") as f:
                data = maildir_bytes(f.read())
            t = BASE_TIME + uid
            base = f"{t}.M{uid}P0.straw"
            dst = os.path.join(md, "cur", base + ":2,")
            write_atomic(dst, data)
            os.utime(dst, (t, t))
            uidlist.append(f"{uid} :{base}\n")
            rows.append((user, uid, base, f"mail/{user}/Maildir/cur", src, len(data),
                         hashlib.sha256(data).hexdigest()))
        if user == ATTACH_USER:
            srcs = attachment_sources()
            data = attachment_message(srcs)
            src = "+".join(srcs)
            uid = end - start + 1
            t = BASE_TIME + uid
            base = f"{t}.M{uid}P0.straw"
            dst = os.path.join(md, "cur", base + ":2,")
            write_atomic(dst, data)
            os.utime(dst, (t, t))
            uidlist[0] = f"3 V{UIDVALIDITY} N{uid + 1}\n"
            uidlist.append(f"{uid} :{base}\n")
            rows.append((user, uid, base, f"mail/{user}/Maildir/cur", src, len(data),
                         hashlib.sha256(data).hexdigest()))
        write_atomic(os.path.join(md, "dovecot-uidlist"), "".join(uidlist).encode())
    header = "user\tuid\tbase\tdir\tcorpus_file\tsize\tsha256\n"
    body = "".join("\t".join(str(c) for c in r) + "\n" for r in rows)
    write_atomic(os.path.join(peers, "manifest.tsv"), (header + body).encode())


def text_filler(corpus: str, size: int) -> bytes:
    """Real mail text (deterministic) for realistic compressibility."""
    set_dir = os.path.join(corpus, WWW_TEXT_SET)
    out = bytearray()
    for name in sorted(n for n in os.listdir(set_dir) if n.endswith(".txt")):
        with open(os.path.join(set_dir, name), "rb") as f:
            out += f.read()
        if len(out) >= size:
            break
    return bytes(out[:size])


def seed_www(corpus: str, peers: str) -> None:
    www = os.path.join(peers, "www")
    os.makedirs(www, exist_ok=True)
    head = b"<!DOCTYPE html>\n<html><head><title>straw test page</title></head>\n<body><pre>\n"
    tail = b"\n</pre></body></html>\n"
    filler = text_filler(corpus, 6144 - len(head) - len(tail))
    filler = filler.replace(b"&", b"+").replace(b"<", b"(").replace(b">", b")")
    files = {
        "page.html": head + filler + tail,  # 6 KiB
        "big.txt": text_filler(corpus, 200 * 1024),
        "random.bin": random.Random(2400).randbytes(100 * 1024),
    }
    for name, data in files.items():
        path = os.path.join(www, name)
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except FileNotFoundError:
            pass
        write_atomic(path, data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True, help="corpus data folder")
    ap.add_argument("--peers", required=True, help="$STRAW_STATE/peers")
    a = ap.parse_args()
    seed_mail(a.corpus, a.peers)
    seed_www(a.corpus, a.peers)


if __name__ == "__main__":
    main()
