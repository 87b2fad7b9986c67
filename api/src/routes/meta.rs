//! `/openapi.json` (probes come from `conveyor_shared::probe`).

use axum::Json;
use utoipa::OpenApi;

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}
