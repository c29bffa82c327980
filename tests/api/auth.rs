//! SPEC §3: who may call, with which token, and what a refusal looks like.

use crate::helpers::*;
use jsonwebtoken::{get_current_timestamp, Algorithm};
use reqwest::{header, Response, StatusCode};
use serde_json::{json, Value};
use std::process::{Command, Output};
use sync_ingest::{
    auth::api_key::{self, key_id},
    store::api_keys,
};
use uuid::Uuid;

const ISSUER: &str = "https://identity.example";
const AUDIENCE: &str = "sync-ingest";

/// POSTs one valid project with a raw `Authorization` header (or none).
async fn post_with_authorization(app: &TestApp, authorization: Option<&str>) -> Response {
    let mut request = app
        .client
        .post(format!("{}/api/v1/sync/projects", app.base))
        .json(&json!([item("projects", company())]));
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    request.send().await.expect("request sent")
}

/// Asserts a 401 problem with a `WWW-Authenticate: Bearer` challenge.
async fn assert_unauthorized(response: Response) {
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate is {challenge:?}"
    );
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// POSTs one valid project of `company` as `token` and returns the status.
async fn post_status(app: &TestApp, token: &str, company: Uuid) -> StatusCode {
    app.post("projects", token, &json!([item("projects", company)]))
        .await
        .status()
}

/// URL-safe base64 without padding, as JWT segments use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut encoded = String::new();
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for sextet in 0..=chunk.len() {
            encoded.push(char::from(
                ALPHABET[(group >> (18 - 6 * sextet)) as usize & 63],
            ));
        }
    }
    encoded
}

