//! The runtime's short dialogues with a real server (STARTTLS for POP3, IMAP
//! and SMTP) and with a client accelerator (the cache warm-ups), fed what a
//! hostile or broken server could send, in the chunks the fuzzer picks.
//!
//! Besides "no panic": the machine ends (Done or an error) or asks to read
//! within a bounded number of steps per input chunk (no loop that sends
//! forever), and what it sends in all is bounded by a constant (its own
//! commands), whatever the server says.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw_proto::{imap, pop3, smtp, Dialogue, Step};

/// Steps one chunk may cause: a reply can release the next command, which
/// may already be answered by bytes read with it.
const STEPS_PER_CHUNK: usize = 16;
/// All commands any of these dialogues sends, with room to spare.
const MAX_SENT: usize = 4096;

fn drive(mut d: Box<dyn Dialogue>, data: &[u8]) {
    let mut sent = 0usize;
    let mut chunks = data.chunks(1 + data.first().copied().unwrap_or(7) as usize % 64);
    let mut step = match d.step(&[]) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut steps = 0usize;
    loop {
        steps += 1;
        assert!(
            steps <= STEPS_PER_CHUNK * (data.len() + 2),
            "dialogue does not end"
        );
        let next = match step {
            Step::Send(bytes) => {
                sent += bytes.len();
                assert!(sent <= MAX_SENT, "dialogue sent {sent} bytes");
                d.step(&[])
            }
            Step::Read => match chunks.next() {
                Some(c) => d.step(c),
                None => d.closed(),
            },
            Step::StartTls => d.tls_established(),
            Step::Done(replay) => {
                // The replay is what the server sent: never more than that
                // plus a synthesised greeting.
                assert!(replay.len() <= data.len() + 1024);
                return;
            }
        };
        step = match next {
            Ok(s) => s,
            Err(_) => return,
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let d: Box<dyn Dialogue> = match pick % 6 {
        0 => Box::new(pop3::StartTls::new()),
        1 => Box::new(imap::StartTls::new()),
        2 => Box::new(smtp::StartTls::new("boat.example")),
        3 => Box::new(pop3::WarmUp::new()),
        4 => Box::new(imap::WarmUp::new()),
        _ => Box::new(smtp::WarmUp::new()),
    };
    drive(d, rest);
});
