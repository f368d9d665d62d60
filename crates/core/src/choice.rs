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

/// Declares an enum and its [`Choice`] implementation together, each value's name and help line
/// written once beside it:
///
/// ```
/// amg_core::choice! {
///     /// How to round.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum Rounding {
///         /// To the nearest value.
///         Nearest = "nearest" => "to the nearest representable value",
///         Down = "down" => "towards minus infinity",
///     }
/// }
/// use amg_core::choice::Choice;
/// assert_eq!(Rounding::parse("down"), Ok(Rounding::Down));
/// assert_eq!(Rounding::Nearest.name(), "nearest");
/// assert_eq!(Rounding::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $help:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $crate::choice::Choice for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
            fn help(self) -> &'static str {
                match self {
                    $(Self::$variant => $help),+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Choice;

    crate::choice! {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Sample {
            First = "first" => "the first",
            Second = "second-one" => "the second",
        }
    }

    #[test]
    fn names_parse_back_and_unknown_names_list_the_choices() {
        for v in Sample::ALL {
            assert_eq!(Sample::parse(v.name()), Ok(*v));
        }
        assert_eq!(Sample::Second.help(), "the second");
        let e = Sample::parse("third").unwrap_err();
        assert!(e.contains("first") && e.contains("second-one"), "{e}");
    }
}
