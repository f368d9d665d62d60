//! Options with a fixed set of values (a criterion, an optimiser, a dataset layout), each with the
//! name a command line or a file uses and a line of help. The command line builds its parsers from
//! this; the library has no command-line types of its own.

/// An enum whose values have names.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// Every value, in the order help lists them.
    const ALL: &'static [Self];
    /// The name on the command line and in files.
    fn name(self) -> &'static str;
    /// One line for `--help`.
    fn help(self) -> &'static str {
        ""
    }
    /// The value called `s`; an error listing the names otherwise.
    fn parse(s: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
            format!("`{s}` is not one of: {}", names.join(", "))
        })
    }
}
