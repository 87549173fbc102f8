#!/usr/bin/env python3
"""Best case of the codecs straw does not use per record, on a corpus.

Each codec gets the whole concatenation in one stream with no flushes and
its strongest settings: a lower bound on what it would put on the wire as
a record codec (which must flush per message and fit 8 MiB per tunnel).
Compare with `straw bench codec --corpus DIR` (CM, flushed per message,
record overhead included). Needs `pip install brotli`.

    python3 bench/codec_lower_bounds.py DIR [DIR ...]
"""
import lzma
import os
import sys
import zlib

import brotli


def main():
    for d in sys.argv[1:]:
        msgs = [open(os.path.join(d, n), "rb").read()
                for n in sorted(os.listdir(d)) if n.endswith(".txt")]
        whole = b"".join(msgs)
        br = len(brotli.compress(whole, quality=11, lgwin=24))
        xz = lzma.LZMACompressor(format=lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 24}])
        lz = len(xz.compress(whole)) + len(xz.flush())
        de = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
        df = len(de.compress(whole)) + len(de.flush())
        print(f"{os.path.basename(d.rstrip('/'))}: raw {len(whole)}, brotli -q11 -w24 {br}, "
              f"LZMA2 -9e 16 MiB {lz}, deflate -9 {df} (whole corpus, no flushes)")


if __name__ == "__main__":
    main()
