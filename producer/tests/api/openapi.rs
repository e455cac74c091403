use std::path::PathBuf;

use serde_json::Value;

use crate::helpers::spawn_app_with;

/// schemathesis from the venv scripts/test.sh installs into target/, or SCHEMATHESIS, or PATH.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("SCHEMATHESIS") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/st");
    if venv.exists() {
        return venv;
    }
    "st".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app_with(|_| {}).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/order", "/orders/batch", "/orders/{order_id}", "/orders/{order_id}/confirm", "/orders/{order_id}/cancel",
        "/inventory/{product_id}", "/health", "/ready", "/metrics",
        "/admin/products", "/admin/products/{product_id}/restock", "/admin/inventory",
    ] {
        assert!(paths.contains_key(route), "{route} is documented");
    }
    assert_eq!(doc["paths"]["/order"]["post"]["responses"]["202"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/AcceptedOrder");
    // Either shape of order, and every line of a stored one.
    let shapes: Vec<&str> = doc["components"]["schemas"]["OrderRequest"]["oneOf"].as_array().unwrap().iter().map(|s| s["$ref"].as_str().unwrap()).collect();
    assert_eq!(shapes, ["#/components/schemas/SingleLineOrder", "#/components/schemas/CartOrder"]);
    assert_eq!(doc["components"]["schemas"]["CartOrder"]["properties"]["lines"]["maxItems"], 50);
    assert!(doc["components"]["schemas"]["StoredOrder"]["required"].as_array().unwrap().contains(&Value::from("lines")));
}

/// Property-based run: schemathesis generates valid and invalid requests from the document
/// and checks every answer: no 5xx, only documented status codes, bodies matching their
/// schemas. Bounded: a fixed number of examples per operation and a fixed seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let app = spawn_app_with(|s| {
        s.limits.per_ip_per_second = 0;
        s.limits.global_per_second = 0;
        s.admin_token = Some("schemathesis-token".into());
    })
    .await;
    let st = schemathesis();
    let output = tokio::process::Command::new(&st)
        .args(["run", &format!("{}/openapi.json", app.address)])
        .args(["--checks", "all", "--max-examples", "25", "--seed", "1", "--request-timeout", "10"])
        // Two checks contradict documented behaviour, everything else runs:
        // - positive_data_acceptance: generated Idempotency-Keys repeat with other bodies, and
        //   the answer to that must be 422 (issue #5, IETF Idempotency-Key draft);
        // - ensure_resource_availability: GET /orders/{id} is 404 until the consumer has
        //   processed the order (no consumer runs here), by design.
        .args(["--exclude-checks", "positive_data_acceptance,ensure_resource_availability"])
        .args(["-H", "Authorization: Bearer schemathesis-token"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); scripts/test.sh installs schemathesis", st.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found problems:\n{text}");
}
