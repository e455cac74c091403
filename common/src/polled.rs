//! A librdkafka producer whose delivery reports are served by a thread of ours.
//!
//! rust-rdkafka 0.39's `ThreadedProducer` (and so `FutureProducer`) polls every 100 ms, and
//! `BaseProducer::poll` calls librdkafka with the time left truncated to whole
//! milliseconds: in the last millisecond of every call it polls without blocking, reading
//! the clock in a loop (a system call on this kind of VM). That is 0.9% of a core per
//! producer, idle or busy (110 ticks of system time in 124 s, from `/proc/<pid>/task/*/stat`;
//! a quarter of four idle consumers' CPU samples under perf). Polling once a second makes
//! it a tenth of that. Delivery reports are served the moment they arrive either way: the
//! poll blocks in librdkafka until an event comes or the second is over.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientConfig;

/// How long each of the thread's `poll` calls lasts: how often it looks at its stop flag.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    /// Set on drop; the thread ends within POLL_EVERY and releases the client.
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// `name` names the polling thread (15 characters show in `top -H`).
    pub fn new(config: &ClientConfig, context: C, name: &str) -> Result<Self, KafkaError> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        // Not joined on drop (that could take POLL_EVERY): the thread holds its own
        // reference, so the client is destroyed when the thread ends.
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn({
                let (producer, stop) = (producer.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_EVERY);
                    }
                }
            })
            .map_err(|error| KafkaError::ClientCreation(format!("cannot start the delivery report thread {name}: {error}")))?;
        Ok(Self { producer, stop })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
