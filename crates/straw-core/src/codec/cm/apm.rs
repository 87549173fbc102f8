//! Adaptive probability maps: refine the mixer's output by a small context
//! (order 0, and a hash of order 1), interpolating between 33 bins along
//! the stretch domain; both neighbouring bins learn.

use super::hash32;
use super::logistic::squash;

/// log2 of the order-1 APM's contexts.
pub(super) const A2_LOG: u32 = 10;

#[derive(Clone)]
pub(super) struct Apm {
    a1: Vec<u16>,
    a2: Vec<u16>,
    /// The bins used for this bit and the weight between them.
    a1i: usize,
    a2i: usize,
    a_w: i32,
}

fn apm_init(contexts: usize) -> Vec<u16> {
    let mut t = vec![0u16; contexts * 33];
    for (i, v) in t.iter_mut().enumerate() {
        *v = (squash(((i % 33) as i32 - 16) * 128) * 16) as u16;
    }
    t
}

impl Apm {
    pub(super) fn new() -> Self {
        Self {
            a1: apm_init(256),
            a2: apm_init(1 << A2_LOG),
            a1i: 0,
            a2i: 0,
            a_w: 0,
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        2 * (self.a1.capacity() + self.a2.capacity())
    }

    /// The final probability (12 bits): the mix `pr_mix` (stretched: `dot`)
    /// averaged with the two maps' refinements, by partial byte `c0` and
    /// previous byte `c1`.
    pub(super) fn refine(&mut self, dot: i32, pr_mix: i32, c0: u32, c1: usize) -> i32 {
        let s = dot + 2048;
        self.a_w = s & 127;
        let lo = (s >> 7) as usize;
        self.a1i = c0 as usize * 33 + lo;
        let a2c = (hash32(c1 as u32, c0) >> (32 - A2_LOG)) as usize;
        self.a2i = a2c * 33 + lo;
        let ap =
            |t: &[u16], i: usize, w: i32| (t[i] as i32 * (128 - w) + t[i + 1] as i32 * w) >> 11;
        let p1 = ap(&self.a1, self.a1i, self.a_w);
        let p2 = ap(&self.a2, self.a2i, self.a_w);
        ((pr_mix + p1 + 2 * p2 + 2) >> 2).clamp(1, 4095)
    }

    /// Both neighbouring bins move towards the bit, at rate 2^-shift.
    pub(super) fn update(&mut self, bit: u32, shift: i32) {
        let g = ((bit as i32) << 16) + ((bit as i32) << 7) - bit as i32 - bit as i32;
        for (t, i) in [(&mut self.a1, self.a1i), (&mut self.a2, self.a2i)] {
            for v in &mut t[i..i + 2] {
                *v = (*v as i32 + ((g - *v as i32) >> shift)) as u16;
            }
        }
    }
}
