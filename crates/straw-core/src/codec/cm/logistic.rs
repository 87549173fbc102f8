//! Fixed-point logistic functions: probabilities are 12 bits (0..4096), the
//! "stretch" domain ln(p/(1-p)) is ±2047 at 256 per nat. Integer only, so
//! both peers compute the same values.

use std::sync::OnceLock;

/// 4096 / (1 + e^-(k/2)) for k = -16..=16: the logistic function at the
/// interpolation points of `squash`.
const SQUASH_POINTS: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// Logistic function: stretch domain (±2047, 256 per nat) to a 12-bit probability.
pub(super) fn squash(d: i32) -> i32 {
    if d > 2047 {
        return 4095;
    }
    if d < -2047 {
        return 1;
    }
    let w = d & 127;
    let i = ((d >> 7) + 16) as usize;
    (SQUASH_POINTS[i] * (128 - w) + SQUASH_POINTS[i + 1] * w + 64) >> 7
}

/// The inverse of `squash`, tabulated once per process.
pub(super) fn stretch_table() -> &'static [i16; 4096] {
    static T: OnceLock<Box<[i16; 4096]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([0i16; 4096]);
        let mut pi = 0usize;
        for x in -2047..=2047 {
            let v = squash(x) as usize;
            for slot in t.iter_mut().take(v + 1).skip(pi) {
                *slot = x as i16;
            }
            pi = pi.max(v + 1);
        }
        for slot in t.iter_mut().skip(pi) {
            *slot = 2047;
        }
        t
    })
}
