use std::time::Duration;

use orderflow_common::testing::eventually;

use crate::support::Stack;

/// librdkafka reports a partition's lag only once the group committed an offset there, so a
/// fresh stack exported no `consumer_lag` at all. Now every assigned partition has a series
/// from the moment it is assigned, with nothing consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_exported_for_every_assigned_partition_before_anything_is_consumed() {
    let stack = Stack::start(3).await;
    let consumer = stack.start_consumer(|_| {}).await;
    eventually(Duration::from_secs(30), "three partitions assigned", || async {
        let (_, status) = consumer.admin_get("/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        (status["partitions"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    for partition in 0..3 {
        let series = format!("consumer_lag{{partition=\"{partition}\"}}");
        assert_eq!(consumer.metric(&series).await, Some(0.0), "{series}");
    }
    assert_eq!(consumer.stats.totals().processed, 0);
    consumer.stop().await;
}
