//! HTTP routes, one file per resource.

pub mod accounts;
pub mod audit;
pub mod dashboard;
pub mod jobs;
pub mod meta;
pub mod queues;
pub mod schedules;
