//! Enums whose values are single bytes on the wire.

/// Declares a `#[repr(u8)]` enum and its `from_u8`, from one list of
/// variants, so that decoding can never fall out of step with the values.
macro_rules! byte_enum {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vattr:meta])* $variant:ident = $value:literal,)*
        }
    ) => {
        $(#[$attr])*
        #[repr(u8)]
        $vis enum $name {
            $($(#[$vattr])* $variant = $value,)*
        }

        impl $name {
            /// The variant with the byte `v`, if any.
            $vis fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use byte_enum;
