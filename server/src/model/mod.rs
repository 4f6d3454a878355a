//! Domain types shared by `service/` and `db/`: the states and kinds of runs, jobs, alerts, uploads
//! and backups as Rust enums, and the storage figures `db/` reads.
//!
//! Why a module of its own: `service/` owns the domain, but `db/` must turn the catalog's text
//! columns into these enums in one place, and `db/` may not import `service/` (arrows point down).
//! So the enums live here, below both; `service/` re-exports them and nothing above `db/` ever sees
//! the strings stored in the database. This module imports nothing else of the crate.

pub mod alerts;
pub mod archive;
pub mod auth;
pub mod backup;
pub mod files;
pub mod operations;
pub mod partitions;
pub mod scheduler;
pub mod stats;

/// A catalog column held a value this version of strata does not know (a newer version wrote it,
/// or the row was edited by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} in the catalog")]
pub struct UnknownValue {
    /// What the column holds ("archive run state", …).
    pub what: &'static str,
    /// The stored text.
    pub value: String,
}

/// Declares an enum stored in the catalog as text: the variants with their stored spelling, `as_str`
/// (for `db/` when it writes the column and for messages), `FromStr` (for `db/` when it reads it,
/// failing with [`UnknownValue`]) and `Display`. One declaration keeps the spelling in one place.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The spelling stored in the catalog.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::model::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err($crate::model::UnknownValue { what: $what, value: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
#[allow(unreachable_pub, reason = "the macro's methods are pub for the real enums; this one is private")]
mod tests {
    text_enum! {
        /// A test enum.
        enum Colour ("colour") {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn text_enum_round_trips_and_rejects_unknown_text() {
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(*c));
        }
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        let e = "green".parse::<Colour>().unwrap_err();
        assert_eq!(e.to_string(), "unknown colour \"green\" in the catalog");
    }
}
