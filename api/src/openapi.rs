//! The OpenAPI 3.1 document, generated from the route annotations and types.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use crate::{
    error::Problem,
    routes::{accounts, jobs, queues},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Conveyor API", description = "Submit, inspect and steer background jobs."),
    paths(
        jobs::create,
        jobs::create_batch,
        jobs::get,
        jobs::list,
        jobs::cancel,
        jobs::retry,
        crate::routes::schedules::create,
        crate::routes::schedules::list,
        crate::routes::schedules::get,
        crate::routes::schedules::update,
        crate::routes::schedules::delete,
        accounts::create,
        accounts::get,
        queues::list,
        queues::get
    ),
    components(schemas(
        conveyor_shared::Job,
        conveyor_shared::JobState,
        conveyor_shared::job::Attempt,
        conveyor_shared::enqueue::EnqueueRequest,
        conveyor_shared::enqueue::BatchRequest,
        conveyor_shared::enqueue::FieldError,
        jobs::JobList,
        conveyor_shared::ledger::Account,
        conveyor_shared::ledger::Entry,
        accounts::CreateAccount,
        conveyor_shared::schedule::Schedule,
        conveyor_shared::schedule::JobTemplate,
        conveyor_shared::schedule::Misfire,
        conveyor_shared::schedule::CreateSchedule,
        conveyor_shared::schedule::UpdateSchedule,
        crate::routes::schedules::ScheduleList,
        queues::QueueList,
        queues::QueueView,
        conveyor_shared::job::stats::StateCounts,
        conveyor_shared::job::stats::Throughput,
        conveyor_shared::job::stats::Percentiles,
        Problem,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Enqueue, inspect, cancel and retry jobs"),
        (name = "schedules", description = "Cron schedules: one job per tick, in a time zone"),
        (name = "accounts", description = "Ledger accounts moved by payment and transfer jobs"),
        (name = "queues", description = "Per-queue counts, backlog, throughput and latency for operators")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
