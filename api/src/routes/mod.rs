//! HTTP routes, one file per resource.

pub mod accounts;
pub mod jobs;
pub mod meta;
