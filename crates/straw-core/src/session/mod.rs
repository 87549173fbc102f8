//! Sessions: see mod docs.
