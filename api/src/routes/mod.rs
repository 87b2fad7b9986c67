//! HTTP routes, one file per resource.

pub mod jobs;
pub mod meta;
