use std::ffi::CString;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::bindings::rd_kafka_resp_err_t;
use rdkafka::consumer::Consumer;

use orderflow_common::errors::Chain;
use orderflow_consumer::Application;

use crate::support::{message, placed_order, Stack};

/// librdkafka's own test fault (`rd_kafka_test_fatal_error`) leaves the consumer client
/// unusable, as fencing would. The batch loop ends, and `run_until_stopped` returns an error
/// naming it, where it used to keep answering /health with nothing consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_kafka_error_ends_the_consumer_with_an_error_naming_the_batch_loop() {
    let stack = Stack::start(2).await;
    let app = Application::build(stack.consumer_settings()).await.expect("consumer starts");
    let kafka = app.kafka_consumer();
    let task = tokio::spawn(app.run_until_stopped());
    let order = placed_order("C1", "PROD001", 1);
    stack.publish_raw(&stack.kafka_producer(), &[message(&order)]).await;
    stack.wait_for_orders(1, Duration::from_secs(30)).await;

    let reason = CString::new("injected by the test").unwrap();
    // SAFETY: the client is alive (held by `kafka`) and librdkafka copies the reason.
    let raised = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            kafka.client().native_ptr(),
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID,
            reason.as_ptr(),
        )
    };
    assert_eq!(raised, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);

    let outcome = tokio::time::timeout(Duration::from_secs(30), task).await.expect("the consumer stops by itself").unwrap();
    let error = outcome.expect_err("a batch loop that ends by itself is an error");
    let text = Chain(&error).to_string();
    assert!(text.starts_with("batch loop failed: fatal Kafka consumer error"), "{text}");
}

/// A column type the binary does not expect (schema drift) makes the writer task panic on
/// the first batch. The real binary logs the cause and exits non-zero, so it gets restarted
/// and noticed, instead of living on with a dead batch loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_binary_exits_non_zero_when_its_batch_loop_dies() {
    let stack = Stack::start(2).await;
    stack.execute("ALTER TABLE inventory ALTER COLUMN available_quantity TYPE integer").await;
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_consumer"))
        .envs(stack.consumer_env())
        .env("CONSUMER_ADMIN_ADDR", "127.0.0.1:0")
        .env("KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("RUST_LOG", "info,librdkafka=warn")
        .env("NO_COLOR", "1")
        // Logs go to stdout, the panic and main's error to stderr; both are small at this level.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("consumer binary starts");
    let order = placed_order("C1", "PROD001", 1);
    stack.publish_raw(&stack.kafka_producer(), &[message(&order)]).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = consumer.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            consumer.kill().unwrap();
            consumer.wait().unwrap();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut output = String::new();
    std::io::Read::read_to_string(&mut consumer.stdout.take().unwrap(), &mut output).unwrap();
    std::io::Read::read_to_string(&mut consumer.stderr.take().unwrap(), &mut output).unwrap();
    let status = status.unwrap_or_else(|| panic!("the consumer kept running with a dead batch loop:\n{output}"));
    assert!(!status.success(), "exit status {status:?}\n{output}");
    assert!(output.contains("a consumer task ended unexpectedly"), "the cause is logged:\n{output}");
    assert!(output.contains("batch loop failed: the batch writer task failed"), "{output}");
    assert!(output.contains("panicked"), "{output}");
    assert_eq!(stack.order_count().await, 0);
}
