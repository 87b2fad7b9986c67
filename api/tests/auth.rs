//! Authentication, scopes and tenant isolation: who may call what, and what they see.

mod support;

use conveyor_shared::keys::{ApiKey, Scope};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use support::{Options, TestApp, noop, problem};

async fn spawn() -> TestApp {
    TestApp::without_worker().await
}

/// For tests that change keys by hand in SQL, which the api's token cache does not hear of
/// (see `conveyor_api::key_cache`): every request reads the key.
async fn spawn_uncached() -> TestApp {
    TestApp::spawn_with(Options {
        worker: false,
        auth_cache_ttl: std::time::Duration::ZERO,
        ..Default::default()
    })
    .await
}

async fn unauthorized(r: Response) -> Value {
    let body = problem(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(body["title"], "Unauthorized");
    body
}

/// Every job route, as (method, path, body) with `{id}` filled in.
fn routes(id: &str) -> Vec<(reqwest::Method, String, Option<Value>)> {
    use reqwest::Method;
    vec![
        (Method::POST, "/v1/jobs".into(), Some(noop(json!({})))),
        (
            Method::POST,
            "/v1/jobs/batch".into(),
            Some(json!({"jobs": [noop(json!({}))]})),
        ),
        (Method::GET, format!("/v1/jobs/{id}"), None),
        (Method::GET, "/v1/jobs".into(), None),
    ]
}

/// Sends one of [`routes`] with `authorization` as the raw header value (none when `None`).
async fn call(
    app: &TestApp,
    route: &(reqwest::Method, String, Option<Value>),
    authorization: Option<&str>,
) -> Response {
    let (method, path, body) = route;
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_job_route_needs_a_valid_bearer_token() {
    let app = spawn().await;
    let id = app.enqueue(noop(json!({}))).await;
    let unknown = format!("cvy_{}", "x".repeat(40));
    let no_space = format!("Bearer{}", app.token);
    let bad_headers: [Option<&str>; 7] = [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer "),
        Some("Bearer"),
        Some(&unknown),
        Some(&no_space),
        Some(app.token.as_str()), // the token without its scheme
    ];
    for route in routes(&id) {
        for value in bad_headers {
            let body = unauthorized(call(&app, &route, value).await).await;
            assert!(body.get("errors").is_none(), "{body:#}");
        }
        let r = call(&app, &route, Some(&format!("Bearer {unknown}"))).await;
        let body = unauthorized(r).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("unknown or revoked"),
            "{body:#}"
        );
        // The real token opens the same route, so the refusals above are about the header.
        let ok = call(&app, &route, Some(&format!("Bearer {}", app.token))).await;
        assert!(
            ok.status().is_success(),
            "{} {}: {}",
            route.0,
            route.1,
            ok.status()
        );
    }
    let missing = call(&app, &routes(&id)[0], None).await;
    let body = unauthorized(missing).await;
    assert!(
        body["detail"].as_str().unwrap().contains("missing"),
        "{body:#}"
    );

    // Only the jobs created by the two successful POSTs above and the first enqueue exist.
    assert_eq!(app.count_jobs().await, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let app = spawn().await;
    let (key, token) = ApiKey::create(
        &app.pool,
        "acme",
        "ci",
        &[Scope::JobsWrite, Scope::JobsRead],
    )
    .await
    .unwrap();
    let r = app.post_as(&token, "/v1/jobs", noop(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );

    assert!(ApiKey::revoke(&app.pool, key.id).await.unwrap().is_some());
    assert!(
        ApiKey::revoke(&app.pool, key.id).await.unwrap().is_none(),
        "revoking twice reports nothing revoked"
    );
    app.wait_refused(&token).await;
    let body = unauthorized(app.post_as(&token, "/v1/jobs", noop(json!({}))).await).await;
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body:#}"
    );
    unauthorized(app.get_as(&token, "/v1/jobs").await).await;
    assert_eq!(app.count_jobs().await, 1);

    // Other keys of the tenant keep working.
    let other = app.key("acme", &[Scope::JobsWrite]).await;
    assert_eq!(
        app.post_as(&other, "/v1/jobs", noop(json!({})))
            .await
            .status(),
        StatusCode::CREATED
    );
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_key_cannot_enqueue() {
    let app = spawn().await;
    let reader = app.key("default", &[Scope::JobsRead]).await;
    for (path, body) in [
        ("/v1/jobs", noop(json!({}))),
        ("/v1/jobs/batch", json!({"jobs": [noop(json!({}))]})),
    ] {
        let body = problem(
            app.post_as(&reader, path, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_eq!(body["title"], "Forbidden");
        assert!(
            body["detail"].as_str().unwrap().contains("jobs:write"),
            "{body:#}"
        );
    }
    assert_eq!(app.count_jobs().await, 0);

    // Scope is checked before the body is looked at: an invalid body is still a 403.
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .bearer_auth(&reader)
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::FORBIDDEN, "forbidden").await;

    // It can read.
    let id = app.enqueue(noop(json!({}))).await;
    assert_eq!(
        app.get_as(&reader, &format!("/v1/jobs/{id}"))
            .await
            .status(),
        StatusCode::OK
    );
    let list: Value = app.get_as(&reader, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_write_only_key_cannot_read() {
    let app = spawn().await;
    let writer = app.key("default", &[Scope::JobsWrite]).await;
    let r = app.post_as(&writer, "/v1/jobs", noop(json!({}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    for path in [
        format!("/v1/jobs/{id}"),
        "/v1/jobs".to_owned(),
        "/v1/jobs?state=queued".to_owned(),
    ] {
        let body = problem(
            app.get_as(&writer, &path).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains("jobs:read"),
            "{path}: {body:#}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn tenants_never_see_each_others_jobs() {
    let app = spawn().await;
    let a = app
        .key("tenant-a", &[Scope::JobsWrite, Scope::JobsRead])
        .await;
    let b = app
        .key("tenant-b", &[Scope::JobsWrite, Scope::JobsRead])
        .await;
    let a_job: Value = app
        .post_as(&a, "/v1/jobs", noop(json!({"sleep_ms": 1})))
        .await
        .json()
        .await
        .unwrap();
    let a_id = a_job["id"].as_str().unwrap();

    // B: a 404 for A's job (not a 403: B must not learn that it exists), and an empty list.
    let body = problem(
        app.get_as(&b, &format!("/v1/jobs/{a_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(!body.to_string().contains(a_id), "{body:#}");
    let list: Value = app.get_as(&b, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["jobs"], json!([]));
    assert!(
        list.get("next_cursor").is_none_or(Value::is_null),
        "{list:#}"
    );
    // ...also when paging from A's job.
    let list: Value = app
        .get_as(
            &b,
            "/v1/jobs?limit=500&cursor=ffffffff-ffff-7fff-bfff-ffffffffffff",
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"], json!([]));

    let batch = json!({"jobs": [noop(json!({"sleep_ms": 2})), noop(json!({"sleep_ms": 3}))]});
    let r = app.post_as(&b, "/v1/jobs/batch", batch).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let b_ids: Vec<String> = r.json::<Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();

    let listed = |v: Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let a_sees = listed(
        app.get_as(&a, "/v1/jobs?limit=500")
            .await
            .json()
            .await
            .unwrap(),
    );
    assert_eq!(a_sees, [a_id.to_owned()]);
    let mut b_sees = listed(
        app.get_as(&b, "/v1/jobs?limit=500")
            .await
            .json()
            .await
            .unwrap(),
    );
    b_sees.sort();
    let mut expected = b_ids.clone();
    expected.sort();
    assert_eq!(b_sees, expected);
    for id in &b_ids {
        problem(
            app.get_as(&a, &format!("/v1/jobs/{id}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_eq!(
            app.get_as(&b, &format!("/v1/jobs/{id}")).await.status(),
            StatusCode::OK
        );
    }
    // The admin key of tenant `default` is a tenant like any other: admin is a scope, not a
    // view across tenants.
    problem(
        app.get_as(&app.token, &format!("/v1/jobs/{a_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(app.get_json("/v1/jobs").await["jobs"], json!([]));
    assert_eq!(app.count_jobs().await, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_job_id_that_is_not_a_uuid_is_404() {
    let app = spawn().await;
    for id in ["nope", "123", "00000000-0000-0000-0000-00000000000g", "%20"] {
        let body = problem(
            app.get_as(&app.token, &format!("/v1/jobs/{id}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_eq!(body["detail"], "job not found", "{id}");
    }
    // A well-formed id that does not exist is the same 404.
    let r = app
        .get_as(&app.token, &format!("/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    problem(r, StatusCode::NOT_FOUND, "not_found").await;
    app.stop().await;
}

#[tokio::test]
async fn tokens_are_stored_only_as_digests() {
    let app = spawn().await;
    let (_, token) = ApiKey::create(&app.pool, "acme", "digest-check", &[Scope::JobsRead])
        .await
        .unwrap();
    // The token works, so it is the one behind the row checked below.
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );

    for token in [token.as_str(), app.token.as_str()] {
        let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM api_keys t")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert!(!row.contains(token), "a token is stored in clear: {row}");
        }
        // The row holds SHA-256 of the token and a short prefix for recognising it.
        let (prefix, digest_matches): (String, bool) = sqlx::query_as(
            "SELECT token_prefix, token_sha256 = sha256(convert_to($1, 'UTF8')) FROM api_keys
             WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
        )
        .bind(token)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(digest_matches);
        assert!(
            token.starts_with(&prefix),
            "{prefix} is not a prefix of the token"
        );
        assert!(
            prefix.len() <= 8 && prefix.len() * 4 < token.len(),
            "prefix {prefix:?} gives away too much"
        );
    }

    // `keys list` shows the prefix, never the token.
    let listed = ApiKey::list(&app.pool, Some("acme")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!serde_json::to_string(&listed).unwrap().contains(&token));
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = app
            .client
            .get(app.url("/v1/jobs"))
            .header("authorization", format!("{scheme} {}", app.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "scheme {scheme}");
    }
    app.stop().await;
}

/// The `expires_at` and `last_used_at` of a key, by token.
async fn key_times(
    app: &TestApp,
    token: &str,
) -> (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    sqlx::query_as(
        "SELECT expires_at, last_used_at FROM api_keys
         WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(token)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_expired_key_is_refused_with_its_own_code_and_others_are_not_told() {
    let app = spawn_uncached().await;
    let (soon, soon_token) = ApiKey::create_expiring(
        &app.pool,
        "acme",
        "ci",
        &[Scope::JobsRead],
        Some(chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    let (_, forever) = ApiKey::create(&app.pool, "acme", "ops", &[Scope::JobsRead])
        .await
        .unwrap();
    let expires = soon.expires_at.expect("an expiring key has expires_at");
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!((expires - in_an_hour).num_seconds().abs() < 60, "{expires}");
    // Not yet expired: it works.
    assert_eq!(
        app.get_as(&soon_token, "/v1/jobs").await.status(),
        StatusCode::OK
    );

    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(soon.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.get_as(&soon_token, "/v1/jobs").await;
    assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    let body = problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    assert_eq!(body["detail"], "key expired", "{body:#}");
    assert_eq!(body["type"], "https://conveyor.dev/problems/key-expired");
    assert_eq!(body["title"], "Key expired");
    // Writes are refused too, and nothing is enqueued.
    let r = app.post_as(&soon_token, "/v1/jobs", noop(json!({}))).await;
    problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    assert_eq!(app.count_jobs().await, 0);

    // The tenant's other key is unaffected.
    assert_eq!(
        app.get_as(&forever, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    // A token that matches no key, and a revoked key (expired or not), get the generic 401:
    // only the holder of a real token learns it expired.
    let unknown = format!("cvy_{}", "y".repeat(40));
    let body = unauthorized(app.get_as(&unknown, "/v1/jobs").await).await;
    assert_ne!(body["detail"], "key expired");
    ApiKey::revoke(&app.pool, soon.id).await.unwrap().unwrap();
    unauthorized(app.get_as(&soon_token, "/v1/jobs").await).await;

    // A key created to expire at once is expired for the next request.
    let (_, instant) = ApiKey::create_expiring(
        &app.pool,
        "acme",
        "instant",
        &[Scope::JobsRead],
        Some(chrono::Duration::zero()),
    )
    .await
    .unwrap();
    problem(
        app.get_as(&instant, "/v1/jobs").await,
        StatusCode::UNAUTHORIZED,
        "key_expired",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn last_used_is_recorded_on_success_and_refreshed_at_most_once_a_minute() {
    let app = spawn_uncached().await;
    let token = app.key("acme", &[Scope::JobsRead]).await;
    assert_eq!(
        key_times(&app, &token).await.1,
        None,
        "a new key was never used"
    );

    let before = chrono::Utc::now();
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    let first = key_times(&app, &token).await.1.expect("used once");
    assert!(
        (first - before).num_seconds().abs() < 5,
        "{first} vs {before}"
    );

    // Used again within the minute: the stored value is fresh enough, nothing is written.
    for _ in 0..3 {
        assert_eq!(
            app.get_as(&token, "/v1/jobs").await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(key_times(&app, &token).await.1, Some(first));

    // Over a minute old: the next request refreshes it.
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes'
         WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&token)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        app.get_as(&token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    let refreshed = key_times(&app, &token).await.1.unwrap();
    let age = chrono::Utc::now() - refreshed;
    assert!(age.num_seconds() < 5, "not refreshed: {refreshed}");

    // A refused request (expired key) is not a use.
    sqlx::query(
        "UPDATE api_keys SET expires_at = now(), last_used_at = NULL
         WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(&token)
    .execute(&app.pool)
    .await
    .unwrap();
    let r = app.get_as(&token, "/v1/jobs").await;
    problem(r, StatusCode::UNAUTHORIZED, "key_expired").await;
    assert_eq!(key_times(&app, &token).await.1, None);

    // The bootstrap key (CONVEYOR_BOOTSTRAP_TOKEN) is an ordinary key: it works, never
    // expires, and its use is recorded too.
    assert_eq!(
        app.get_as(&app.token, "/v1/jobs").await.status(),
        StatusCode::OK
    );
    let (expires, used) = key_times(&app, &app.token).await;
    assert_eq!(expires, None);
    assert!(used.is_some());
    app.stop().await;
}

/// Ids are UUIDv7: time-ordered for keyset pagination, with random bits, so knowing one job's
/// id tells nothing about the next one's (no sequence to walk).
#[tokio::test]
async fn job_ids_are_not_a_guessable_sequence() {
    let app = spawn().await;
    let jobs: Vec<Value> = (0..20).map(|_| noop(json!({}))).collect();
    let r = app
        .post_as(&app.token, "/v1/jobs/batch", json!({ "jobs": jobs }))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let ids: Vec<uuid::Uuid> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    // The low 32 bits are random whether the generator also keeps a per-millisecond counter
    // above them (the uuid crate does) or not.
    let tails: Vec<u32> = ids.iter().map(|id| id.as_u64_pair().1 as u32).collect();
    for (id, pair) in ids.iter().zip(tails.windows(2)) {
        assert_eq!(id.get_version_num(), 7, "{id}");
        let gap = pair[0].abs_diff(pair[1]);
        assert!(
            gap > 1 << 10,
            "neighbouring ids differ by only {gap}: {ids:?}"
        );
    }
    app.stop().await;
}
