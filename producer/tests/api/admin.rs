use serde_json::{json, Value};

use crate::helpers::{assert_json_error, spawn_app, spawn_app_with};

const TOKEN: &str = "correct-horse";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_restock_and_list_products() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let admin = |method: reqwest::Method, path: &str| {
        app.client.request(method, format!("{}{path}", app.address)).bearer_auth(TOKEN)
    };
    let created = admin(reqwest::Method::POST, "/admin/products")
        .json(&json!({"product_id": "NEW001", "product_name": "Desk Lamp", "quantity": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!((body["available_quantity"].as_i64(), body["total_quantity"].as_i64()), (Some(40), Some(40)));

    let again = admin(reqwest::Method::POST, "/admin/products")
        .json(&json!({"product_id": "NEW001", "product_name": "Desk Lamp", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_json_error(again, 409).await;
    let bad = admin(reqwest::Method::POST, "/admin/products")
        .json(&json!({"product_id": "", "product_name": "x", "quantity": -1}))
        .send()
        .await
        .unwrap();
    assert_json_error(bad, 400).await;

    let restocked: Value = admin(reqwest::Method::POST, "/admin/products/NEW001/restock")
        .json(&json!({"quantity": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restocked["inventory"]["available_quantity"], 50);
    assert_eq!(restocked["inventory"]["total_quantity"], 50);
    let unknown = admin(reqwest::Method::POST, "/admin/products/NOPE/restock").json(&json!({"quantity": 1})).send().await.unwrap();
    assert_json_error(unknown, 404).await;
    let zero = admin(reqwest::Method::POST, "/admin/products/NEW001/restock").json(&json!({"quantity": 0})).send().await.unwrap();
    assert_json_error(zero, 400).await;

    // 11 products (10 seeded + NEW001) in pages of 4: 4 + 4 + 3, in product_id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = admin(reqwest::Method::GET, &format!("/admin/inventory?limit=4&after={after}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(page["items"].as_array().unwrap().iter().map(|i| i["product_id"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 11);
    assert!(seen.contains(&"NEW001".to_owned()));
    assert_json_error(admin(reqwest::Method::GET, "/admin/inventory?limit=0").send().await.unwrap(), 400).await;
    assert_json_error(admin(reqwest::Method::GET, "/admin/inventory?limit=abc").send().await.unwrap(), 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_right_token_and_are_off_without_one() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let url = format!("{}/admin/inventory", app.address);
    let missing = app.client.get(&url).send().await.unwrap();
    assert!(missing.headers().contains_key("www-authenticate"));
    assert_json_error(missing, 401).await;
    assert_json_error(app.client.get(&url).bearer_auth("wrong").send().await.unwrap(), 401).await;
    assert_eq!(app.client.get(&url).bearer_auth(TOKEN).send().await.unwrap().status().as_u16(), 200);

    let open = spawn_app().await;
    let disabled = open.client.get(format!("{}/admin/inventory", open.address)).bearer_auth(TOKEN).send().await.unwrap();
    assert_json_error(disabled, 403).await;
}
