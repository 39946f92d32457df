//! Firebreak's shared vocabulary: identifiers, time (`Clock`, `UnixTime`, durations) and the
//! reason codes every surface reports. This crate does no I/O and has no async: every other crate
//! may depend on it, and it depends on none of them.
#![forbid(unsafe_code)]

pub mod clock;
pub mod duration;
pub mod ids;
pub mod reason;
pub mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use duration::{ConfigDuration, DurationError, parse_duration};
pub use ids::{AgentId, IdError, Jti, SessionId, TargetId};
pub use reason::Reason;
pub use time::{
    UnixTime, civil_from_days, days_from_civil, format_rfc3339_millis, parse_date,
    parse_rfc3339_millis,
};
