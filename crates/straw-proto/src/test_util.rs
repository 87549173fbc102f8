//! Helpers the protocol tests share (never the tests of one protocol
//! imported by another's).

use crate::{Accelerator, Output};

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

/// The plumbing of a back-to-back rig, run synchronously: program ↔ client
/// accelerator ⇄ (tunnel) ⇄ server accelerator ↔ a fake real server.
pub(crate) trait BackToBack {
    fn client(&mut self) -> &mut dyn Accelerator;
    fn server(&mut self) -> &mut dyn Accelerator;
    /// What the fake real server greets with.
    fn greeting(&self) -> Vec<u8>;
    /// Carries `c_out` (the client side's output) and `s2c` (bytes on their
    /// way to the client side) around until nothing moves.
    fn settle(&mut self, c_out: Output, s2c: Vec<u8>);
    /// Everything the program has received so far.
    fn program_saw(&self) -> &[u8];
    /// Where the failures and cache writes reported so far are kept.
    fn reports(&mut self) -> (&mut Vec<String>, &mut Vec<(String, Vec<u8>)>);

    /// Starts both sides; the real server greets.
    fn start(&mut self) {
        let mut o = Output::default();
        self.client().start(&mut o);
        self.settle(o, Vec::new());
        let mut o = Output::default();
        self.server().start(&mut o);
        let greeting = self.greeting();
        self.server().from_local(&greeting, true, &mut o);
        self.meta(&mut o);
        self.settle(Output::default(), std::mem::take(&mut o.to_tunnel));
    }

    /// Keeps `o`'s failure and cache writes.
    fn meta(&mut self, o: &mut Output) {
        let (fails, puts) = self.reports();
        fails.extend(o.fail.take());
        puts.append(&mut o.cache_put);
    }

    /// The program sends `data`; returns what it receives until nothing moves.
    fn send(&mut self, data: &[u8]) -> Vec<u8> {
        let before = self.program_saw().len();
        let mut o = Output::default();
        self.client().from_local(data, true, &mut o);
        self.settle(o, Vec::new());
        self.program_saw()[before..].to_vec()
    }
}
