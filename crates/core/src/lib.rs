//! amg's foundation, below everything else: the error type every layer returns, options with named
//! values (`Choice`, `choice!`), outputs written under temporary names (`fsutil`), Ctrl-C as a stop
//! request (`interrupt`), progress bars, numbers in words (`text`) and the deterministic RNG all of
//! amg's randomness comes from.

#![forbid(unsafe_code)]

pub mod choice;
pub mod error;
pub mod fsutil;
pub mod interrupt;
pub mod progress;
pub mod rng;
pub mod text;

pub use error::{Error, Result};
