//! Helpers the protocol tests share (never the tests of one protocol
//! imported by another's).

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
