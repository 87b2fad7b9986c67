//! The OpenAPI 3.1 document, generated from the route annotations and types.

use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, RefOr, ResponseBuilder,
        header::HeaderBuilder,
        path::{Operation, ParameterIn},
        schema::{ObjectBuilder, Ref, Type},
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
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
        queues::get,
        crate::routes::audit::list
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
        conveyor_shared::audit::AuditEntry,
        crate::routes::audit::AuditList,
        Problem,
    )),
    modifiers(&BearerAuth, &ProblemResponses),
    tags(
        (name = "jobs", description = "Enqueue, inspect, cancel and retry jobs"),
        (name = "schedules", description = "Cron schedules: one job per tick, in a time zone"),
        (name = "accounts", description = "Ledger accounts moved by payment and transfer jobs"),
        (name = "queues", description = "Per-queue counts, backlog, throughput and latency for operators"),
        (name = "audit", description = "Who changed what, when and from where (admin scope)")
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

/// Declares, on every operation, the problems any request may get besides those its handler
/// documents (auth, rate limit, timeout, body parsing, unknown ids), and gives every problem
/// its real media type, `application/problem+json`. Found by Schemathesis: the document said
/// `application/json` for errors and left out the statuses every route can answer.
struct ProblemResponses;

const PROBLEM_JSON: &str = "application/problem+json";

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let by_id = path.contains('{');
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                declare_problems(operation, by_id);
            }
        }
    }
}

fn declare_problems(operation: &mut Operation, by_id: bool) {
    let has_body = operation.request_body.is_some();
    let has_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let mut common = vec![
        (
            "401",
            "`unauthorized`: missing, malformed, unknown or revoked token; `key_expired`: \
             the key is past its `expires_at` (rotated, or created with an expiry)",
        ),
        (
            "403",
            "`forbidden`: the key lacks the scope this operation needs",
        ),
        ("500", "`internal_error`: quote `request_id` when reporting"),
        (
            "503",
            "`timeout`: the request took longer than the server allows",
        ),
    ];
    if has_body {
        common.extend([
            ("400", "`malformed_json` or `invalid_header`"),
            (
                "413",
                "`payload_too_large`: the body exceeds this route's limit",
            ),
            ("415", "`unsupported_media_type`: the body must be JSON"),
            ("422", "`validation_failed`: `errors` names each field"),
        ]);
    }
    if has_query {
        common.push(("422", "`validation_failed`: a bad filter, limit or cursor"));
    }
    if by_id {
        common.push(("404", "`not_found`: nothing with this id for this tenant"));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description).into());
    }
    responses.entry("429".to_owned()).or_insert_with(|| {
        let retry_after = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::Integer))
            .description(Some("Seconds until this key (or address) may send again"))
            .build();
        ResponseBuilder::from(problem(
            "`rate_limited`: this key's request budget is spent; `auth_rate_limited`: too many \
             failed authentications from this address. Retry after `Retry-After` seconds",
        ))
        .header("Retry-After", retry_after)
        .build()
        .into()
    });
    // Problems are served as application/problem+json, whatever the annotation said.
    for response in responses.values_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let is_problem = response.content.get("application/json").is_some_and(
            |c| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem")),
        );
        if is_problem && let Some(content) = response.content.shift_remove("application/json") {
            response.content.insert(PROBLEM_JSON.to_owned(), content);
        }
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}
