//! Every protocol accelerator, on both sides, driven as the state machine it
//! is: the fuzzer's bytes become a script of calls (`from_local`,
//! `from_tunnel`, `local_eof`, `link_lost`) with byte chunks, as a hostile
//! program, peer or real server could produce them.
//!
//! Bounds checked after every call, besides "no panic":
//! - output: what the accelerator emits (to the tunnel and to the local
//!   socket) is at most 4× what it was given plus 64 KiB (cached greetings,
//!   error replies and stub messages are the constant);
//! - memory: the heap the accelerator holds (counted by a wrapping global
//!   allocator) is at most 4× the input so far plus 1 MiB.
#![no_main]
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use straw_proto::{Accelerator, Cache, Output, http, imap, pop3, smtp};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn accelerator(pick: u8) -> Box<dyn Accelerator> {
    let cache = Cache::new();
    match pick % 8 {
        0 => Box::new(pop3::ClientAccel::new(pop3::Pop3Config::default(), &cache)),
        1 => Box::new(pop3::ServerAccel::new()),
        2 => Box::new(smtp::ClientAccel::new(&cache)),
        3 => Box::new(smtp::ServerAccel::new()),
        4 => Box::new(imap::ClientAccel::new(&cache)),
        5 => Box::new(imap::ServerAccel::new(imap::ImapConfig::default())),
        6 => Box::new(http::ClientAccel::new(http::HttpPolicy::default())),
        _ => Box::new(http::ServerAccel::new(http::HttpPolicy::default())),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut script)) = data.split_first() else {
        return;
    };
    let base = LIVE.load(Ordering::Relaxed);
    let mut accel = accelerator(pick);
    let mut out = Output::default();
    accel.start(&mut out);
    let mut input = 0usize;
    let mut output = out.to_tunnel.len() + out.to_local.len();
    // Each step: an op byte (low 2 bits: which call; the rest: chunk length / 4).
    while let Some((&op, rest)) = script.split_first() {
        let n = ((op >> 2) as usize * 4 + 1).min(rest.len());
        let (chunk, rest) = rest.split_at(n);
        script = rest;
        out.clear();
        match op & 3 {
            0 => accel.from_local(chunk, true, &mut out),
            1 => accel.from_tunnel(chunk, &mut out),
            2 => accel.local_eof(&mut out),
            _ => accel.link_lost(&mut out),
        }
        input += 1 + chunk.len();
        output += out.to_tunnel.len() + out.to_local.len();
        assert!(
            output <= 4 * input + 64 * 1024,
            "accelerator {pick}: {output} B out for {input} B in"
        );
        drop(std::mem::take(&mut out));
        let held = LIVE.load(Ordering::Relaxed).saturating_sub(base);
        assert!(
            held <= 4 * input + (1 << 20),
            "accelerator {pick}: holds {held} B after {input} B in"
        );
    }
});
