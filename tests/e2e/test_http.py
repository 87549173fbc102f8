"""HTTP with http.client: keep-alive, several requests on one connection, ranges."""

import http.client
import unittest

from straw_e2e import HTTP, PEERS, TIMEOUT


class HttpTest(unittest.TestCase):
    def setUp(self):
        self.conn = http.client.HTTPConnection(*HTTP, timeout=TIMEOUT)
        self.addCleanup(self.conn.close)

    def get(self, path: str, headers=None) -> http.client.HTTPResponse:
        self.conn.request("GET", path, headers=headers or {})
        return self.conn.getresponse()

    def test_keepalive_sequence_byte_exact(self):
        for name in ("page.html", "random.bin", "big.txt", "page.html"):
            with self.subTest(file=name):
                r = self.get("/" + name)
                self.assertEqual(r.status, 200)
                body = r.read()
                self.assertEqual(body, (PEERS / "www" / name).read_bytes())
                self.assertEqual(int(r.getheader("Content-Length")), len(body))

    def test_range(self):
        want = (PEERS / "www" / "random.bin").read_bytes()
        r = self.get("/random.bin", {"Range": "bytes=1000-1999"})
        self.assertEqual(r.status, 206)
        self.assertEqual(r.read(), want[1000:2000])

    def test_not_found(self):
        r = self.get("/missing.txt")
        r.read()
        self.assertEqual(r.status, 404)


if __name__ == "__main__":
    unittest.main()
