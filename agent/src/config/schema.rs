//! The one definition of the configuration: [`section!`] declares a group of keys (name, type,
//! default, documented meaning, accepted range) once, and generates the struct serde reads,
//! its `Default`, its range checks and the field table that the flags, the environment
//! names and the README's configuration reference are built from.

use std::time::Duration;

/// One key of a section, for flags, help and the README reference.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    /// The doc comment, one line per source line.
    pub doc: &'static str,
    /// The accepted range (inclusive), as shown in errors and the README.
    pub range: fn() -> Option<(String, String)>,
}

/// A value shown in range errors.
pub trait Shown {
    fn shown(&self) -> String;
}

impl Shown for Duration {
    fn shown(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

macro_rules! shown_as_display {
    ($($t:ty),*) => { $(impl Shown for $t { fn shown(&self) -> String { self.to_string() } })* };
}
shown_as_display!(u16, u32, u64, usize, f64);

/// `key value must be between lo and hi`, or nothing.
pub fn check_range<T: PartialOrd + Shown>(key: &str, v: &T, lo: T, hi: T) -> Result<(), String> {
    if *v < lo || *v > hi {
        return Err(format!("{key} {} must be between {} and {}", v.shown(), lo.shown(), hi.shown()));
    }
    Ok(())
}

/// The flat name of `field` in `section` (`""`: top level): `otlp` + `timeout` → `otlp_timeout`.
pub fn flat(section: &str, field: &str) -> String {
    if section.is_empty() { field.to_string() } else { format!("{section}_{field}") }
}

/// Declares a configuration section. Per field: doc comment, optional `#[serde(...)]`
/// attributes, `pub name: Type = default`, and optionally `, range lo, hi` (inclusive;
/// checked at start-up, the error names the key).
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($sattr:tt)*)])*
                pub $field:ident : $ty:ty = $default:expr $(, range $lo:expr, $hi:expr)? ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($($sattr)*)])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }

        impl $name {
            /// Every key of the section.
            pub const FIELDS: &'static [$crate::config::schema::Field] = &[
                $($crate::config::schema::Field {
                    name: stringify!($field),
                    doc: concat!($($doc, "\n",)*),
                    range: || $crate::config::schema::range_of!($ty $(, $lo, $hi)?),
                },)*
            ];

            /// Checks the declared ranges; `section` prefixes the key in errors.
            #[allow(unused_variables)]
            pub fn check_ranges(&self, section: &str) -> Result<(), String> {
                $($(
                    $crate::config::schema::check_range(
                        &$crate::config::schema::flat(section, stringify!($field)),
                        &self.$field,
                        $lo,
                        $hi,
                    )?;
                )?)*
                Ok(())
            }
        }
    };
}

pub(crate) use section;

/// The shown range of a field, if it declares one.
macro_rules! range_of {
    ($ty:ty) => {
        None
    };
    ($ty:ty, $lo:expr, $hi:expr) => {
        Some((
            $crate::config::schema::Shown::shown(&{
                let v: $ty = $lo;
                v
            }),
            $crate::config::schema::Shown::shown(&{
                let v: $ty = $hi;
                v
            }),
        ))
    };
}

pub(crate) use range_of;

/// Durations in the file format: `500ms`, `5s`, `2m`, `1h`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom)
    }
}

/// Duration constructors short enough for range declarations.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

pub const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

pub const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}
