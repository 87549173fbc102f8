//! Bit histories and the state maps that read them.
//!
//! A nonstationary bit history fits in one byte: an index into a table of
//! (n0, n1) count pairs. On each bit its count grows and the opposite count
//! is partly discarded (old evidence counts less once the bits disagree).
//! Adaptive state maps turn a state into a probability per context kind.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::counters::rates;

pub(super) struct States {
    pub(super) next: [[u8; 2]; 256],
    /// Total count of each state: the slot replacement priority.
    pub(super) total: [u8; 256],
    /// Initial p(1) of each state for the state maps, 22 bits.
    pub(super) init: [u32; 256],
    /// Confidence input: +k for a run of ones, -k for zeros, else 0.
    pub(super) run: [i16; 256],
}

/// Most a count may reach while the opposite count is `min` (index).
const STATE_CAP: [u8; 8] = [50, 37, 25, 15, 10, 7, 6, 5];

fn discount(n: u8) -> u8 {
    if n > 2 { n / 2 + 1 } else { n }
}

/// Brings a pair within the caps, giving up counts of the larger side.
fn fit(mut a: u8, mut b: u8) -> (u8, u8) {
    loop {
        let m = a.min(b) as usize;
        if m < STATE_CAP.len() && a.max(b) <= STATE_CAP[m] {
            return (a, b);
        }
        if a > b {
            a -= 1;
        } else {
            b -= 1;
        }
    }
}

/// The state table, generated once per process from the rules above.
pub(super) fn states() -> &'static States {
    static S: OnceLock<Box<States>> = OnceLock::new();
    S.get_or_init(|| {
        let mut pairs: Vec<(u8, u8)> = vec![(0, 0)];
        let mut index: HashMap<(u8, u8), u8> = HashMap::new();
        index.insert((0, 0), 0);
        let mut next = [[0u8; 2]; 256];
        let mut i = 0;
        while i < pairs.len() {
            let (n0, n1) = pairs[i];
            for (y, nx) in next[i].iter_mut().enumerate() {
                let (a, b) = if y == 1 { (n1, n0) } else { (n0, n1) };
                let (a, b) = fit(a + 1, discount(b));
                let pair = if y == 1 { (b, a) } else { (a, b) };
                let id = match index.get(&pair) {
                    Some(&id) => id,
                    None => {
                        let id = pairs.len();
                        assert!(id < 256, "too many bit-history states");
                        pairs.push(pair);
                        index.insert(pair, id as u8);
                        id as u8
                    }
                };
                *nx = id;
            }
            i += 1;
        }
        let mut total = [0u8; 256];
        let mut init = [1u32 << 21; 256];
        let mut run = [0i16; 256];
        for (i, &(n0, n1)) in pairs.iter().enumerate() {
            total[i] = n0.saturating_add(n1);
            init[i] = ((2 * n1 as u64 + 1) << 22) as u32 / (2 * (n0 as u32 + n1 as u32) + 2);
            let k = (n0.max(n1) as i16 * 64).min(1024);
            run[i] = match (n0, n1) {
                (0, 0) => 0,
                (0, _) => k,
                (_, 0) => -k,
                _ => 0,
            };
        }
        Box::new(States {
            next,
            total,
            init,
            run,
        })
    })
}

/// The state maps' adaptation rates, by count.
const SM_RATE: [i32; 1024] = rates();

/// A state map entry: p(1) in the top 22 bits, a count in the low 10.
#[inline]
pub(super) fn sm_update(e: &mut u32, bit: u32, limit: u32) {
    let n = *e & 1023;
    let p = (*e >> 10) as i64;
    let target = if bit != 0 { (1i64 << 22) - 1 } else { 0 };
    let np = (p + (((target - p) * SM_RATE[n as usize] as i64) >> 16)).clamp(0, (1 << 22) - 1);
    *e = (np as u32) << 10 | (n + 1).min(limit);
}
