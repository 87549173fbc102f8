//! Primed models: each parameter set is primed once per process and shared
//! read-only; a context copies it on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::model::Model;
use super::params::CmParams;
use super::priming::{
    DIALOGUE_V1, PRIMING_DIALOGUE_V1, PRIMING_MAIL_V2, builtin_static, priming_text,
};
use crate::codec::CodecError;

type Cache = Mutex<HashMap<CmParams, Arc<OnceLock<Arc<Model>>>>>;

/// The part of a priming text a context of `table_log` learns: small tables
/// hold little of 1 MiB, so they learn the tails of its two halves (ham and
/// spam in the built-in text), 4 bytes per table byte, at a quarter of the
/// CPU or less.
fn priming_part(text: &[u8], table_log: u8) -> Vec<u8> {
    let n = (1usize << (table_log as u32 + 2).min(40)) / 2;
    if 2 * n >= text.len() {
        return text.to_vec();
    }
    let mid = text.len() / 2;
    [&text[mid - n..mid], &text[text.len() - n..]].concat()
}

/// The model for `p`, primed once per process and shared read-only.
pub(super) fn primed(p: &CmParams) -> Result<Arc<Model>, CodecError> {
    p.validate()?;
    if matches!(p.priming, Some(PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1))
        && builtin_static().is_none()
    {
        // Never silently model without it: the peer's model would differ.
        return Err(CodecError::Internal(
            "built-in cm static text does not decode".into(),
        ));
    }
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cell = {
        let mut map = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(*p).or_default().clone()
    };
    Ok(cell
        .get_or_init(|| {
            let mut m = Model::new(p);
            if let Some(text) = p.priming.and_then(priming_text) {
                m.learn(&priming_part(&text, p.table_log));
            }
            if p.priming == Some(PRIMING_DIALOGUE_V1) {
                // Whole and last: the freshest history, whatever the table.
                m.learn(DIALOGUE_V1);
            }
            Arc::new(m)
        })
        .clone())
}

/// A per-tunnel copy of the primed model, made on first use.
pub(super) struct Slot {
    params: CmParams,
    model: Option<Box<Model>>,
}

impl Slot {
    pub(super) fn new(params: CmParams) -> Result<Self, CodecError> {
        params.validate()?;
        Ok(Self {
            params,
            model: None,
        })
    }

    pub(super) fn get(&mut self) -> Result<&mut Model, CodecError> {
        match &mut self.model {
            Some(m) => Ok(m),
            slot => Ok(slot.insert(Box::new(Model::clone(&*primed(&self.params)?)))),
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.memory_bytes())
    }
}
