//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the
//! code — response schemas from the types the handlers serialise, item
//! schemas from the entities' descriptions the reader reads by, limits
//! from the running settings.

use super::{answer::Accepted, error::Problem, jobs::JobPage};
use crate::{
    config::Settings,
    domain::{fields, Deletion, Entity, Field, FieldError, Item, Operation},
    store::{Job, JobError, JobErrorCode, JobStatus},
};
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(components(schemas(
    Job,
    JobError,
    JobErrorCode,
    JobStatus,
    Entity,
    Operation,
    Accepted,
    JobPage,
    Problem,
    FieldError
)))]
struct Components;

/// The document for a service running with `settings`.
pub fn document(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(Components::openapi()).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "sync-ingest",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Bulk synchronization of Projects, Components, Assemblies, Pieces and Articles: \
            each batch is validated, queued durably and applied exactly once, in order, inside \
            its company. See SPEC.md for the full contract."
    });
    let schemas = &mut doc["components"]["schemas"];
    for entity in Entity::ALL {
        schemas[item_schema_name(entity)] = item_schema(fields(entity));
    }
    schemas["DeletionItem"] = item_schema(Deletion::FIELDS);
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An API key (`sik_…`) or an HS256 JWT"}
    });
    let mut paths = Map::new();
    for entity in Entity::ALL {
        let limit = settings.batch_limit(entity);
        paths.insert(
            format!("/api/v1/sync/{entity}"),
            json!({"post": submit_operation(entity, Operation::Upsert, limit)}),
        );
        paths.insert(
            format!("/api/v1/sync/{entity}/delete"),
            json!({"post": submit_operation(entity, Operation::Delete, limit)}),
        );
    }
    paths.insert("/api/v1/sync/jobs".into(), json!({"get": list_operation()}));
    paths.insert(
        "/api/v1/sync/jobs/{correlation_id}".into(),
        json!({"get": job_operation()}),
    );
    paths.insert(
        "/api/v1/sync/jobs/{correlation_id}/cancel".into(),
        json!({"post": cancel_operation()}),
    );
    paths.insert(
        "/healthz".into(),
        json!({"get": health_operation("Liveness: the process is up", false)}),
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": health_operation("Readiness: database and broker reachable", true)}),
    );
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({"get": {
            "operationId": "openapi", "tags": ["meta"], "summary": "This document",
            "responses": {"200": {"description": "The OpenAPI document",
                "content": {"application/json": {"schema": {"type": "object"}}}}}
        }}),
    );
    doc["paths"] = Value::Object(paths);
    doc
}

fn item_schema_name(entity: Entity) -> String {
    let singular = match entity {
        Entity::Projects => "Project",
        Entity::Components => "Component",
        Entity::Assemblies => "Assembly",
        Entity::Pieces => "Piece",
        Entity::Articles => "Article",
    };
    format!("{singular}Item")
}

/// An item as submitted, from its one description (an entity's, or a
/// deletion's): each field's type gives its schema. Optional fields may be
/// `null` (= absent); an entity's `guid` is assigned when missing.
fn item_schema(fields: &[Field]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        let schema = (field.schema)();
        if field.required {
            required.push(field.name);
            properties.insert(field.name.into(), schema);
        } else {
            properties.insert(
                field.name.into(),
                json!({"anyOf": [schema, {"type": "null"}]}),
            );
        }
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

fn problem(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn with_header(mut response: Value, name: &str, description: &str, schema: Value) -> Value {
    response["headers"][name] = json!({"description": description, "schema": schema});
    response
}

fn retry_after(response: Value) -> Value {
    with_header(
        response,
        "Retry-After",
        "Seconds to wait before retrying",
        json!({"type": "integer"}),
    )
}

fn unauthorized() -> Value {
    with_header(
        problem("Missing, invalid, expired or revoked token"),
        "WWW-Authenticate",
        "Bearer challenge",
        json!({"type": "string"}),
    )
}

fn accepted(description: &str) -> Value {
    let mut response = json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}});
    response = with_header(
        response,
        "Location",
        "The job resource",
        json!({"type": "string"}),
    );
    response = with_header(
        response,
        "Preference-Applied",
        "`wait=N` when Prefer: wait was honoured",
        json!({"type": "string"}),
    );
    with_header(
        response,
        "Idempotent-Replayed",
        "`true` when this is the original job of an earlier request with the same Idempotency-Key",
        json!({"type": "string"}),
    )
}

