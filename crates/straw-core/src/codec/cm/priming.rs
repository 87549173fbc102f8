//! Priming texts: what a context learns before its first record, built in
//! or registered at run time, and the static match text that goes with each.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::static_match::StaticText;

/// Id of the built-in priming text `dicts/mail-cm-v1.zst`.
pub const PRIMING_MAIL_V1: u32 = 1;

/// The same priming text plus the static match text
/// `dicts/mail-static-v1.zst` (the static match model).
pub const PRIMING_MAIL_V2: u32 = 2;

/// `PRIMING_MAIL_V2`, then the protocol dialogue `dicts/dialogue-v1.txt`
/// (IMAP/POP3/SMTP replies and commands, HTTP headers of common servers and
/// clients): for the interactive lanes, which carry the dialogue.
pub const PRIMING_DIALOGUE_V1: u32 = 3;

pub(super) static DIALOGUE_V1: &[u8] = include_bytes!("../../../../../dicts/dialogue-v1.txt");

static PRIMING_MAIL_V1_ZST: &[u8] = include_bytes!("../../../../../dicts/mail-cm-v1.zst");
static STATIC_MAIL_V1_ZST: &[u8] = include_bytes!("../../../../../dicts/mail-static-v1.zst");

/// A registered priming text and its static match text, if any.
type Registered = (&'static [u8], Option<&'static StaticText>);

fn registered() -> &'static Mutex<HashMap<u32, Registered>> {
    static R: OnceLock<Mutex<HashMap<u32, Registered>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

pub(super) fn priming_known(id: u32) -> bool {
    id == PRIMING_MAIL_V1
        || id == PRIMING_MAIL_V2
        || id == PRIMING_DIALOGUE_V1
        || registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
}

/// A priming text by id: built in, or registered at run time (the
/// dialogue of `PRIMING_DIALOGUE_V1` is learned after it, see `primed`).
pub fn priming_text(id: u32) -> Option<Vec<u8>> {
    if matches!(id, PRIMING_MAIL_V1 | PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1) {
        return ::zstd::decode_all(PRIMING_MAIL_V1_ZST).ok();
    }
    let map = registered().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&id).map(|t| t.0.to_vec())
}

/// Makes `text` a priming text for this process (benches, experiments) and
/// returns its id. Its bytes are kept for the life of the process.
pub fn register_priming_text(text: Vec<u8>) -> u32 {
    register(text, None)
}

/// Like [`register_priming_text`], with a static match text (indexed now,
/// kept for the life of the process).
pub fn register_priming_with_static(text: Vec<u8>, static_text: Vec<u8>) -> u32 {
    let st: &'static StaticText = Box::leak(Box::new(StaticText::new(static_text)));
    register(text, Some(st))
}

fn register(text: Vec<u8>, st: Option<&'static StaticText>) -> u32 {
    let mut map = registered().lock().unwrap_or_else(|e| e.into_inner());
    let id = 0x8000_0000 + map.len() as u32;
    map.insert(id, (Box::leak(text.into_boxed_slice()), st));
    id
}

static BUILTIN_STATIC: OnceLock<Option<StaticText>> = OnceLock::new();

/// The built-in static match text, decompressed and indexed once per process.
pub(super) fn builtin_static() -> Option<&'static StaticText> {
    BUILTIN_STATIC
        .get_or_init(|| {
            ::zstd::decode_all(STATIC_MAIL_V1_ZST)
                .ok()
                .map(StaticText::new)
        })
        .as_ref()
}

/// The static match text that goes with a priming id, if any.
pub(super) fn static_for(priming: Option<u32>) -> Option<&'static StaticText> {
    match priming? {
        PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1 => builtin_static(),
        PRIMING_MAIL_V1 => None,
        id => registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(|t| t.1),
    }
}

/// Bytes of the static match texts built so far in this process (text plus
/// index), shared by all tunnels.
pub fn shared_static_bytes() -> usize {
    let mut n = BUILTIN_STATIC
        .get()
        .and_then(Option::as_ref)
        .map_or(0, |s| s.memory_bytes());
    let map = registered().lock().unwrap_or_else(|e| e.into_inner());
    n += map
        .values()
        .filter_map(|t| t.1)
        .map(|s| s.memory_bytes())
        .sum::<usize>();
    n
}
