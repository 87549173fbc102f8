"""fetchmail (a real mail fetcher) over POP3 and IMAP against Dovecot (or straw client).

fetchmail runs with a temporary HOME and a 0600 rcfile, `--keep --all` (leave
mail on the server, fetch seen messages too), `--fetchlimit 3` (small: the
straw path may be a 2,400 bit/s link) and no TLS (`sslproto ''`: the peers'
plain ports offer STARTTLS, which fetchmail would otherwise try). Each message
goes to an MDA that writes it to a file.

What fetchmail changes: nothing in the message with `--invisible` (without it,
it prepends a `Received:` header), but it hands the MDA LF line endings
(`stripcr` is the default for MDA delivery). So every delivered file must
equal a seeded Maildir file with CRLF -> LF.
"""

import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from straw_e2e import IMAP, PASSWORD, POP3, TIMEOUT, USER_A, expected_from_corpus, manifest

FETCH = 3
# fetchmail exit codes: 0 = mail fetched, 13 = fetchlimit reached (mail left).
OK_CODES = (0, 13)


@unittest.skipUnless(shutil.which("fetchmail"), "fetchmail not installed (scripts/e2e installs it)")
class FetchmailTest(unittest.TestCase):
    def fetch(self, proto: str, host: str, port: int) -> list[bytes]:
        home = Path(tempfile.mkdtemp(prefix="straw-fetchmail-"))
        self.addCleanup(shutil.rmtree, home, True)
        out = home / "out"
        out.mkdir()
        rc = home / ".fetchmailrc"
        rc.write_text(
            f'poll {host} protocol {proto} port {port} user "{USER_A}" password "{PASSWORD}"'
            " sslproto '' no sslcertck\n"
        )
        rc.chmod(0o600)  # fetchmail refuses a readable rcfile holding passwords
        cmd = [
            "fetchmail", "-f", str(rc), "--keep", "--all", "--invisible",
            "--fetchlimit", str(FETCH), "--timeout", str(int(TIMEOUT)),
            "--nosyslog", "-i", str(home / ".fetchids"),
            "--mda", f"cat > {out}/msg.$$",
        ]
        env = dict(os.environ, HOME=str(home))
        p = subprocess.run(cmd, env=env, capture_output=True, timeout=TIMEOUT * 3)
        self.assertIn(p.returncode, OK_CODES, f"fetchmail failed: {p.stderr.decode(errors='replace')}")
        return [f.read_bytes() for f in sorted(out.iterdir())]

    def check(self, got: list[bytes]):
        seeded = manifest(USER_A)[:FETCH]
        want = []
        for s in seeded:
            disk = s.maildir_bytes()
            self.assertEqual(disk, expected_from_corpus(s.corpus_file.read_bytes()))
            want.append(disk.replace(b"\r\n", b"\n"))
        # File names are MDA process ids, not message order: compare as sets.
        self.assertEqual(len(got), FETCH)
        self.assertEqual(sorted(got), sorted(want))

    def test_pop3(self):
        self.check(self.fetch("pop3", *POP3))

    def test_imap(self):
        self.check(self.fetch("imap", *IMAP))


if __name__ == "__main__":
    unittest.main()
