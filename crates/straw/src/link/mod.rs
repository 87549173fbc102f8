//! The one TCP connection between client and server: socket options, keys and Noise.

pub mod keys;
pub mod noise;
pub mod tcp;
