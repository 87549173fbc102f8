"""curl (a second, independent client implementation) for POP3, IMAP, SMTP, HTTP."""

import os
import shutil
import subprocess
import tempfile
import unittest

from straw_e2e import (
    DOMAIN,
    HTTP,
    IMAP,
    PASSWORD,
    PEERS,
    POP3,
    SMTP,
    TIMEOUT,
    USER_A,
    USER_B,
    corpus_message,
    lf_to_crlf,
    manifest,
    strip_mta_headers,
    wait_for_delivery,
)

CURL = shutil.which("curl") or "curl"  # scripts/e2e installs it; missing curl fails loudly


def hp(ep) -> str:
    return f"{ep[0]}:{ep[1]}"


class CurlTest(unittest.TestCase):
    def curl(self, *args: str, upload: bytes | None = None) -> bytes:
        cmd = [CURL, "--silent", "--show-error", "--fail", "--max-time", str(int(TIMEOUT)), *args]
        res = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT + 5, input=upload)
        self.assertEqual(res.returncode, 0, f"{cmd}: {res.stderr.decode(errors='replace')}")
        return res.stdout

    def test_pop3_list_and_retr(self):
        seeded = manifest(USER_A)
        url = f"pop3://{USER_A}:{PASSWORD}@{hp(POP3)}/"
        listing = self.curl(url)
        self.assertEqual(listing, b"".join(b"%d %d\r\n" % (i, s.size) for i, s in enumerate(seeded, 1)))
        for i in (1, 4, 30):  # 4 has a dot-stuffed line
            with self.subTest(msg=i):
                self.assertEqual(self.curl(url + str(i)), seeded[i - 1].maildir_bytes())

    def test_imap_fetch_by_uid(self):
        seeded = manifest(USER_A)
        for uid in (2, 9, 23):
            with self.subTest(uid=uid):
                got = self.curl(f"imap://{USER_A}:{PASSWORD}@{hp(IMAP)}/INBOX;UID={uid}")
                self.assertEqual(got, seeded[uid - 1].maildir_bytes())

    def test_smtp_upload(self):
        msg, msgid = corpus_message("00046")
        with tempfile.NamedTemporaryFile(suffix=".eml", delete=False) as f:
            f.write(lf_to_crlf(msg))
        self.addCleanup(os.unlink, f.name)
        sender = f"curl@{DOMAIN}"
        self.curl(
            f"smtp://{hp(SMTP)}",
            "--mail-from", sender,
            "--mail-rcpt", f"{USER_B}@{DOMAIN}",
            "--upload-file", f.name,
        )
        rest, added = strip_mta_headers(wait_for_delivery(USER_B, msgid).read_bytes())
        self.assertEqual(rest, msg)
        self.assertEqual(added[b"Return-Path"], f"<{sender}>".encode())

    def test_http_files_byte_exact(self):
        for name in ("page.html", "big.txt", "random.bin"):
            with self.subTest(file=name):
                want = (PEERS / "www" / name).read_bytes()
                self.assertEqual(self.curl(f"http://{hp(HTTP)}/{name}"), want)

    def test_http_sizes_and_missing(self):
        sizes = {n: (PEERS / "www" / n).stat().st_size for n in ("page.html", "big.txt", "random.bin")}
        self.assertEqual(sizes, {"page.html": 6144, "big.txt": 204800, "random.bin": 102400})
        head = self.curl("--head", f"http://{hp(HTTP)}/big.txt")
        self.assertIn(b"Content-Length: 204800\r\n", head)
        res = subprocess.run(
            [CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{hp(HTTP)}/nope"],
            capture_output=True, timeout=TIMEOUT,
        )
        self.assertEqual(res.stdout, b"404")


if __name__ == "__main__":
    unittest.main()