/// `base64url(header).base64url(claims)`: a JWT's signed part, built by hand.
fn unsigned_jwt(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// The secret part of a key: everything after `sik_<16 hex>_`.
fn secret_of(token: &str) -> &str {
    let secret = &token["sik_".len() + 16 + 1..];
    assert_eq!(secret.len(), 64, "unexpected key shape {token}");
    secret
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Runs the built `sync-ingest` binary against the test app's database.
async fn cli(app: &TestApp, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sync-ingest"));
    command
        .args(args)
        .env("DATABASE_URL", &app.settings.database_url)
        .env_remove("RUST_LOG");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("cli task")
        .expect("cli runs");
    assert!(
        output.status.success(),
        "sync-ingest {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `sync-ingest api-key create` for `company` with `sync:write`; its stdout.
async fn cli_create_key(app: &TestApp, company: Uuid) -> String {
    let company = company.to_string();
    let args = [
        "api-key",
        "create",
        "--company",
        company.as_str(),
        "--scope",
        "sync:write",
        "--name",
        "x",
    ];
    String::from_utf8(cli(app, &args).await.stdout).expect("utf-8 stdout")
}

// ---- API keys -------------------------------------------------------------

#[tokio::test]
async fn created_api_key_authorizes_a_post_with_202() {
    let app = TestApp::spawn().await;
    let company = company();
    let key = app.writer(company).await;

    assert_eq!(post_status(&app, &key, company).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn api_key_is_stored_only_as_a_hash_of_its_secret() {
    let app = TestApp::spawn().await;
    let issued = api_key::issue(&app.pool, company(), &["sync:write".into()], Some("erp"))
        .await
        .expect("key issued");
    let secret = secret_of(&issued.token);

    let hash: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_keys WHERE id = $1")
        .bind(&issued.record.id)
        .fetch_one(&app.pool)
        .await
        .expect("key row");
    assert_eq!(hash.len(), 32);
    assert_ne!(hash, hex_decode(secret), "the secret's bytes are stored");
    assert_ne!(
        hash,
        &secret.as_bytes()[..32],
        "the secret's text is stored"
    );

    let text_columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'api_keys' AND data_type IN ('text', 'character varying', 'ARRAY')",
    )
    .fetch_all(&app.pool)
    .await
    .expect("columns");
    assert!(!text_columns.is_empty());
    for column in text_columns {
        let value: Option<String> = sqlx::query_scalar(&format!(
            "SELECT \"{column}\"::text FROM api_keys WHERE id = $1"
        ))
        .bind(&issued.record.id)
        .fetch_one(&app.pool)
        .await
        .expect("column value");
        let value = value.unwrap_or_default();
        assert!(!value.contains(secret), "column {column} holds the secret");
        assert!(
            !value.contains(&issued.token),
            "column {column} holds the key"
        );
    }
    let whole_row: String =
        sqlx::query_scalar("SELECT to_jsonb(k)::text FROM api_keys k WHERE id = $1")
            .bind(&issued.record.id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert!(
        !whole_row.contains(secret),
        "the row holds the secret: {whole_row}"
    );
}

#[tokio::test]
async fn api_key_revoked_by_id_is_refused_with_401() {
    let app = TestApp::spawn().await;
    let company = company();
    let issued = api_key::issue(&app.pool, company, &["sync:write".into()], None)
        .await
        .expect("key issued");
    assert_eq!(
        post_status(&app, &issued.token, company).await,
        StatusCode::ACCEPTED
    );

    assert!(api_keys::revoke(&app.pool, &issued.record.id)
        .await
        .expect("revoked"));

    let response = app
        .post(
            "projects",
            &issued.token,
            &json!([item("projects", company)]),
        )
        .await;
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn api_key_revoked_by_the_whole_key_is_refused_with_401() {
    let app = TestApp::spawn().await;
    let company = company();
    let key = app.writer(company).await;
    assert_eq!(post_status(&app, &key, company).await, StatusCode::ACCEPTED);

    assert!(api_keys::revoke(&app.pool, key_id(&key))
        .await
        .expect("revoked"));

    let response = app
        .post("projects", &key, &json!([item("projects", company)]))
        .await;
    assert_unauthorized(response).await;
    let job = app.get_job(&Uuid::now_v7().to_string(), &key).await;
    assert_unauthorized(job).await;
}

#[tokio::test]
async fn unknown_api_key_is_refused_with_401() {
    let app = TestApp::spawn().await;
    app.writer(company()).await;
    let unknown = format!("sik_{}_{}", "0123456789abcdef", "ab".repeat(32));

    assert_unauthorized(post_with_authorization(&app, Some(&format!("Bearer {unknown}"))).await)
        .await;
}

#[tokio::test]
async fn api_key_with_right_id_but_wrong_secret_is_refused_with_401() {
    let app = TestApp::spawn().await;
    let company = company();
    let key = app.writer(company).await;
    let secret = secret_of(&key);
    let wrong_secret = secret
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect::<String>();
    let forged = format!("sik_{}_{wrong_secret}", key_id(&key));

    let response = app
        .post("projects", &forged, &json!([item("projects", company)]))
        .await;
    assert_unauthorized(response).await;
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn cli_api_key_create_prints_only_the_key_which_then_authenticates() {
    let app = TestApp::spawn().await;
    let company = company();

    let stdout = cli_create_key(&app, company).await;

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    assert_eq!(stdout, format!("{}\n", lines[0]), "stdout: {stdout:?}");
    let key = lines[0];
    assert!(api_key::split(key).is_some(), "not a key: {key:?}");
    assert_eq!(post_status(&app, key, company).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn cli_api_key_list_shows_the_id_but_never_the_secret() {
    let app = TestApp::spawn().await;
    let company = company();
    let company_arg = company.to_string();
    let key = cli_create_key(&app, company).await.trim().to_owned();

    let listed = cli(
        &app,
        &["api-key", "list", "--company", company_arg.as_str()],
    )
    .await;

    let stdout = String::from_utf8(listed.stdout).expect("utf-8");
    let stderr = String::from_utf8(listed.stderr).expect("utf-8");
    assert!(stdout.contains(key_id(&key)), "id missing from: {stdout}");
    assert!(
        stdout.contains(&company_arg),
        "company missing from: {stdout}"
    );
    for output in [&stdout, &stderr] {
        assert!(!output.contains(secret_of(&key)), "secret shown: {output}");
    }
}

#[tokio::test]
async fn cli_api_key_revoke_by_key_makes_it_401() {
    let app = TestApp::spawn().await;
    let company = company();
    let key = cli_create_key(&app, company).await.trim().to_owned();
    assert_eq!(post_status(&app, &key, company).await, StatusCode::ACCEPTED);

    cli(&app, &["api-key", "revoke", key.as_str()]).await;

    let response = app
        .post("projects", &key, &json!([item("projects", company)]))
        .await;
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn cli_api_key_revoke_by_listed_id_makes_it_401() {
    let app = TestApp::spawn().await;
    let company = company();
    let company_arg = company.to_string();
    let key = cli_create_key(&app, company).await.trim().to_owned();
    let listed = cli(
        &app,
        &["api-key", "list", "--company", company_arg.as_str()],
    )
    .await;
    let listed = String::from_utf8(listed.stdout).expect("utf-8");
    let id = listed
        .split_whitespace()
        .find(|word| *word == key_id(&key))
        .expect("the key's id is listed");

    cli(&app, &["api-key", "revoke", id]).await;

    let response = app
        .post("projects", &key, &json!([item("projects", company)]))
        .await;
    assert_unauthorized(response).await;
    let relisted = cli(
        &app,
        &["api-key", "list", "--company", company_arg.as_str()],
    )
    .await;
    let relisted = String::from_utf8(relisted.stdout).expect("utf-8");
    let line = relisted
        .lines()
        .find(|line| line.starts_with(key_id(&key)))
        .expect("the key is still listed");
    let revoked = line.split('\t').nth(5).unwrap_or_default();
    assert!(!revoked.is_empty(), "not shown as revoked: {line:?}");
}

// ---- 401: no usable token -------------------------------------------------

#[tokio::test]
async fn request_without_authorization_header_is_refused_with_401() {
    let app = TestApp::spawn().await;

    assert_unauthorized(post_with_authorization(&app, None).await).await;
    let job = app
        .client
        .get(format!("{}/api/v1/sync/jobs/{}", app.base, Uuid::now_v7()))
        .send()
        .await
        .expect("request sent");
    assert_unauthorized(job).await;
}

#[tokio::test]
async fn garbled_token_is_refused_with_401() {
    for app in [TestApp::spawn().await, TestApp::spawn_with_jwt().await] {
        for garbled in [
            "Bearer not-a-token",
            "Bearer sik_garbage",
            "Bearer sik_0123456789abcdef_tooshort",
            "Bearer a.b.c",
            "Bearer ",
            "Bearer",
        ] {
            let response = post_with_authorization(&app, Some(garbled)).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{garbled:?}");
            assert_unauthorized(response).await;
        }
    }
}

#[tokio::test]
async fn non_bearer_scheme_is_refused_with_401_even_with_a_valid_key() {
    let app = TestApp::spawn().await;
    let key = app.writer(company()).await;

    for authorization in [
        format!("Basic {}", base64url(format!("user:{key}").as_bytes())),
        format!("Token {key}"),
        key.clone(),
    ] {
        let response = post_with_authorization(&app, Some(&authorization)).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        assert_unauthorized(response).await;
    }
}

#[tokio::test]
async fn jwt_is_refused_with_401_when_no_jwt_secret_is_set() {
    let app = TestApp::spawn().await;
    assert!(app.settings.jwt_secret.is_none());
    let company = company();

    let response = app
        .post(
            "projects",
            &jwt(company, &["Integration"]),
            &json!([item("projects", company)]),
        )
        .await;
    assert_unauthorized(response).await;
}

// ---- JWTs -----------------------------------------------------------------

#[tokio::test]
async fn valid_hs256_jwt_with_integration_role_is_accepted_with_202() {
    let app = TestApp::spawn_with_jwt().await;
    let company = company();

    let accepted = app
        .accepted(
            "projects",
            &jwt(company, &["Integration"]),
            &json!([item("projects", company)]),
        )
        .await;
    assert_eq!(accepted["status"], "queued");
}

/// POSTs with a JWT of `claims` signed by `algorithm` and `secret`.
async fn post_jwt(app: &TestApp, algorithm: Algorithm, secret: &str, claims: &Value) -> Response {
    let company: Uuid = claims["company_guid"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(company);
    app.post(
        "projects",
        &signed_jwt(algorithm, secret, claims),
        &json!([item("projects", company)]),
    )
    .await
}

#[tokio::test]
async fn expired_jwt_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let mut claims = jwt_claims(company(), &["Integration"]);
    claims["exp"] = json!(get_current_timestamp() - 3600);

    assert_unauthorized(post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await).await;
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn jwt_not_valid_before_an_hour_from_now_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let mut claims = jwt_claims(company(), &["Integration"]);
    claims["nbf"] = json!(get_current_timestamp() + 3600);
    claims["exp"] = json!(get_current_timestamp() + 7200);

    assert_unauthorized(post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await).await;
}

#[tokio::test]
async fn jwt_without_exp_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let mut claims = jwt_claims(company(), &["Integration"]);
    claims.as_object_mut().expect("object").remove("exp");

    assert_unauthorized(post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await).await;
}

#[tokio::test]
async fn jwt_with_bad_signature_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let claims = jwt_claims(company(), &["SystemAdmin"]);

    let other_secret = post_jwt(
        &app,
        Algorithm::HS256,
        "another-secret-entirely!!!!!!!!!",
        &claims,
    );
    assert_unauthorized(other_secret.await).await;

    let valid = signed_jwt(Algorithm::HS256, JWT_SECRET, &claims);
    let (signed_part, _) = valid.rsplit_once('.').expect("three segments");
    let tampered = format!("{signed_part}.{}", base64url(&[0u8; 32]));
    assert_unauthorized(post_with_authorization(&app, Some(&format!("Bearer {tampered}"))).await)
        .await;
}

#[tokio::test]
async fn jwt_with_alg_none_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let company = company();
    let claims = jwt_claims(company, &["SystemAdmin"]);
    let body = json!([item("projects", company)]);

    // The hand-made encoding is sound: signed with HS256 it is accepted.
    let hs256 = unsigned_jwt(&json!({"alg": "HS256", "typ": "JWT"}), &claims);
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(hs256.as_bytes(), &key, Algorithm::HS256).expect("signed");
    let hand_made = format!("{hs256}.{signature}");
    assert_eq!(
        app.post("projects", &hand_made, &body).await.status(),
        StatusCode::ACCEPTED
    );

    for alg in ["none", "None", "NONE"] {
        let unsigned = unsigned_jwt(&json!({"alg": alg, "typ": "JWT"}), &claims);
        for token in [format!("{unsigned}."), format!("{unsigned}.{signature}")] {
            let response = app.post("projects", &token, &body).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "alg {alg}");
            assert_unauthorized(response).await;
        }
    }
}

#[tokio::test]
async fn jwt_signed_with_hs384_or_hs512_is_refused_with_401() {
    let app = TestApp::spawn_with_jwt().await;
    let claims = jwt_claims(company(), &["Integration"]);

    for algorithm in [Algorithm::HS384, Algorithm::HS512] {
        let response = post_jwt(&app, algorithm, JWT_SECRET, &claims).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{algorithm:?}");
        assert_unauthorized(response).await;
    }
}

/// A service that requires `iss` = [`ISSUER`] and `aud` = [`AUDIENCE`].
async fn spawn_with_issuer_and_audience() -> TestApp {
    TestApp::spawn_with(sync_ingest::app::Mode::All, |s| {
        s.jwt_secret = Some(JWT_SECRET.into());
        s.jwt_issuer = Some(ISSUER.into());
        s.jwt_audience = Some(AUDIENCE.into());
    })
    .await
}

fn claims_with(iss: Option<&str>, aud: Option<&str>) -> Value {
    let mut claims = jwt_claims(company(), &["Integration"]);
    if let Some(iss) = iss {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = aud {
        claims["aud"] = json!(aud);
    }
    claims
}

#[tokio::test]
async fn jwt_with_wrong_issuer_is_refused_with_401() {
    let app = spawn_with_issuer_and_audience().await;

    for claims in [
        claims_with(Some("https://evil.example"), Some(AUDIENCE)),
        claims_with(None, Some(AUDIENCE)),
    ] {
        let response = post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{claims}");
        assert_unauthorized(response).await;
    }
}

#[tokio::test]
async fn jwt_with_wrong_audience_is_refused_with_401() {
    let app = spawn_with_issuer_and_audience().await;

    for claims in [
        claims_with(Some(ISSUER), Some("another-service")),
        claims_with(Some(ISSUER), None),
    ] {
        let response = post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{claims}");
        assert_unauthorized(response).await;
    }
}

#[tokio::test]
async fn jwt_with_the_configured_issuer_and_audience_is_accepted_with_202() {
    let app = spawn_with_issuer_and_audience().await;
    let claims = claims_with(Some(ISSUER), Some(AUDIENCE));

    let response = post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

// ---- 403: authenticated, not authorized -----------------------------------

#[tokio::test]
async fn read_only_key_posting_is_refused_with_403_insufficient_scope() {
    let app = TestApp::spawn().await;
    let company = company();
    let reader = app.key(company, &["sync:read"]).await;

    let response = app
        .post("projects", &reader, &json!([item("projects", company)]))
        .await;
    problem(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn jwt_without_sync_role_or_scope_is_refused_with_403_insufficient_scope() {
    let app = TestApp::spawn_with_jwt().await;
    let company = company();

    for roles in [&[][..], &["Viewer"][..]] {
        let mut claims = jwt_claims(company, roles);
        claims["scope"] = json!("sync:read profile");
        let response = post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await;
        problem(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    }
    assert_eq!(app.count("sync_jobs").await, 0);
}

#[tokio::test]
async fn jwt_with_sync_write_scope_and_no_roles_is_accepted_with_202() {
    let app = TestApp::spawn_with_jwt().await;
    let mut claims = jwt_claims(company(), &[]);
    claims.as_object_mut().expect("object").remove("roles");
    claims["scope"] = json!("profile sync:write");

    let response = post_jwt(&app, Algorithm::HS256, JWT_SECRET, &claims).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn read_only_key_may_get_its_companys_job_with_200() {
    let app = TestApp::spawn().await;
    let company = company();
    let writer = app.writer(company).await;
    let reader = app.key(company, &["sync:read"]).await;
    let accepted = app
        .accepted("projects", &writer, &json!([item("projects", company)]))
        .await;
    let id = accepted["correlation_id"].as_str().expect("correlation id");

    let response = app.get_job(id, &reader).await;

    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.expect("job");
    assert_eq!(job["correlation_id"], id);
}

// ---- SystemAdmin -----------------------------------------------------------

#[tokio::test]
async fn system_admin_jwt_may_post_items_of_two_companies_in_one_batch() {
    let app = TestApp::spawn_with_jwt().await;
    let (own, first, second) = (company(), company(), company());
    let admin = jwt(own, &["SystemAdmin"]);
    let companies = [first, second, first, second];
    let batch: Vec<Value> = companies.iter().map(|c| item("projects", *c)).collect();

    let accepted = app.accepted("projects", &admin, &json!(batch)).await;
    let id = accepted["correlation_id"].as_str().expect("correlation id");
    let job = app.finished_job(id, &admin).await;

    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["inserted"], 4);
    let guids = accepted["guids"].as_array().expect("guids");
    assert_eq!(guids.len(), 4);
    for (guid, company) in guids.iter().zip(companies) {
        let guid: Uuid = guid.as_str().expect("guid").parse().expect("uuid");
        let row = app.row("projects", guid).await.expect("row stored");
        assert_eq!(row["company_guid"], company.to_string(), "{row}");
    }
    let job_company: Uuid =
        sqlx::query_scalar("SELECT company_guid FROM sync_jobs WHERE correlation_id = $1")
            .bind(id.parse::<Uuid>().expect("uuid"))
            .fetch_one(&app.pool)
            .await
            .expect("job row");
    assert_eq!(
        job_company, own,
        "a mixed batch belongs to the caller's company"
    );
}
