"""HTTP forward proxy through straw (curl -x). Runs only when STRAW_E2E_PROXY
(host:port of a straw `http` service) is set, i.e. under scripts/e2e-straw."""

import os
import subprocess
import unittest

from straw_e2e import HTTP, PEERS, TIMEOUT

PROXY = os.environ.get("STRAW_E2E_PROXY")


@unittest.skipUnless(PROXY, "STRAW_E2E_PROXY not set (only meaningful through straw)")
class ProxyTest(unittest.TestCase):
    def curl(self, url, *extra):
        return subprocess.run(
            ["curl", "-sS", "--max-time", str(TIMEOUT), "-x", f"http://{PROXY}", *extra, url],
            capture_output=True,
            check=True,
        ).stdout

    def test_files_byte_exact_through_proxy(self):
        host, port = HTTP
        for name in ["page.html", "big.txt", "random.bin"]:
            with self.subTest(name=name):
                got = self.curl(f"http://{host}:{port}/{name}")
                self.assertEqual(got, (PEERS / "www" / name).read_bytes())

    def test_gzip_from_origin_arrives_plain(self):
        host, port = HTTP
        # The server side asks the origin for gzip and decodes it before the tunnel.
        got = self.curl(f"http://{host}:{port}/big.txt", "--compressed")
        self.assertEqual(got, (PEERS / "www" / "big.txt").read_bytes())

    def test_blocked_host_gets_local_403(self):
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(TIMEOUT),
             "-x", f"http://{PROXY}", "http://updates.blocked.test/x"],
            capture_output=True,
        ).stdout
        self.assertEqual(out, b"403")


if __name__ == "__main__":
    unittest.main()
