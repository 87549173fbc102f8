//! Streaming decoder: re-encodes base64 chunks byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{
    ContentClass, ESC, FLAG_LF, MAX_CHUNK_DECODE, MAX_LINE, T_B64, T_LIT, TAG_RANGE, TransformError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// After ESC.
    Esc,
    /// After `ESC T_B64`: flags, then the varints L and D.
    Flags,
    LineLen,
    DataLen,
    /// Inside the D data bytes of a chunk.
    Data,
    Failed,
}

/// Receiver side of the transform. Memory is bounded by one line.
pub struct Decoder {
    state: State,
    varint: u64,
    shift: u32,
    lf: bool,
    class: ContentClass,
    line_len: usize,
    remaining: u64,
    /// Decoded bytes of the line being rebuilt (at most `MAX_LINE / 4 * 3`).
    pub(super) line: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            state: State::Text,
            varint: 0,
            shift: 0,
            lf: false,
            class: ContentClass::Unknown,
            line_len: 0,
            remaining: 0,
            line: Vec::new(),
        }
    }

    /// Between items: the input so far decodes completely.
    pub fn is_clean(&self) -> bool {
        self.state == State::Text
    }

    /// Content class of the last chunk seen.
    pub fn last_class(&self) -> ContentClass {
        self.class
    }

    /// The stream ends here: an unfinished item is an error.
    pub fn finish(&self) -> Result<(), TransformError> {
        match self.state {
            State::Text => Ok(()),
            State::Failed => Err(TransformError::Poisoned),
            _ => Err(TransformError::Truncated),
        }
    }

    /// Decodes `input`, appending to `out`. After an error every later call
    /// fails too.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        if self.state == State::Failed {
            return Err(TransformError::Poisoned);
        }
        let r = self.push_inner(input, out);
        if r.is_err() {
            self.state = State::Failed;
            self.line = Vec::new();
        }
        r
    }

    fn push_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Text => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == ESC) {
                        Some(p) => {
                            out.extend_from_slice(&rest[..p]);
                            self.state = State::Esc;
                            i += p + 1;
                        }
                        None => {
                            out.extend_from_slice(rest);
                            i = input.len();
                        }
                    }
                }
                State::Esc => {
                    let b = input[i];
                    if b == T_LIT {
                        out.push(ESC);
                        self.state = State::Text;
                        i += 1;
                    } else if b == T_B64 {
                        self.state = State::Flags;
                        i += 1;
                    } else if TAG_RANGE.contains(&b) {
                        return Err(TransformError::UnknownTag(b));
                    } else {
                        // A literal ESC; `b` is read as usual (it may be ESC).
                        out.push(ESC);
                        self.state = State::Text;
                    }
                }
                State::Flags => {
                    let f = input[i];
                    i += 1;
                    let class = ContentClass::from_u8(f >> 4);
                    if f & 0x0e != 0 || class.is_none() {
                        return Err(TransformError::BadFlags(f));
                    }
                    self.lf = f & FLAG_LF != 0;
                    self.class = class.expect("checked");
                    self.varint = 0;
                    self.shift = 0;
                    self.state = State::LineLen;
                }
                State::LineLen | State::DataLen => {
                    let b = input[i];
                    i += 1;
                    if self.shift > 63 || (self.shift == 63 && b > 1) {
                        return Err(TransformError::BadVarint);
                    }
                    self.varint |= u64::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 != 0 {
                        continue;
                    }
                    let v = std::mem::take(&mut self.varint);
                    self.shift = 0;
                    if self.state == State::LineLen {
                        if !(4..=MAX_LINE as u64).contains(&v) || !v.is_multiple_of(4) {
                            return Err(TransformError::BadLineLength(v));
                        }
                        self.line_len = v as usize;
                        self.state = State::DataLen;
                    } else {
                        if v == 0 || v > MAX_CHUNK_DECODE {
                            return Err(TransformError::BadChunkLength(v));
                        }
                        self.remaining = v;
                        self.line.clear();
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let per_line = self.line_len / 4 * 3;
                    let want = (per_line - self.line.len()).min(self.remaining as usize);
                    let take = want.min(input.len() - i);
                    self.line.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.line.len() == per_line || self.remaining == 0 {
                        self.emit_line(out);
                    }
                    if self.remaining == 0 {
                        self.state = State::Text;
                    }
                }
                State::Failed => return Err(TransformError::Poisoned),
            }
        }
        Ok(())
    }

    fn emit_line(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.line.len().div_ceil(3) * 4, 0);
        let n = STANDARD
            .encode_slice(&self.line, &mut out[start..])
            .expect("sized above");
        out.truncate(start + n);
        out.extend_from_slice(if self.lf { b"\n" } else { b"\r\n" });
        self.line.clear();
    }
}
