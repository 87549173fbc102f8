//! The mixers: four small neural networks, each with a weight set chosen by
//! a different context, mix the inputs in the stretch domain; a final mixer
//! by partial byte mixes their four outputs. Trained online on coding cost.

use super::logistic::squash;
use super::model::{NI, NM};

/// Mixer weights stay within ±64.0 whatever the input.
const W_MAX: i32 = 1 << 22;

#[derive(Clone)]
pub(super) struct Mixer {
    /// Weight sets of all mixers, `NI` weights each.
    w: Vec<i32>,
    /// The weight set (offset in `w`) each mixer used for this bit.
    wb: [usize; NM],
    /// Each mixer's output, in the stretch domain and as a probability.
    d: [i32; NM],
    pr_m: [i32; NM],
    /// Final mixer: weights, the set in use, its output probability.
    fw: Vec<i32>,
    fb: usize,
    pr_mix: i32,
}

impl Mixer {
    pub(super) fn new(sets: usize) -> Self {
        Self {
            w: vec![20_000; NI * sets],
            wb: [0; NM],
            d: [0; NM],
            pr_m: [2048; NM],
            fw: vec![65536 / NM as i32; 256 * NM],
            fb: 0,
            pr_mix: 2048,
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        4 * (self.w.capacity() + self.fw.capacity())
    }

    /// Mixes `x` with weight set `sets[j]` in mixer j, then the four outputs
    /// with the final mixer's set `c0`. Returns the final mix in the stretch
    /// domain (the APMs refine it); `pr()` is it as a probability.
    pub(super) fn mix(&mut self, x: &[i32; NI], sets: [usize; NM], c0: u32) -> i32 {
        self.wb = sets.map(|s| s * NI);
        let mut d = [0i32; NM];
        for (j, &wb) in self.wb.iter().enumerate() {
            let w = &self.w[wb..wb + NI];
            let dot: i64 = w.iter().zip(x).map(|(&w, &x)| w as i64 * x as i64).sum();
            d[j] = ((dot >> 16) as i32).clamp(-2047, 2047);
            self.pr_m[j] = squash(d[j]);
        }
        self.fb = c0 as usize * NM;
        let mut dot: i64 = 0;
        self.d = d;
        for (&d, &w) in d.iter().zip(&self.fw[self.fb..self.fb + NM]) {
            dot += d as i64 * w as i64;
        }
        let dot = ((dot >> 16) as i32).clamp(-2047, 2047);
        self.pr_mix = squash(dot);
        dot
    }

    /// The final mix as a 12-bit probability.
    pub(super) fn pr(&self) -> i32 {
        self.pr_mix
    }

    /// Gradient step on coding cost: the final mixer at `final_rate`, the
    /// four at `rate` (x * err * rate >> 16).
    pub(super) fn update(&mut self, x: &[i32; NI], bit: u32, rate: i32, final_rate: i32) {
        let err = ((bit as i32) << 12) - self.pr_mix;
        for j in 0..NM {
            let v = &mut self.fw[self.fb + j];
            *v = (*v + ((self.d[j] * err * final_rate) >> 16)).clamp(-W_MAX, W_MAX);
        }
        for j in 0..NM {
            let e = (((bit as i32) << 12) - self.pr_m[j]) * rate;
            let wb = self.wb[j];
            let w = &mut self.w[wb..wb + NI];
            for (w, &x) in w.iter_mut().zip(x) {
                *w = (*w + ((x * e) >> 16)).clamp(-W_MAX, W_MAX);
            }
        }
    }
}
