//! What several protocols share: the line reader and dot-terminator scanner
//! ([`lines`]), the queue of replies owed to the program ([`owed`]), and the
//! shape of the runtime's short dialogues ([`dialogue`]).

pub(crate) mod dialogue;
pub(crate) mod lines;
pub(crate) mod owed;
