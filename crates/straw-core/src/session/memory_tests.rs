//! The memory budget (issue 12, item 6): what a peer can make this side
//! hold is bounded by the receive credit granted, and that by
//! `recv_budget`; under memory pressure no credit and no streams are given.

use std::time::Instant;

use bytes::Bytes;

use super::flood_tests::{open, record, transmitted};
use super::*;

const WINDOW: u64 = 64 * 1024;

fn server(budget: u64) -> (Session, Instant) {
    let now = Instant::now();
    let mut cfg = SessionConfig::new(Role::Server);
    cfg.stream_window = WINDOW;
    cfg.recv_budget = budget;
    (Session::new(cfg, now), now)
}

fn data(stream: u64, n: usize) -> Frame {
    Frame::Data {
        stream,
        flags: 0,
        payload: Bytes::from(vec![b'x'; n]),
    }
}

fn opened(s: &mut Session) -> Vec<u64> {
    std::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            Event::Opened { stream, .. } => Some(stream),
            _ => None,
        })
        .collect()
}

fn credits(frames: &[Frame]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Credit { stream, limit } => Some((*stream, *limit)),
            _ => None,
        })
        .collect()
}

/// Before, 1,024 streams x the window could be granted to one peer behind
/// an upstream that reads nothing; now the grants fit the budget: the
/// streams past it are refused, and each stream's data stops at its window.
#[test]
fn grants_fit_the_tunnel_budget() {
    let budget = 4 * WINDOW;
    let (mut s, now) = server(budget);
    let ids: Vec<u64> = (0..10).map(|i| 2 * i + 1).collect();
    s.handle_record(now, &record(ids.iter().map(|&i| open(i))))
        .unwrap();
    let accepted = opened(&mut s);
    assert_eq!(accepted, ids[..4]);
    let refused: Vec<u64> = transmitted(&mut s, now)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Reset { stream, code } if code == reset_code::REFUSED => Some(stream),
            _ => None,
        })
        .collect();
    assert_eq!(refused, ids[4..]);
    // Every accepted stream filled to its window: all held, within budget.
    for &id in &accepted {
        s.handle_record(now, &record([data(id, WINDOW as usize)]))
            .unwrap();
    }
    assert!(s.recv_granted() <= budget);
    let held: usize = std::iter::from_fn(|| s.poll_event())
        .map(|e| match e {
            Event::Data { payload, .. } => payload.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(held as u64, budget);
    let over = s.handle_record(now, &record([data(accepted[0], 1)]));
    assert!(matches!(over, Err(SessionError::CreditExceeded { .. })));
}

/// Delivered bytes free their part of the budget: a closed stream's room
/// goes to the next one.
#[test]
fn a_finished_stream_makes_room() {
    let (mut s, now) = server(2 * WINDOW);
    s.handle_record(now, &record([open(1), open(3), open(5)]))
        .unwrap();
    assert_eq!(opened(&mut s), [1, 3]);
    s.reset(1, reset_code::ABORTED);
    s.handle_record(now, &record([open(7)])).unwrap();
    assert_eq!(opened(&mut s), [7]);
}

/// Under memory pressure no credit goes out and no stream is accepted;
/// lifting it grants what was held back.
#[test]
fn credit_hold_stops_grants_until_lifted() {
    let (mut s, now) = server(u64::MAX);
    s.handle_record(now, &record([open(1)])).unwrap();
    s.handle_record(now, &record([data(1, WINDOW as usize)]))
        .unwrap();
    let _ = transmitted(&mut s, now);
    s.set_credit_hold(true);
    s.consumed(1, WINDOW as usize);
    s.handle_record(now, &record([open(3)])).unwrap();
    let frames = transmitted(&mut s, now);
    assert!(credits(&frames).is_empty(), "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Reset { stream: 3, .. })),
        "{frames:?}"
    );
    assert_eq!(s.recv_granted(), 0, "the window is used up and not renewed");
    s.set_credit_hold(false);
    assert_eq!(credits(&transmitted(&mut s, now)), [(1, 2 * WINDOW)]);
    assert_eq!(s.recv_granted(), WINDOW);
}
