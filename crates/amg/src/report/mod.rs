//! The reporting layer, above pruning and evaluation: what a model costs (`inspect`), how fast it
//! runs (`bench`), what pruning gained and lost (`prune`), and pictures of the attention analysis
//! (`viz`).

pub mod bench;
pub mod inspect;
pub mod plot;
pub mod prune;
pub mod viz;

/// A count with a unit prefix: 1.23G, 4.56M, 7.9K.
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}
