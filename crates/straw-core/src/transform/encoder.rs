//! Streaming encoder: finds base64 runs line by line.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{
    ContentClass, ESC, FLAG_LF, MAX_CHUNK, MAX_LINE, MIN_LINE, MIN_RUN_LINES, T_B64, T_LIT,
    TAG_RANGE, is_b64,
};
use crate::wire::put_varint;

/// Where the current (incomplete) line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Only base64 characters so far.
    Chars,
    /// Then one or two `=`.
    Pad(u8),
    /// Then CR: only LF may follow.
    Cr,
}

/// A complete line that is canonical base64.
struct Shape<'a> {
    decoded: &'a [u8],
    padded: bool,
}

struct Run {
    len: usize,
    lf: bool,
    class: ContentClass,
}

/// Sender side of the transform. See the module docs for the format.
#[derive(Default)]
pub struct Encoder {
    /// The current line while it may still be base64 (CR included).
    line: Vec<u8>,
    line_state: Option<LineState>,
    /// The current line is text: pass bytes through up to its LF.
    text_line: bool,
    /// The last byte emitted is a literal ESC whose meaning depends on the
    /// next byte.
    pending_esc: bool,
    /// Complete lines that may start a run (raw, with line endings).
    cand: Vec<u8>,
    cand_lines: usize,
    cand_len: usize,
    cand_lf: bool,
    run: Option<Run>,
    /// Decoded bytes of the run not yet emitted (whole lines).
    chunk: Vec<u8>,
    /// A chunk of an already-compressed class is emitted once it would
    /// pass this many decoded bytes (0: [`MAX_CHUNK`]); see
    /// [`Encoder::set_chunk_limit`].
    chunk_limit: usize,
    /// Decoded bytes emitted so far in chunks of an already-compressed
    /// class (JPEG, PNG, ...): what no codec will shrink.
    opaque_emitted: u64,
    /// Where in its `out` the first such chunk since the last
    /// [`Encoder::take_opaque_start`] began.
    opaque_start: Option<usize>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held back (an incomplete line, a line that may start a run,
    /// decoded run bytes of an unfinished chunk) plus whether a flush would
    /// emit anything: at most [`MAX_HELD`](super::MAX_HELD).
    pub fn held(&self) -> usize {
        self.held_lines() + self.chunk.len() + self.pending_esc as usize
    }

    /// Input lines held back: the open line and candidate lines
    /// (≤ `MIN_RUN_LINES × (MAX_LINE + 2)`), without the decoded chunk.
    pub fn held_lines(&self) -> usize {
        self.line.len() + self.cand.len()
    }

    /// Chunks of an already-compressed class ([`ContentClass::is_compressed`])
    /// of at most `n` decoded bytes from the next line on (clamped to
    /// 512..=[`MAX_CHUNK`]); text runs keep [`MAX_CHUNK`], their header is
    /// worth sparing. A bulk unit on a slow link is a couple of seconds of
    /// link time, far less than 4 KiB of a JPEG: a held chunk that big,
    /// released at once, made one unit 13 s long.
    pub fn set_chunk_limit(&mut self, n: usize) {
        self.chunk_limit = n.clamp(512, MAX_CHUNK);
    }

    fn chunk_limit(&self) -> usize {
        if self.chunk_limit == 0 {
            MAX_CHUNK
        } else {
            self.chunk_limit
        }
    }

    /// Decoded bytes emitted so far in chunks whose content is already
    /// compressed ([`ContentClass::is_compressed`]): on the wire they cost
    /// what they weigh, whatever the codec's ratio on text.
    pub fn opaque_emitted(&self) -> u64 {
        self.opaque_emitted
    }

    /// Where in `out` (as passed to the calls since the last time) the first
    /// chunk of an already-compressed class began: a sender may end a DATA
    /// frame there, so that the text before it isn't delivered only once
    /// the chunk has crossed the link too.
    pub fn take_opaque_start(&mut self) -> Option<usize> {
        self.opaque_start.take()
    }

    /// Encodes `input`, appending to `out`. Holds back only what may still
    /// become part of a run, and a run's decoded bytes until a chunk is full
    /// (a chunk per read cost ~8% on the wire: headers, and the codec's units
    /// sized from a worse-looking ratio).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.text_line {
                // Pass the rest of a text line through in one go.
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.literal(&rest[..=i], out);
                        self.text_line = false;
                        rest = &rest[i + 1..];
                    }
                    None => {
                        self.literal(rest, out);
                        rest = &[];
                    }
                }
                continue;
            }
            let b = rest[0];
            rest = &rest[1..];
            if b == b'\n' {
                self.complete_line(out);
                continue;
            }
            let state = self.line_state.unwrap_or(LineState::Chars);
            let next = match (state, b) {
                (LineState::Chars, b) if is_b64(b) => Some(LineState::Chars),
                (LineState::Chars, b'=') => Some(LineState::Pad(1)),
                (LineState::Pad(1), b'=') => Some(LineState::Pad(2)),
                (LineState::Chars | LineState::Pad(_), b'\r') => Some(LineState::Cr),
                _ => None,
            };
            match next {
                Some(s) if self.line.len() < MAX_LINE + 1 => {
                    self.line.push(b);
                    self.line_state = Some(s);
                }
                _ => {
                    // Not base64: the line, and whatever waited for it, is text.
                    self.end_run(out);
                    self.cand_to_text(out);
                    let line = std::mem::take(&mut self.line);
                    self.literal(&line, out);
                    self.line = line;
                    self.line.clear();
                    self.line_state = None;
                    self.literal(&[b], out);
                    self.text_line = true;
                }
            }
        }
    }

    /// Emits the decoded bytes gathered for the current chunk; the run goes
    /// on. For callers whose output must stay about as long as their input.
    pub fn cut(&mut self, out: &mut Vec<u8>) {
        self.emit_chunk(out);
    }

    /// Emits everything held back: the protocol needs an answer now or the
    /// stream ends. A run continues across a flush at a line boundary.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.emit_chunk(out);
        self.cand_to_text(out);
        if !self.line.is_empty() {
            // The rest of this line arrives later and must be text too.
            self.run = None;
            let line = std::mem::take(&mut self.line);
            self.literal(&line, out);
            self.line = line;
            self.line.clear();
            self.line_state = None;
            self.text_line = true;
        }
        if self.pending_esc {
            out.push(T_LIT);
            self.pending_esc = false;
        }
    }

    /// Appends text bytes, resolving a literal ESC by the byte after it.
    fn literal(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if self.pending_esc {
                self.pending_esc = false;
                if TAG_RANGE.contains(&b) {
                    out.push(T_LIT);
                }
            }
            out.push(b);
            self.pending_esc = b == ESC;
        }
    }

    fn complete_line(&mut self, out: &mut Vec<u8>) {
        let state = self.line_state.take().unwrap_or(LineState::Chars);
        let mut line = std::mem::take(&mut self.line);
        let lf = state != LineState::Cr;
        line.extend_from_slice(b"\n");
        let chars = &line[..line.len() - if lf { 1 } else { 2 }];
        let len = chars.len();
        let padded = matches!(state, LineState::Pad(_))
            || (state == LineState::Cr && chars.last() == Some(&b'='));
        let mut decoded = [0u8; MAX_LINE / 4 * 3];
        let dlen = if len > 0 && len <= MAX_LINE && len.is_multiple_of(4) {
            canonical_decode(chars, &mut decoded)
        } else {
            None
        };
        let shape = dlen.map(|n| Shape {
            decoded: &decoded[..n],
            padded,
        });
        self.place_line(&line, len, lf, shape, out);
        line.clear();
        self.line = line;
    }

    /// Decides where a complete line goes; `shape` is set if it is canonical
    /// base64.
    fn place_line(
        &mut self,
        line: &[u8],
        len: usize,
        lf: bool,
        shape: Option<Shape<'_>>,
        out: &mut Vec<u8>,
    ) {
        if let Some(run) = &self.run {
            let run_len = run.len;
            let limit = if run.class.is_compressed() {
                self.chunk_limit()
            } else {
                MAX_CHUNK
            };
            if let Some(sh) = &shape
                && run.lf == lf
                && len <= run_len
            {
                if self.chunk.len() + sh.decoded.len() > limit {
                    self.emit_chunk(out);
                }
                self.chunk.extend_from_slice(sh.decoded);
                if sh.padded || len < run_len {
                    // A short or padded line closes the run.
                    self.emit_chunk(out);
                    self.run = None;
                }
                return;
            }
            self.end_run(out);
        }
        let Some(sh) = shape else {
            self.cand_to_text(out);
            self.literal(line, out);
            return;
        };
        let full = !sh.padded && len >= MIN_LINE;
        let same = self.cand_lines > 0 && self.cand_lf == lf;
        if same
            && (sh.padded || len < self.cand_len)
            && len <= self.cand_len
            && self.cand_lines + 1 >= MIN_RUN_LINES
        {
            // A short run: full lines and a last one.
            self.start_run_from_cand();
            self.chunk.extend_from_slice(sh.decoded);
            self.emit_chunk(out);
            self.run = None;
        } else if full {
            if !(same && self.cand_len == len) {
                self.cand_to_text(out);
            }
            self.cand.extend_from_slice(line);
            self.cand_lines += 1;
            self.cand_len = len;
            self.cand_lf = lf;
            if self.cand_lines >= MIN_RUN_LINES {
                self.start_run_from_cand();
            }
        } else {
            self.cand_to_text(out);
            self.literal(line, out);
        }
    }

    /// The candidate lines become a run (their chunk is emitted by the caller).
    fn start_run_from_cand(&mut self) {
        let eol = if self.cand_lf { 1 } else { 2 };
        let mut decoded = [0u8; MAX_LINE / 4 * 3];
        for l in self.cand.chunks(self.cand_len + eol) {
            let n = canonical_decode(&l[..self.cand_len], &mut decoded).expect("checked");
            self.chunk.extend_from_slice(&decoded[..n]);
        }
        self.run = Some(Run {
            len: self.cand_len,
            lf: self.cand_lf,
            class: ContentClass::sniff(&self.chunk),
        });
        self.cand.clear();
        self.cand_lines = 0;
    }

    fn cand_to_text(&mut self, out: &mut Vec<u8>) {
        if self.cand_lines > 0 {
            let cand = std::mem::take(&mut self.cand);
            self.literal(&cand, out);
            self.cand = cand;
            self.cand.clear();
            self.cand_lines = 0;
        }
    }

    fn end_run(&mut self, out: &mut Vec<u8>) {
        self.emit_chunk(out);
        self.run = None;
    }

    fn emit_chunk(&mut self, out: &mut Vec<u8>) {
        let Some(run) = &self.run else { return };
        if self.chunk.is_empty() {
            return;
        }
        if run.class.is_compressed() {
            self.opaque_emitted += self.chunk.len() as u64;
            self.opaque_start.get_or_insert(out.len());
        }
        // A pending literal ESC followed by ESC stays literal: no T_LIT needed.
        self.pending_esc = false;
        out.push(ESC);
        out.push(T_B64);
        out.push(if run.lf { FLAG_LF } else { 0 } | (run.class as u8) << 4);
        put_varint(out, run.len as u64);
        put_varint(out, self.chunk.len() as u64);
        out.extend_from_slice(&self.chunk);
        self.chunk.clear();
    }
}

/// Decodes `chars` if re-encoding the result gives exactly `chars` back.
fn canonical_decode(chars: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = STANDARD.decode_slice(chars, out).ok()?;
    let mut check = [0u8; MAX_LINE];
    let m = STANDARD.encode_slice(&out[..n], &mut check).ok()?;
    (check[..m] == *chars).then_some(n)
}
