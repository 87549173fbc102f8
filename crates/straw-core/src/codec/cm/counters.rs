//! Adaptive probability counters (direct order 0/1, match models) are u16s:
//! 12-bit p(1) above a 4-bit count. The count sets the rate 1/(n+1.5), so
//! young contexts learn fast.

use super::logistic::stretch_table;

/// Most a direct counter's count reaches.
pub(super) const LIMIT_DIRECT: u16 = 15;

/// 65536 * 2 / (2n + 3) for n = 0..N: the adaptation rate 1/(n + 1.5) of
/// a counter or state map entry that has seen n bits.
pub(super) const fn rates<const N: usize>() -> [i32; N] {
    let mut r = [0i32; N];
    let mut n = 0;
    while n < N {
        r[n] = 131072 / (2 * n as i32 + 3);
        n += 1;
    }
    r
}

const RATE: [i32; 16] = rates();

#[inline]
pub(super) fn ctr_update(v: &mut u16, bit: u32, limit: u16) {
    let n = *v & 15;
    let p = if n == 0 { 2048 } else { (*v >> 4) as i32 };
    let target = if bit != 0 { 4095 } else { 0 };
    let np = (p + (((target - p) * RATE[n as usize]) >> 16)).clamp(0, 4095);
    *v = ((np as u16) << 4) | (n + 1).min(limit);
}

/// A counter as a mixer input: stretch(p), or 0 while it has seen nothing.
#[inline]
pub(super) fn ctr_input(v: u16) -> i32 {
    if v & 15 == 0 {
        0
    } else {
        stretch_table()[(v >> 4) as usize] as i32
    }
}
