//! Enums whose variants are names people write (settings' choices, a snapshot's mode): one
//! list of variants and spellings per enum, from which parsing, printing and the lists in
//! help and error messages all come. In the base layer, so a lower module's enum can use it.

/// A setting whose value is one of a few names: the enums [`choices!`] makes, which also have
/// these as inherent items so their users need not import the trait.
pub trait Choice: Sized + Copy + 'static {
    /// The accepted spellings, in the order the docs and error messages list them.
    const NAMES: &'static [&'static str];
    fn from_name(name: &str) -> Option<Self>;
    fn name(self) -> &'static str;
}

/// An enum whose variants are a setting's choices, each with its one spelling, so the SPECS
/// row, validation, its error message and the typed value cannot disagree.
macro_rules! choices {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $(#[$meta])*
        $vis enum $name {
            $($variant),+
        }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $crate::choices::Choice for $name {
            const NAMES: &'static [&'static str] = $name::NAMES;

            fn from_name(name: &str) -> Option<$name> {
                $name::from_name(name)
            }

            fn name(self) -> &'static str {
                $name::name(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        // Written and read as its name, so files (meta.json) hold what people write.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::from_name(&name)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&name, $name::NAMES))
            }
        }
    };
}
pub(crate) use choices;

choices! {
    /// A snapshot's mode (meta.json's `mode`), and the one a configuration uses (see
    /// `config::Isolation`); the names are in the order the docs list them. Adding a mode is
    /// its name here, its file in `modes/` and its row in `modes::MODES`.
    pub enum ModeKind {
        Recreate = "recreate",
        Filesystem = "filesystem",
        Squashfs = "squashfs",
        Reflink = "reflink",
    }
}
