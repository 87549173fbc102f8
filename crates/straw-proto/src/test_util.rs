//! Helpers the protocol tests share (never the tests of one protocol
//! imported by another's).

use crate::{Accelerator, Cache, Output};

/// Asserts `got == want`, showing both as text when they differ.
#[track_caller]
pub(crate) fn assert_text(got: &[u8], want: &[u8]) {
    if got != want {
        panic!(
            "bytes differ\n got: {:?}\nwant: {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want)
        );
    }
}

/// Asserts that `got` ends with `tail`, showing both as text when not.
#[track_caller]
pub(crate) fn assert_ends_with(got: &[u8], tail: &[u8]) {
    if !got.ends_with(tail) {
        panic!(
            "does not end as expected\n got: {:?}\ntail: {:?}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(tail)
        );
    }
}

/// The receiving end of a line-based fake server: bytes in, whole lines out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
}

impl Inbox {
    /// Takes `data`; true when more than one line now waits (the other end
    /// sent a command before the last was answered).
    pub fn push(&mut self, data: &[u8]) -> bool {
        self.buf.extend_from_slice(data);
        self.buf.iter().filter(|&&b| b == b'\n').count() > 1
    }

    /// The next whole line, terminator included.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        Some(self.buf.drain(..=end).collect())
    }
}

/// A scripted stand-in for the real server.
pub(crate) trait FakeServer {
    /// What it greets a new connection with.
    fn greeting(&self) -> &[u8];
    /// Takes bytes from the server-side accelerator; returns its replies.
    fn input(&mut self, data: &[u8]) -> Vec<u8>;
}

/// A back-to-back rig, run synchronously: program ↔ client accelerator `c`
/// ⇄ (tunnel) ⇄ server accelerator `s` ↔ the fake real server `real`.
pub(crate) struct Wired<C, S, R> {
    pub c: C,
    pub s: S,
    pub real: R,
    /// Everything the program has received.
    pub program_saw: Vec<u8>,
    /// Failures either side reported.
    pub fails: Vec<String>,
    /// Cache writes either side reported.
    pub puts: Vec<(String, Vec<u8>)>,
    /// The client side marked output bulk.
    pub client_bulk: bool,
    /// The server side marked output bulk.
    pub tunnel_bulk: bool,
    /// Bytes the client side sent into the stream.
    pub c2s_bytes: usize,
    /// The server side's bytes are lost on the way (a cut link).
    pub deaf: bool,
    /// The real server's replies reach the server side this many bytes at a time.
    pub server_chunk: usize,
}

impl<C: Accelerator, S: Accelerator, R: FakeServer> Wired<C, S, R> {
    /// Wires the three together and starts them; the real server greets.
    pub fn wire(c: C, s: S, real: R) -> Self {
        let mut r = Self {
            c,
            s,
            real,
            program_saw: Vec::new(),
            fails: Vec::new(),
            puts: Vec::new(),
            client_bulk: false,
            tunnel_bulk: false,
            c2s_bytes: 0,
            deaf: false,
            server_chunk: usize::MAX,
        };
        let mut o = Output::default();
        r.c.start(&mut o);
        r.settle(o, Vec::new());
        let mut o = Output::default();
        r.s.start(&mut o);
        r.s.from_local(r.real.greeting(), true, &mut o);
        r.meta(&mut o);
        r.settle(Output::default(), std::mem::take(&mut o.to_tunnel));
        r
    }

    /// Carries `c_out` (the client side's output) and `s2c` (bytes on their
    /// way to the client side) around until nothing moves.
    pub fn settle(&mut self, mut c_out: Output, mut s2c: Vec<u8>) {
        loop {
            self.client_bulk |= c_out.bulk;
            self.collect(&mut c_out);
            let c2s = std::mem::take(&mut c_out.to_tunnel);
            self.c2s_bytes += c2s.len();
            if !c2s.is_empty() {
                let mut o = Output::default();
                self.s.from_tunnel(&c2s, &mut o);
                self.serve(o, &mut s2c);
            }
            if s2c.is_empty() || self.deaf {
                return;
            }
            let d = std::mem::take(&mut s2c);
            self.c.from_tunnel(&d, &mut c_out);
        }
    }

    /// Server side output: to the real server, its replies back, repeat.
    pub fn serve(&mut self, mut o: Output, s2c: &mut Vec<u8>) {
        loop {
            self.meta(&mut o);
            self.tunnel_bulk |= o.bulk;
            s2c.append(&mut o.to_tunnel);
            if o.to_local.is_empty() {
                return;
            }
            let replies = self.real.input(&std::mem::take(&mut o.to_local));
            let mut n = Output::default();
            for piece in replies.chunks(self.server_chunk) {
                let mut m = Output::default();
                self.s.from_local(piece, true, &mut m);
                self.fails.extend(m.fail.take());
                n.to_tunnel.append(&mut m.to_tunnel);
                n.to_local.append(&mut m.to_local);
                n.bulk |= m.bulk;
                n.cache_put.append(&mut m.cache_put);
            }
            o = n;
        }
    }

    /// The program receives `o`'s bytes; keeps its failure and cache writes.
    pub fn collect(&mut self, o: &mut Output) {
        self.program_saw.append(&mut o.to_local);
        self.meta(o);
    }

    /// Keeps `o`'s failure and cache writes.
    pub fn meta(&mut self, o: &mut Output) {
        self.fails.extend(o.fail.take());
        self.puts.append(&mut o.cache_put);
    }

    /// The program sends `data`; returns what it receives until nothing moves.
    pub fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let before = self.program_saw.len();
        let mut o = Output::default();
        self.c.from_local(data, true, &mut o);
        self.settle(o, Vec::new());
        self.program_saw[before..].to_vec()
    }

    /// The cache as the next connection would find it.
    pub fn cache(&self) -> Cache {
        self.puts.iter().cloned().collect()
    }
}
