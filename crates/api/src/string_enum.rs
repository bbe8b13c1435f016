//! `string_enum!`: typed enums for the string-typed fields of the API (phases, condition types, NIC
//! models…). Each value serialises to its exact upstream string, and a string this version does not
//! know is kept verbatim in `Other`, so an object written by a newer (or older) controller never fails
//! to deserialise and round-trips unchanged. `null` reads as the default variant.

/// Declares a string enum; `schema_enum` says whether the CRD lists the values (`enum:`) or leaves
/// the field a free string, as upstream does for that field.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
        default = $default:ident;
        schema_enum = $schema_enum:literal;
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A string this version does not know, kept verbatim so the object round-trips.
            Other(String),
        }

        impl $name {
            /// Every known string, in declaration order.
            pub const KNOWN: &'static [&'static str] = &[$($value),+];

            /// The exact wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $value, )+
                    Self::Other(other) => other,
                }
            }

            /// Parses a wire string; never fails (unknown strings become `Other`).
            pub fn parse(value: &str) -> Self {
                match value {
                    $( $value => Self::$variant, )+
                    other => Self::Other(other.to_owned()),
                }
            }

            /// True for the default (usually `""`, "not set") variant.
            pub fn is_default(&self) -> bool {
                *self == Self::$default
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::parse(value)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(value.map_or_else(Self::default, |v| Self::parse(&v)))
            }
        }

        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                if $schema_enum {
                    schemars::json_schema!({ "type": "string", "enum": Self::KNOWN })
                } else {
                    schemars::json_schema!({ "type": "string" })
                }
            }
        }
    };
}
