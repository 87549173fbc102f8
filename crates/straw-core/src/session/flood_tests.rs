//! Hostile peers: frames that cost no credit must not fill our queues.

use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::codec::{CodecId, RecordDecoder};
use crate::wire::{FrameDecoder, OpenFrame};

/// A stored record of `frames`.
pub(super) fn record(frames: impl IntoIterator<Item = Frame>) -> Vec<u8> {
    let mut rec = vec![CodecId::Stored as u8];
    for f in frames {
        f.encode(&mut rec);
    }
    rec
}

fn server(max_streams: usize) -> (Session, Instant) {
    let now = Instant::now();
    let mut cfg = SessionConfig::new(Role::Server);
    cfg.max_streams = max_streams;
    (Session::new(cfg, now), now)
}

pub(super) fn open(stream: u64) -> Frame {
    Frame::Open(OpenFrame {
        stream,
        service: Bytes::from_static(b"imap"),
        meta: Bytes::new(),
    })
}

/// Everything the session transmits now, decoded to frames.
pub(super) fn transmitted(s: &mut Session, now: Instant) -> Vec<Frame> {
    let cfg = s.config().clone();
    let mut dec = RecordDecoder::with_bulk(&cfg.decoder_limits, &cfg.bulk_decoder_limits);
    let mut frames = Vec::new();
    let mut out = Vec::new();
    while let Some(rec) = s.poll_transmit(now) {
        dec.decode(&rec, &mut out).unwrap();
        for f in FrameDecoder::new(Bytes::from(out.clone())) {
            frames.push(f.unwrap());
        }
    }
    frames
}

fn is_flood(res: Result<(), SessionError>, kind: FloodKind) -> bool {
    matches!(res, Err(SessionError::Flood { what, .. }) if what == kind)
}

#[test]
fn a_record_of_100k_pings_is_a_flood() {
    let (mut s, now) = server(1024);
    let rec = record((0..100_000).map(|_| Frame::Ping { stamp: 1 }));
    assert!(rec.len() <= s.config().decoder_limits.max_record_bytes);
    let res = s.handle_record(now, &rec);
    assert!(is_flood(res, FloodKind::FreeFrames));
}

#[test]
fn pings_across_records_queue_one_pong_with_the_newest_stamp() {
    let (mut s, now) = server(1024);
    let mut stamp = 0;
    for _ in 0..50 {
        let rec = record((0..1000).map(|_| {
            stamp += 1;
            Frame::Ping { stamp }
        }));
        s.handle_record(now, &rec).unwrap();
    }
    let pongs: Vec<u64> = transmitted(&mut s, now)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Pong { stamp } => Some(stamp),
            _ => None,
        })
        .collect();
    assert_eq!(pongs, vec![50_000]);
    // Answered: the next PING gets its own PONG.
    s.handle_record(now, &record([Frame::Ping { stamp: 7 }]))
        .unwrap();
    let frames = transmitted(&mut s, now);
    assert!(frames.contains(&Frame::Pong { stamp: 7 }), "{frames:?}");
}

#[test]
fn opens_past_max_streams_queue_bounded_resets() {
    // A legitimate peer past our limit: refused, no error.
    let (mut s, now) = server(4);
    s.handle_record(now, &record((0..10).map(|i| open(2 * i + 1))))
        .unwrap();
    assert_eq!(s.stream_count(), 4);
    let resets = transmitted(&mut s, now)
        .into_iter()
        .filter(|f| {
            matches!(
                f,
                Frame::Reset {
                    code: reset_code::REFUSED,
                    ..
                }
            )
        })
        .count();
    assert_eq!(resets, 6);

    // 10,000 in one record: too many frames for one record.
    let (mut s, now) = server(4);
    let res = s.handle_record(now, &record((0..10_000).map(|i| open(2 * i + 1))));
    assert!(is_flood(res, FloodKind::Refusals));
    // OPENs that are accepted then reset, as many as a record can hold.
    let (mut s, now) = server(4);
    let churn = (0..10_000u64).flat_map(|i| {
        [
            open(2 * i + 1),
            Frame::Reset {
                stream: 2 * i + 1,
                code: 0,
            },
        ]
    });
    let res = s.handle_record(now, &record(churn));
    assert!(is_flood(res, FloodKind::FreeFrames));
    assert!(s.events.len() <= s.config().max_free_frames_per_record());

    // The same spread over records read before anything is sent: the queue
    // of RESETs is capped.
    let (mut s, now) = server(4);
    let cap = s.config().max_queued_refusals();
    let mut res = Ok(());
    let mut next = 1;
    for _ in 0..100 {
        res = s.handle_record(
            now,
            &record((0..100).map(|_| {
                next += 2;
                open(next)
            })),
        );
        if res.is_err() {
            break;
        }
    }
    assert!(is_flood(res, FloodKind::Refusals));
    assert!(s.control.len() <= cap + 4, "{}", s.control.len());
}

#[test]
fn empty_data_frames_make_no_events_and_80k_are_a_flood() {
    let (mut s, now) = server(1024);
    s.handle_record(now, &record([open(1)])).unwrap();
    assert!(matches!(
        s.poll_event(),
        Some(Event::Opened { stream: 1, .. })
    ));
    let empty = || Frame::Data {
        stream: 1,
        flags: 0,
        payload: Bytes::new(),
    };
    s.handle_record(
        now,
        &record((0..MAX_EMPTY_DATA_PER_RECORD).map(|_| empty())),
    )
    .unwrap();
    assert_eq!(s.poll_event(), None);
    let res = s.handle_record(now, &record((0..80_000).map(|_| empty())));
    assert!(is_flood(res, FloodKind::EmptyData));
    assert_eq!(s.events.len(), 0);
}

#[test]
fn our_own_busiest_control_record_fits_the_budget() {
    // A client with every stream open, each then finished and reset, sends
    // all that control (with its ACK and PING) in one go; the server takes it.
    let now = Instant::now();
    let mut client = Session::new(SessionConfig::new(Role::Client), now);
    let (mut server, _) = server(1024);
    let ids: Vec<u64> = (0..1024)
        .map(|_| {
            client
                .open_stream(b"imap", b"", Priority::Interactive)
                .unwrap()
        })
        .collect();
    for &id in &ids {
        client.finish(id);
        client.reset(id, reset_code::ABORTED);
    }
    client.schedule_ping(now);
    let mut records = 0;
    while let Some(rec) = client.poll_transmit(now) {
        server.handle_record(now, &rec).unwrap();
        records += 1;
    }
    assert!(records >= 1);
    assert!(5 * 1024 <= server.config().max_free_frames_per_record());
}
