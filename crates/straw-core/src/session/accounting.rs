//! Wire bytes by service: each record's bytes are shared among the services
//! whose stream bytes it carried, in proportion to those bytes, so that an
//! operator (metrics) or the user (status) can say what each service cost
//! on the link. Every wire byte is counted exactly once: the shares of a
//! record add up to its length, and bytes that carry no stream's data go
//! to [`WIRE_CLASS_CONTROL`].

/// Classes counted: control, other, and up to 14 named services.
pub const WIRE_CLASSES: usize = 16;
/// Records (or parts of them) without stream bytes: ACKs, credit, OPENs,
/// PINGs, codec resets, bulk slice headers, and records re-sent after a
/// resume (their shares are not remembered).
pub const WIRE_CLASS_CONTROL: usize = 0;
/// Streams of a service not in [`super::SessionConfig::accounting_services`].
pub const WIRE_CLASS_OTHER: usize = 1;
/// The first named service's class; the n-th is `WIRE_CLASS_FIRST_SERVICE + n`.
pub const WIRE_CLASS_FIRST_SERVICE: usize = 2;

/// Raw stream bytes per class in the record being built or handled.
pub(super) type ClassBytes = [u64; WIRE_CLASSES];

/// The class of a stream to `service`.
pub(super) fn class_of(services: &[Vec<u8>], service: &[u8]) -> u8 {
    services
        .iter()
        .take(WIRE_CLASSES - WIRE_CLASS_FIRST_SERVICE)
        .position(|s| s == service)
        .map_or(WIRE_CLASS_OTHER, |i| i + WIRE_CLASS_FIRST_SERVICE) as u8
}

/// Adds `wire` bytes to `out`, shared by `raw`'s proportions; the rounding
/// remainder goes to the largest share, all of it to control if `raw` is
/// empty. Clears `raw`.
pub(super) fn apportion(wire: u64, raw: &mut ClassBytes, out: &mut ClassBytes) {
    let total: u64 = raw.iter().sum();
    if total == 0 {
        out[WIRE_CLASS_CONTROL] += wire;
        return;
    }
    let mut given = 0;
    let mut largest = 0;
    for (i, &r) in raw.iter().enumerate() {
        if r == 0 {
            continue;
        }
        let share = (u128::from(wire) * u128::from(r) / u128::from(total)) as u64;
        out[i] += share;
        given += share;
        if r > raw[largest] {
            largest = i;
        }
    }
    out[largest] += wire - given;
    *raw = [0; WIRE_CLASSES];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_record() {
        let mut raw = [0; WIRE_CLASSES];
        raw[2] = 300;
        raw[3] = 100;
        raw[1] = 1;
        let mut out = [0; WIRE_CLASSES];
        apportion(1001, &mut raw, &mut out);
        assert_eq!(out.iter().sum::<u64>(), 1001);
        assert_eq!(out[3], 249);
        assert_eq!(out[1], 2);
        assert_eq!(out[2], 750);
        assert_eq!(raw, [0; WIRE_CLASSES]);
        apportion(40, &mut raw, &mut out);
        assert_eq!(out[WIRE_CLASS_CONTROL], 40);
    }

    #[test]
    fn services_past_the_classes_count_as_other() {
        let names: Vec<Vec<u8>> = (0..20).map(|i| format!("s{i}").into_bytes()).collect();
        assert_eq!(class_of(&names, b"s0"), 2);
        assert_eq!(class_of(&names, b"s13"), 15);
        assert_eq!(class_of(&names, b"s14"), WIRE_CLASS_OTHER as u8);
        assert_eq!(class_of(&names, b"nope"), WIRE_CLASS_OTHER as u8);
    }
}
