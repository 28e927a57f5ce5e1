//! The OpenAPI 3.1 document (`/api/openapi.json`) and a self-contained docs page (`/api/docs`,
//! no CDN). Every route of [`crate::ROUTES`] is described here; a test keeps them in step.

use afterview_core::ErrorCode;
use serde_json::{Map, Value, json};

use crate::ROUTES;
use crate::error::{API_CODES, ENGINE_CODES};

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    ok: (&'static str, &'static str),
    query: &'static [(&'static str, &'static str)],
}

const ASYNC: &[(&str, &str)] = &[(
    "async_processing",
    "true: answer 202 at once with the task's URLs; false (default): wait for the result",
)];
const DOWNLOAD: &[(&str, &str)] = &[(
    "redirect",
    "true (default): with presigned downloads on, answer 307 to the object store; false: answer the bytes",
)];
const LIST: &[(&str, &str)] = &[
    ("limit", "1-200, default 50"),
    (
        "offset",
        "0-10000, default 0: items to skip (the answer's `next_offset` is the next page's, null on the last)",
    ),
];

const OPS: &[Op] = &[
    Op {
        method: "POST",
        path: "/api/images",
        summary: "Upload a photo (multipart field `file`; JPEG, PNG or WebP, ≤ 20 MB, ≤ 40 MP). EXIF is applied and stripped.",
        body: Some("Upload"),
        ok: ("201", "Image"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/images",
        summary: "The caller's photos, newest first.",
        body: None,
        ok: ("200", "ImageList"),
        query: LIST,
    },
    Op {
        method: "GET",
        path: "/api/images/{id}",
        summary: "One photo's metadata.",
        body: None,
        ok: ("200", "Image"),
        query: &[],
    },
    Op {
        method: "DELETE",
        path: "/api/images/{id}",
        summary: "Delete a photo and every visualization and export made from it.",
        body: None,
        ok: ("204", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/images/{id}/content",
        summary: "The normalized photo (PNG).",
        body: None,
        ok: ("200", "png"),
        query: DOWNLOAD,
    },
    Op {
        method: "GET",
        path: "/api/images/{id}/thumbnail",
        summary: "The photo's small copy for lists: JPEG, at most 256 pixels a side.",
        body: None,
        ok: ("200", "jpeg"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/procedures",
        summary: "The procedure catalog with cost breakdowns.",
        body: None,
        ok: ("200", "ProcedureList"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/procedures/{id}",
        summary: "One procedure.",
        body: None,
        ok: ("200", "Procedure"),
        query: &[],
    },
    Op {
        method: "POST",
        path: "/api/visualizations",
        summary: "Generate a preview (task `app.tasks.visualization_tasks.generate_visualization`, queue `visualizations`).",
        body: Some("CreateVisualization"),
        ok: ("200", "Visualization"),
        query: ASYNC,
    },
    Op {
        method: "POST",
        path: "/api/visualizations/compare",
        summary: "Compare 2-4 procedures on one photo (task `generate_comparison`).",
        body: Some("CreateComparison"),
        ok: ("200", "Comparison"),
        query: ASYNC,
    },
    Op {
        method: "GET",
        path: "/api/visualizations",
        summary: "The caller's visualizations, newest first.",
        body: None,
        ok: ("200", "List"),
        query: LIST,
    },
    Op {
        method: "GET",
        path: "/api/visualizations/{id}",
        summary: "One visualization (or comparison).",
        body: None,
        ok: ("200", "VisualizationOrComparison"),
        query: &[],
    },
    Op {
        method: "DELETE",
        path: "/api/visualizations/{id}",
        summary: "Delete a visualization (or comparison) and its picture.",
        body: None,
        ok: ("204", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/visualizations/{id}/image",
        summary: "The after picture (or the comparison composite), PNG.",
        body: None,
        ok: ("200", "png"),
        query: DOWNLOAD,
    },
    Op {
        method: "GET",
        path: "/api/visualizations/{id}/thumbnail",
        summary: "The picture's small copy for lists: JPEG, at most 256 pixels a side.",
        body: None,
        ok: ("200", "jpeg"),
        query: &[],
    },
    Op {
        method: "POST",
        path: "/api/exports",
        summary: "Generate the patient report (task `app.tasks.export_tasks.generate_export`, queue `exports`).",
        body: Some("CreateExport"),
        ok: ("200", "Export"),
        query: ASYNC,
    },
    Op {
        method: "POST",
        path: "/api/exports/cost-infographic",
        summary: "Generate a cost infographic (task `generate_cost_infographic`).",
        body: Some("CreateInfographic"),
        ok: ("200", "Export"),
        query: ASYNC,
    },
    Op {
        method: "GET",
        path: "/api/exports",
        summary: "The caller's exports.",
        body: None,
        ok: ("200", "List"),
        query: LIST,
    },
    Op {
        method: "GET",
        path: "/api/exports/{id}",
        summary: "One export.",
        body: None,
        ok: ("200", "Export"),
        query: &[],
    },
    Op {
        method: "DELETE",
        path: "/api/exports/{id}",
        summary: "Delete a report or infographic and its file.",
        body: None,
        ok: ("204", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/exports/{id}/download",
        summary: "The exported file (PDF, PNG or SVG).",
        body: None,
        ok: ("200", "file"),
        query: DOWNLOAD,
    },
    Op {
        method: "GET",
        path: "/api/tasks",
        summary: "The caller's recent tasks with their states.",
        body: None,
        ok: ("200", "List"),
        query: LIST,
    },
    Op {
        method: "GET",
        path: "/api/tasks/{id}/status",
        summary: "A task's state, progress and status text.",
        body: None,
        ok: ("200", "TaskStatus"),
        query: &[],
    },
    Op {
        method: "POST",
        path: "/api/tasks/{id}/cancel",
        summary: "Cancel a task: queued copies never run, a running one is stopped.",
        body: None,
        ok: ("200", "Cancel"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/tasks/{id}/result",
        summary: "200 with the result on SUCCESS, 202 while running, the error after FAILURE (status by code) or REVOKED (410).",
        body: None,
        ok: ("200", "TaskResult"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/ws/tasks/{id}",
        summary: "WebSocket: `{type: progress|complete|error, data: TaskStatus}` at every change, current state first; closes with 1000 after the end. `?token=` authenticates browsers.",
        body: None,
        ok: ("101", ""),
        query: &[("token", "bearer token, for clients that cannot set headers")],
    },
    Op {
        method: "GET",
        path: "/api/images/{id}/face",
        summary: "Where previews will work on this photo: the face's box, five key points (eyes, nose tip, mouth, chin) and outline, in the photo's pixels. Runs `afterview.detect_face`; 422 `no_face_detected` without a face.",
        body: None,
        ok: ("200", "Face"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/me",
        summary: "The caller: user id and whether they are an operator (may open the monitor).",
        body: None,
        ok: ("200", "Me"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/config",
        summary: "How clients sign in (no authentication): the Firebase web configuration when Firebase sign-in is on, else null.",
        body: None,
        ok: ("200", "ClientConfig"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/monitor",
        summary: "Operators only (`AFTERVIEW_OPERATORS`; 404 for everyone else): queues and their depth, live workers (Afterview's and Celery's) with running tasks, everyone's 50 most recent tasks with state, progress, time and retries.",
        body: None,
        ok: ("200", "Monitor"),
        query: &[],
    },
    Op {
        method: "POST",
        path: "/api/monitor/tasks/{id}/revoke",
        summary: "Operators only: revoke any task (a running one is terminated).",
        body: None,
        ok: ("200", "Cancel"),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/healthz",
        summary: "Liveness.",
        body: None,
        ok: ("200", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/readyz",
        summary: "Readiness: broker, result backend, metadata and blob stores reachable (else 503 + Retry-After).",
        body: None,
        ok: ("200", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/metrics",
        summary: "Prometheus metrics.",
        body: None,
        ok: ("200", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/openapi.json",
        summary: "This document.",
        body: None,
        ok: ("200", ""),
        query: &[],
    },
    Op {
        method: "GET",
        path: "/api/docs",
        summary: "Human-readable docs.",
        body: None,
        ok: ("200", ""),
        query: &[],
    },
];

fn schemas() -> Value {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    json!({
        "Error": obj(json!({"error": obj(json!({"code": {"type": "string"}, "message": {"type": "string"}}), &["code", "message"])}), &["error"]),
        "Accepted": obj(json!({"task_id": {"type": "string"}, "status": {"const": "processing"}, "status_url": {"type": "string"}, "websocket_url": {"type": "string"}}), &["task_id", "status", "status_url", "websocket_url"]),
        "Upload": obj(json!({"file": {"type": "string", "format": "binary"}}), &["file"]),
        "Image": obj(json!({"id": {"type": "string"}, "url": {"type": "string"}, "thumbnail_url": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"}, "size_bytes": {"type": "integer"}, "source_format": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}), &["id", "url", "width", "height", "created_at"]),
        "ImageList": obj(json!({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}, "next_offset": {"type": ["integer", "null"]}}), &["items"]),
        "List": obj(json!({"items": {"type": "array", "items": {"type": "object"}}, "next_offset": {"type": ["integer", "null"]}}), &["items"]),
        "Procedure": obj(json!({"id": {"type": "string"}, "name": {"type": "string"}, "category": {"type": "string"}, "description": {"type": "string"}, "recovery": {"type": "object"}, "risks": {"type": "array", "items": {"type": "string"}}, "costs": {"type": "object", "description": "surgeon, anesthesia, facility, other, total: {low, high}; currency"}, "cost_source": {"type": "string"}}), &["id", "name", "costs"]),
        "ProcedureList": obj(json!({"items": {"type": "array", "items": {"$ref": "#/components/schemas/Procedure"}}, "currency": {"type": "string"}, "disclaimer": {"type": "string"}}), &["items"]),
        "PreviewOptions": obj(json!({"intensity": {"enum": ["subtle", "moderate", "pronounced"]}, "engine": {"enum": ["local", "gemini"]}, "control_points": {"type": "object", "description": "right_eye, left_eye, nose_tip, mouth_right, mouth_left, chin?: [x, y] in pixels (the subject's left/right)"}}), &[]),
        "CreateVisualization": obj(json!({"image_id": {"type": "string"}, "procedure_id": {"type": "string"}, "options": {"$ref": "#/components/schemas/PreviewOptions"}}), &["image_id", "procedure_id"]),
        "CreateComparison": obj(json!({"image_id": {"type": "string"}, "procedure_ids": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4}, "options": {"$ref": "#/components/schemas/PreviewOptions"}}), &["image_id", "procedure_ids"]),
        "Visualization": obj(json!({"id": {"type": "string"}, "image_id": {"type": "string"}, "procedure_id": {"type": "string"}, "engine": {"type": "string"}, "intensity": {"type": "string"}, "before_image_url": {"type": "string"}, "after_image_url": {"type": "string"}, "generated_at": {"type": "string"}, "thumbnail_url": {"type": "string", "description": "in lists and GET by id: the picture's small copy"}}), &["id", "before_image_url", "after_image_url", "generated_at"]),
        "VisualizationOrComparison": {"anyOf": [{"$ref": "#/components/schemas/Visualization"}, {"$ref": "#/components/schemas/Comparison"}]},
        "Comparison": obj(json!({"id": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Visualization"}}, "comparison_image_url": {"type": "string"}, "before_image_url": {"type": "string"}, "generated_at": {"type": "string"}, "thumbnail_url": {"type": "string", "description": "in lists and GET by id: the composite's small copy"}}), &["id", "items", "comparison_image_url"]),
        "CreateExport": obj(json!({"visualization_ids": {"type": "array", "items": {"type": "string"}}, "format": {"const": "pdf"}, "include_costs": {"type": "boolean"}, "paper": {"enum": ["letter", "a4"]}, "utc_offset_minutes": {"type": "integer", "minimum": -720, "maximum": 840, "description": "the clinic's offset from UTC, for the report's date (UTC's day when absent)"}, "patient": {"type": "object", "description": "name, date_of_birth, clinic, surgeon, notes (all optional)"}}), &["visualization_ids"]),
        "CreateInfographic": obj(json!({"procedure_ids": {"type": "array", "items": {"type": "string"}}, "format": {"enum": ["png", "svg"]}, "colors": {"type": "array", "items": {"type": "string"}, "description": "four #rrggbb colors: surgeon, anesthesia, facility, other"}}), &["procedure_ids"]),
        "Export": obj(json!({"id": {"type": "string"}, "format": {"type": "string"}, "download_url": {"type": "string"}, "created_at": {"type": "string"}}), &["id", "format", "download_url", "created_at"]),
        "TaskStatus": obj(json!({"task_id": {"type": "string"}, "state": {"enum": ["PENDING", "STARTED", "PROCESSING", "SUCCESS", "FAILURE", "RETRY", "REVOKED"]}, "progress": {"type": "integer", "minimum": 0, "maximum": 100}, "status": {"type": "string"}, "result": {}, "error": {"type": "object"}}), &["task_id", "state", "progress", "status"]),
        "TaskResult": obj(json!({"task_id": {"type": "string"}, "result": {}}), &["task_id", "result"]),
        "Face": obj(json!({"image_id": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"}, "face": obj(json!({"x": {"type": "number"}, "y": {"type": "number"}, "width": {"type": "number"}, "height": {"type": "number"}}), &["x", "y", "width", "height"]), "landmarks": {"type": "object", "description": "right_eye, left_eye, nose_tip, mouth, chin: [x, y]"}, "outline": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}), &["image_id", "face", "landmarks", "outline"]),
        "Me": obj(json!({"user_id": {"type": "string"}, "operator": {"type": "boolean"}}), &["user_id", "operator"]),
        "ClientConfig": obj(json!({"firebase": {"type": ["object", "null"], "description": "apiKey, authDomain, projectId"}}), &["firebase"]),
        "Monitor": obj(json!({"queues": {"type": "array", "items": {"type": "object"}}, "workers": {"type": "array", "items": {"type": "object"}}, "tasks": {"type": "array", "items": {"type": "object"}}}), &["queues", "workers", "tasks"]),
        "Cancel": obj(json!({"task_id": {"type": "string"}, "status": {"enum": ["cancelled", "cancelling", "already_finished"]}, "state": {"type": "string"}}), &["task_id", "status"]),
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPS {
        let mut o = json!({
            "summary": op.summary,
            "security": if op.path.starts_with("/api/") && !op.path.ends_with("openapi.json") && op.path != "/api/docs" && op.path != "/api/config" { json!([{"bearer": []}]) } else { json!([]) },
            "responses": {},
        });
        let mut params: Vec<Value> = vec![];
        if op.path.contains("{id}") {
            params.push(
                json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
        for (name, desc) in op.query {
            params.push(json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": "string"}}));
        }
        // Every POST that makes something; cancel and revoke are idempotent by themselves
        // (a second one answers what the task became) and take no key.
        if op.method == "POST" && !op.path.ends_with("/cancel") && !op.path.ends_with("/revoke") {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "description": "a retried request with the same key gets the first answer", "schema": {"type": "string"}}));
        }
        o["parameters"] = json!(params);
        if let Some(b) = op.body {
            let ct = if b == "Upload" {
                "multipart/form-data"
            } else {
                "application/json"
            };
            o["requestBody"] = json!({"required": true, "content": {ct: {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
        }
        let (code, schema) = op.ok;
        let ok = match schema {
            "" => json!({"description": "OK"}),
            "png" => json!({"description": "PNG", "content": {"image/png": {}}}),
            "jpeg" => json!({"description": "JPEG", "content": {"image/jpeg": {}}}),
            "file" => {
                json!({"description": "the file", "content": {"application/pdf": {}, "image/png": {}, "image/svg+xml": {}}})
            }
            s => {
                json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}})
            }
        };
        o["responses"][code] = ok;
        if schema == "png" || schema == "file" {
            o["responses"]["307"] = json!({"description": "with presigned downloads on (`--presign-downloads`) and no `redirect=false`: a short-lived URL of the object store holding the bytes", "headers": {"Location": {"schema": {"type": "string"}}}});
        }
        if op.path == "/api/tasks/{id}/result" {
            o["responses"]["202"] = json!({"description": "not finished yet: its status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskStatus"}}}});
        }
        if !op.query.is_empty() && op.query[0].0 == "async_processing" {
            o["responses"]["202"] = json!({"description": "accepted (async_processing=true)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}});
        }
        o["responses"]["default"] = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method.to_lowercase()] = o;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Afterview API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Cosmetic-surgery previews, reports and cost infographics as asynchronous tasks. Errors: {\"error\": {\"code\", \"message\"}}; codes are listed under x-error-codes."},
        "paths": paths,
        "components": {"schemas": schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "x-error-codes": error_codes(),
    })
}

fn error_codes() -> Value {
    let mut m = Map::new();
    for (c, d) in API_CODES.iter().chain(ENGINE_CODES) {
        m.insert((*c).to_owned(), json!(d));
    }
    for c in ErrorCode::ALL {
        m.insert(c.as_str().to_owned(), json!(c.description()));
    }
    Value::Object(m)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn docs_page() -> String {
    let mut rows = String::new();
    for op in OPS {
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>\n",
            op.method,
            op.path,
            html_escape(op.summary)
        ));
    }
    let mut codes = String::new();
    if let Value::Object(m) = error_codes() {
        for (c, d) in m {
            codes.push_str(&format!(
                "<tr><td><code>{c}</code></td><td>{}</td></tr>\n",
                html_escape(d.as_str().unwrap_or(""))
            ));
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Afterview API</title>\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}td{{padding:4px 8px;vertical-align:top}}tr:nth-child(even){{background:#f4f4f4}}code{{font-size:90%}}</style></head><body>\
         <h1>Afterview API</h1><p>Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>. Long operations are tasks: \
         with <code>?async_processing=true</code> a POST answers <code>202 {{task_id, status, status_url, websocket_url}}</code>; follow \
         <code>/api/tasks/{{id}}/status</code> or the WebSocket. Errors are <code>{{\"error\": {{\"code\", \"message\"}}}}</code>. \
         Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p>\
         <h2>Endpoints</h2><table>{rows}</table><h2>Error codes</h2><table>{codes}</table>\
         <h2>WebSocket</h2><p>Messages: <code>{{\"type\": \"progress\"|\"complete\"|\"error\", \"data\": {{task_id, state, progress, status, result?, error?}}}}</code>; \
         the current state arrives first; the socket closes with code 1000 after a terminal state.</p></body></html>"
    )
}

/// Routes missing from the document (for the consistency test).
pub fn undocumented() -> Vec<String> {
    ROUTES
        .iter()
        .filter(|(m, p)| !OPS.iter().any(|o| o.method == *m && o.path == *p))
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        assert!(
            undocumented().is_empty(),
            "undocumented: {:?}",
            undocumented()
        );
        for op in OPS {
            assert!(
                ROUTES.contains(&(op.method, op.path)),
                "documented but not routed: {} {}",
                op.method,
                op.path
            );
        }
        let doc = document();
        assert_eq!(
            doc["paths"].as_object().unwrap().len(),
            OPS.iter()
                .map(|o| o.path)
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
    }

    /// What the handlers answer besides 200 is documented: a running task's `/result` is a 202
    /// with its status (not the error shape), and a visualization may be a comparison.
    #[test]
    fn answers_other_than_the_usual_are_documented() {
        let doc = document();
        let result = &doc["paths"]["/api/tasks/{id}/result"]["get"]["responses"]["202"];
        assert_eq!(
            result["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/TaskStatus"
        );
        let viz = &doc["paths"]["/api/visualizations/{id}"]["get"]["responses"]["200"];
        let name = viz["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let any = doc["components"]["schemas"][name]["anyOf"].to_string();
        assert!(
            any.contains("/Visualization\"") && any.contains("/Comparison\""),
            "{any}"
        );
    }
}