fn submit_operation(entity: Entity, operation: Operation, limit: usize) -> Value {
    let (id, summary, item) = match operation {
        Operation::Upsert => (
            format!("sync_{entity}"),
            format!("Upsert a batch of {entity} by GUID, inside the caller's company"),
            item_schema_name(entity),
        ),
        Operation::Delete => (
            format!("delete_{entity}"),
            format!("Delete {entity} by GUID, inside the caller's company, leaving tombstones"),
            "DeletionItem".to_owned(),
        ),
    };
    json!({
        "operationId": id,
        "tags": ["sync"],
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "dry_run", "in": "query", "required": false,
             "description": "Run the whole pipeline and roll the changes back",
             "schema": {"type": "boolean"}},
            {"name": "Prefer", "in": "header", "required": false,
             "description": "`wait=N` (N ≤ 60): answer 200 with the finished job if it finishes within N seconds",
             "schema": {"type": "string"}},
            {"name": "Idempotency-Key", "in": "header", "required": false,
             "description": "Same key, company and body within 24 h: the original job again",
             "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": "^[ -~]*[!-~][ -~]*$"}}
        ],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "array", "maxItems": limit,
            "items": {"$ref": format!("#/components/schemas/{item}")}
        }}}},
        "responses": {
            "200": accepted("Waited (Prefer: wait) and the job finished"),
            "202": accepted("Accepted and durably queued"),
            "400": problem("batch_too_large or invalid_idempotency_key"),
            "401": unauthorized(),
            "403": problem("insufficient_scope or company_access_denied"),
            "404": problem("not_found"),
            "409": problem("idempotency_key_reused"),
            "408": problem("body_timeout: the body did not arrive within SYNC_BODY_TIMEOUT_SECS; the connection is closed"),
            "413": problem("payload_too_large"),
            "415": problem("unsupported_media_type"),
            "422": problem("validation_failed: every error, with index and field"),
            "429": retry_after(problem("queue_full or company_backlog_full")),
            "500": problem("internal_error"),
            "503": retry_after(problem("broker_unavailable, database_unavailable or overloaded"))
        }
    })
}

fn job_operation() -> Value {
    json!({
        "operationId": "get_job",
        "tags": ["sync"],
        "summary": "A job by correlation id (404 for unknown ids and other companies' jobs alike)",
        "security": [{"bearer": []}],
        "parameters": [{"name": "correlation_id", "in": "path", "required": true,
                        "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The job",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
            "401": unauthorized(),
            "403": problem("insufficient_scope"),
            "404": problem("not_found"),
            "500": problem("internal_error"),
            "503": retry_after(problem("database_unavailable or overloaded"))
        }
    })
}

fn list_operation() -> Value {
    let query = |name: &str, description: &str, schema: Value| {
        json!({"name": name, "in": "query", "required": false,
               "description": description, "schema": schema})
    };
    let date_time = json!({"type": "string", "format": "date-time"});
    json!({
        "operationId": "list_jobs",
        "tags": ["sync"],
        "summary": "The caller's company's jobs, newest first, a page at a time",
        "security": [{"bearer": []}],
        "parameters": [
            query("status", "Comma-separated statuses", json!({"type": "string"})),
            query("entity", "Only this entity's jobs", json!({"$ref": "#/components/schemas/Entity"})),
            query("operation", "Only upserts or deletes", json!({"$ref": "#/components/schemas/Operation"})),
            query("submitted_after", "RFC 3339", date_time.clone()),
            query("submitted_before", "RFC 3339", date_time),
            query("limit", "Jobs per page (default 100)",
                  json!({"type": "integer", "minimum": 1, "maximum": 1000})),
            query("cursor", "`next_cursor` of the page before", json!({"type": "string"})),
            query("company_guid", "A SystemAdmin's choice of company",
                  json!({"type": "string", "format": "uuid"}))
        ],
        "responses": {
            "200": {"description": "A page of jobs",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobPage"}}}},
            "401": unauthorized(),
            "403": problem("insufficient_scope"),
            "422": problem("validation_failed: every bad parameter"),
            "500": problem("internal_error"),
            "503": retry_after(problem("database_unavailable or overloaded"))
        }
    })
}

fn cancel_operation() -> Value {
    json!({
        "operationId": "cancel_job",
        "tags": ["sync"],
        "summary": "Cancel a job that is still queued: it is never applied",
        "security": [{"bearer": []}],
        "parameters": [{"name": "correlation_id", "in": "path", "required": true,
                        "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The job, cancelled",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
            "401": unauthorized(),
            "403": problem("insufficient_scope"),
            "404": problem("not_found: unknown, or another company's"),
            "409": problem("job_not_cancellable: already processing or finished"),
            "500": problem("internal_error"),
            "503": retry_after(problem("database_unavailable or overloaded"))
        }
    })
}

fn health_operation(summary: &str, can_fail: bool) -> Value {
    let status = json!({"description": summary, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]
    }}}});
    let mut responses = json!({"200": status.clone()});
    if can_fail {
        responses["503"] = status;
    }
    json!({"operationId": summary.split(':').next().unwrap_or("health").to_lowercase(),
           "tags": ["meta"], "summary": summary, "responses": responses})
}
