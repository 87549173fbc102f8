//! Shared dictionaries: the same bytes primed into both peers' contexts.
//!
//! A dictionary is `'static` and referenced, never copied, by every context
//! that uses it: a built-in one lives in the binary, so a thousand tunnels
//! hold its bytes once. Which one a tunnel uses is agreed by `id` in the
//! handshake; the codec itself cannot tell two dictionaries apart.

use std::fmt;

use super::CodecError;

/// The first bytes of a dictionary made by zstd's trainer (ZDICT).
const ZDICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];

/// How the dictionary's bytes are given to zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DictKind {
    /// Raw sample text the stream is imagined to start after (zstd's
    /// `refPrefix`): matches only, no entropy tables. Referenced, not copied.
    Prefix,
    /// A ZDICT-trained dictionary (content plus entropy tables). zstd copies
    /// it into each context, so it costs its size per tunnel.
    Trained,
}

/// An immutable dictionary shared by all contexts of the process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dictionary {
    id: u32,
    kind: DictKind,
    bytes: &'static [u8],
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Dictionary {
    /// A raw-content prefix dictionary.
    pub const fn prefix(id: u32, bytes: &'static [u8]) -> Self {
        Self {
            id,
            kind: DictKind::Prefix,
            bytes,
        }
    }

    /// A ZDICT-trained dictionary; checks its magic.
    pub fn trained(id: u32, bytes: &'static [u8]) -> Result<Self, CodecError> {
        if !bytes.starts_with(&ZDICT_MAGIC) {
            return Err(CodecError::Params(format!(
                "dictionary {id} is not a trained zstd dictionary"
            )));
        }
        Ok(Self {
            id,
            kind: DictKind::Trained,
            bytes,
        })
    }

    /// A dictionary loaded at run time (from a file, in tests): its bytes are
    /// leaked on purpose, since contexts reference them for the whole process.
    pub fn leak(id: u32, kind: DictKind, bytes: Vec<u8>) -> Result<Self, CodecError> {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        match kind {
            DictKind::Prefix => Ok(Self::prefix(id, bytes)),
            DictKind::Trained => Self::trained(id, bytes),
        }
    }

    /// The built-in dictionary with this id, if this binary has it.
    pub fn builtin(id: u32) -> Option<Self> {
        (id == MAIL_V1.id).then_some(MAIL_V1)
    }

    /// Ids of all built-in dictionaries, for the handshake's capabilities.
    pub fn builtin_ids() -> &'static [u32] {
        &[MAIL_V1_ID]
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn kind(&self) -> DictKind {
        self.kind
    }

    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }
}

/// Id of the built-in mail dictionary (`dicts/mail-v1.prefix`, made by
/// `scripts/train-dicts` from easy-ham-1 and spam-1 only).
pub const MAIL_V1_ID: u32 = 1;

/// The built-in mail dictionary.
pub const MAIL_V1: Dictionary = Dictionary::prefix(
    MAIL_V1_ID,
    include_bytes!("../../../../dicts/mail-v1.prefix"),
);
