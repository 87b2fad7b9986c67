//! The OpenAPI 3.1 document, generated from the route annotations and types.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use crate::{
    error::Problem,
    routes::{accounts, jobs},
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
        accounts::create,
        accounts::get
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
        Problem,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Enqueue, inspect, cancel and retry jobs"),
        (name = "accounts", description = "Ledger accounts moved by payment and transfer jobs")
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
